"""Adapters: one file per method, plus the shared node type, matmul dispatch and injection."""

from peft_jax.adapters.api import *  # noqa: F401,F403  (the public adapter API)
from peft_jax.adapters.api import __all__ as _api_all
from peft_jax.adapters.core import Adapted, AdapterMethod, dense_matmul, is_adapted, matmul

__all__ = ['Adapted', 'AdapterMethod', 'dense_matmul', 'is_adapted', 'matmul', *_api_all]
