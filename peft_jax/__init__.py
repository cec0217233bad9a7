"""peft_jax: parameter-efficient fine-tuning in JAX/Flax, and what fine-tuning costs a model.

The public face (README.md, "Usage"; docs/ARCHITECTURE.md)::

  import jax, peft_jax as pj
  model, params, tokenizer = pj.hub.load_pretrained("path/to/hf_dir")    # or "bundled:tiny"
  tree = pj.inject(params, pj.LoRA(rank=8, alpha=16), ["q_proj", "v_proj"], jax.random.key(0))
  trainable, frozen = pj.partition(tree)
  logits = model.apply({"params": pj.combine(trainable, frozen)}, tokens)
  pj.merge(tree); pj.path(tree, 0.5); pj.delta(tree)
  pj.hub.save_adapter(tree, "out/"); pj.hub.load_adapter(params, "peft_dir/")
  pj.geometry.linear_cka(x0, x1); pj.geometry.retention_profile(w0, w1)

Subpackages import lazily (``pj.geometry``, ``pj.evals``, ...), so ``import peft_jax`` stays cheap.
"""

import importlib

from peft_jax.adapters import Adapted, matmul
from peft_jax.adapters.api import (
  OFT,
  DISeL,
  DoRA,
  Full,
  LoRA,
  MiSS,
  PiSSA,
  VeRA,
  combine,
  count_params,
  delta,
  inject,
  make_method,
  merge,
  partition,
  path,
)

__version__ = '0.1.0'

_SUBPACKAGES = (
  'adapters',
  'arena',
  'data',
  'evals',
  'geometry',
  'hub',
  'models',
  'parallel',
  'report',
  'sae',
  'train',
)

__all__ = [
  'Adapted',
  'DISeL',
  'DoRA',
  'Full',
  'LoRA',
  'MiSS',
  'OFT',
  'PiSSA',
  'VeRA',
  'combine',
  'count_params',
  'delta',
  'inject',
  'make_method',
  'matmul',
  'merge',
  'partition',
  'path',
  *_SUBPACKAGES,
]


def __getattr__(name):
  if name in _SUBPACKAGES:
    return importlib.import_module(f'peft_jax.{name}')
  raise AttributeError(f"module 'peft_jax' has no attribute {name!r}")
