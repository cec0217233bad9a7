"""Public adapter API (the lead re-exports these from ``peft_jax`` / ``peft_jax.adapters``)."""

import dataclasses

from peft_jax.adapters.disel import DISeL
from peft_jax.adapters.dora import DoRA
from peft_jax.adapters.full import Full
from peft_jax.adapters.inject import (
  adapted_nodes,
  adapter_logical_axes,
  combine,
  count_params,
  default_module_name,
  delta,
  encoder_module_name,
  inject,
  linear_modules,
  merge,
  merge_exact,
  methods_of,
  param_groups,
  partition,
  path,
  saved_module_paths,
  scale_updates,
  select_modules,
)
from peft_jax.adapters.lora import LoRA
from peft_jax.adapters.miss import MiSS
from peft_jax.adapters.modules_to_save import ModulesToSave
from peft_jax.adapters.oft import OFT
from peft_jax.adapters.pissa import PiSSA
from peft_jax.adapters.vera import VeRA

# The one list of methods, by config name (``config.adapter.method = 'lora'``), in the order
# reports show them. A new method is a file in adapters/ and one line here (or a
# ``register_method`` call from user code); the trainer, the arena, the report and PEFT export
# take it from the registry and the method object's protocol (core.AdapterMethod).
METHODS = {
  'full': Full,
  'lora': LoRA,
  'dora': DoRA,
  'pissa': PiSSA,
  'vera': VeRA,
  'oft': OFT,
  'miss': MiSS,
  'disel': DISeL,
}


def method_names() -> tuple[str, ...]:
  """Registered method names, in registry order."""
  return tuple(METHODS)


def register_method(name: str, cls: type, *, replace: bool = False) -> type:
  """Adds a method class to the registry under ``name`` (``make_method(name, ...)`` builds it).

  Raises:
    ValueError: ``name`` taken (unless ``replace``) or ``cls`` not a dataclass with a ``name``
      field defaulting to ``name``.
  """
  if name in METHODS and not replace:
    raise ValueError(f'adapter method {name!r} is already registered ({METHODS[name].__name__})')
  if not dataclasses.is_dataclass(cls):
    raise ValueError(f'register_method({name!r}): {cls!r} must be a frozen dataclass')
  default = {f.name: f.default for f in dataclasses.fields(cls)}.get('name')
  if default != name:
    raise ValueError(f'register_method({name!r}): {cls.__name__}.name defaults to {default!r}')
  METHODS[name] = cls
  return cls


def make_method(name: str, **hyper_parameters):
  """``make_method('lora', rank=8, alpha=16)`` -> ``LoRA(rank=8, alpha=16)``.

  Raises:
    ValueError: unknown method name or hyper-parameter (listing the valid ones).
  """
  if name not in METHODS:
    raise ValueError(f'unknown adapter method {name!r}; valid: {sorted(METHODS)}')
  cls = METHODS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {'name'}
  unknown = sorted(set(hyper_parameters) - fields)
  if unknown:
    raise ValueError(f'{name}: unknown hyper-parameters {unknown}; valid: {sorted(fields)}')
  return cls(**hyper_parameters)


__all__ = [
  'METHODS',
  'make_method',
  'method_names',
  'register_method',
  'param_groups',
  'merge_exact',
  'methods_of',
  'scale_updates',
  'DISeL',
  'DoRA',
  'Full',
  'LoRA',
  'MiSS',
  'ModulesToSave',
  'OFT',
  'PiSSA',
  'VeRA',
  'adapted_nodes',
  'adapter_logical_axes',
  'combine',
  'count_params',
  'default_module_name',
  'delta',
  'encoder_module_name',
  'inject',
  'linear_modules',
  'merge',
  'partition',
  'path',
  'saved_module_paths',
  'select_modules',
]
