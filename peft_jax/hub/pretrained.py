"""``load_pretrained``: one entry point for every kind of base model the hub reads."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from peft_jax.hub import checkpoint, gguf


def load_pretrained(
  path: str | os.PathLike, dtype: Any = jnp.float32, shardings: Any = None, **config_overrides: Any
):
  """Loads an HF checkpoint directory (or ``'bundled:NAME'``).

  Args:
    path: directory with config.json and model.safetensors (or a sharded index); or a GGUF
      source: a ``.gguf`` file, a directory holding one, or a named base such as
      ``'smollm2-135m-instruct'`` (see ``peft_jax.hub.gguf``).
    dtype: param dtype (compute dtype is ``config.dtype``, overridable via config_overrides).
    shardings: optional tree of shardings matching the params.
    **config_overrides: ModelConfig fields to replace (``dtype='bfloat16'``, ``remat=True``).
  Returns:
    ``(model, params, tokenizer)``; tokenizer is ``None`` when the dir has no tokenizer files
    (a GGUF: no tokenizer metadata, or a kind other than byte-level BPE).
  """
  if gguf.find_gguf_file(path) is not None:
    return gguf.load_gguf(path, dtype=dtype, shardings=shardings, **config_overrides)
  return checkpoint.load_hf_directory(path, dtype=dtype, shardings=shardings, **config_overrides)
