"""``load_pretrained``: one entry point for every kind of base model the hub reads."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from peft_jax.hub import checkpoint, encoder_checkpoint, gguf


def load_pretrained(
  path: str | os.PathLike, dtype: Any = jnp.float32, shardings: Any = None, **config_overrides: Any
):
  """Loads an HF checkpoint directory (or ``'bundled:NAME'``), decoder or encoder.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index); or a GGUF
      source: a ``.gguf`` file, a directory holding one, or a named base such as
      ``'smollm2-135m-instruct'`` (see ``peft_jax.hub.gguf``); or a BERT / RoBERTa directory
      or named encoder such as ``'all-minilm-l6-v2'`` (``peft_jax.hub.encoder_checkpoint``:
      the model is then a ``peft_jax.models.Encoder``).
    dtype: param dtype (compute dtype is ``config.dtype``, overridable via config_overrides).
    shardings: optional tree of shardings matching the params.
    **config_overrides: ModelConfig (or EncoderConfig) fields to replace (``dtype='bfloat16'``,
      ``remat=True``; for an encoder e.g. ``num_labels=3, head_type='mean'`` adds a fresh head).
  Returns:
    ``(model, params, tokenizer)``; tokenizer is ``None`` when the dir has no tokenizer files
    (a GGUF: no tokenizer metadata, or a kind other than byte-level BPE).
  """
  if encoder_checkpoint.is_encoder_directory(path):
    return encoder_checkpoint.load_encoder_directory(
      path, dtype=dtype, shardings=shardings, **config_overrides
    )
  if gguf.find_gguf_file(path) is not None:
    return gguf.load_gguf(path, dtype=dtype, shardings=shardings, **config_overrides)
  return checkpoint.load_hf_directory(path, dtype=dtype, shardings=shardings, **config_overrides)
