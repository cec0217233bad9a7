"""Public adapter API (the lead re-exports these from ``peft_jax`` / ``peft_jax.adapters``)."""

import dataclasses

from peft_jax.adapters.dora import DoRA
from peft_jax.adapters.disel import DISeL
from peft_jax.adapters.full import Full
from peft_jax.adapters.inject import adapted_nodes
from peft_jax.adapters.inject import adapter_logical_axes
from peft_jax.adapters.inject import combine
from peft_jax.adapters.inject import count_params
from peft_jax.adapters.inject import default_module_name
from peft_jax.adapters.inject import delta
from peft_jax.adapters.inject import inject
from peft_jax.adapters.inject import linear_modules
from peft_jax.adapters.inject import merge
from peft_jax.adapters.inject import partition
from peft_jax.adapters.inject import path
from peft_jax.adapters.inject import select_modules
from peft_jax.adapters.lora import LoRA
from peft_jax.adapters.miss import MiSS
from peft_jax.adapters.oft import OFT
from peft_jax.adapters.pissa import PiSSA
from peft_jax.adapters.vera import VeRA

# Methods by config name (``config.adapter.method = 'lora'``).
METHODS = {"lora": LoRA, "dora": DoRA, "pissa": PiSSA, "vera": VeRA, "oft": OFT, "miss": MiSS,
           "disel": DISeL, "full": Full}


def make_method(name: str, **hyper_parameters):
  """``make_method('lora', rank=8, alpha=16)`` -> ``LoRA(rank=8, alpha=16)``.

  Raises:
    ValueError: unknown method name or hyper-parameter (listing the valid ones).
  """
  if name not in METHODS:
    raise ValueError(f"unknown adapter method {name!r}; valid: {sorted(METHODS)}")
  cls = METHODS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
  unknown = sorted(set(hyper_parameters) - fields)
  if unknown:
    raise ValueError(f"{name}: unknown hyper-parameters {unknown}; valid: {sorted(fields)}")
  return cls(**hyper_parameters)


__all__ = [
    "METHODS", "make_method", "DISeL", "DoRA", "Full", "LoRA", "MiSS", "OFT", "PiSSA", "VeRA",
    "adapted_nodes", "adapter_logical_axes", "combine", "count_params", "default_module_name",
    "delta", "inject", "linear_modules", "merge", "partition", "path", "select_modules",
]
