"""Adapters: one file per method, plus the shared node type, matmul dispatch and injection."""
from peft_jax.adapters.core import Adapted, AdapterMethod, dense_matmul, is_adapted, matmul
