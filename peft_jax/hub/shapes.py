"""Model shapes without weights: the published ``config.json`` of a few common models, and
``model_config(name_or_path)`` reading a name, a ``config.json`` file or a checkpoint directory.

The planner (``peft_jax.train.plan``) needs only a model's shapes; these let it size a run
before any checkpoint is downloaded. Each entry copies the fields of the model's published Hugging
Face ``config.json`` that the decoder reads (initialiser ranges and dtypes left out).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from peft_jax.hub.checkpoint import config_from_hf_dict, load_config, read_json
from peft_jax.models.config import ModelConfig

# The Hugging Face config.json of each named model (the repository it is copied from is the key's
# comment); the parameter counts they give are checked against transformers in tests/hub.
NAMED_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
  # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters
  'llama2-7b': dict(
    model_type='llama',
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    hidden_act='silu',
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
  ),
  # meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters
  'llama3-8b': dict(
    model_type='llama',
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    hidden_act='silu',
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
  ),
  # Qwen/Qwen2.5-7B: 7,615,616,512 parameters
  'qwen2.5-7b': dict(
    model_type='qwen2',
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    hidden_act='silu',
    max_position_embeddings=131072,
    max_window_layers=28,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    sliding_window=131072,
    use_sliding_window=False,
    tie_word_embeddings=False,
    bos_token_id=151643,
    eos_token_id=151643,
  ),
  # google/gemma-2-9b: 9,241,705,984 parameters (alternating sliding / global layers)
  'gemma2-9b': dict(
    model_type='gemma2',
    vocab_size=256000,
    hidden_size=3584,
    intermediate_size=14336,
    num_hidden_layers=42,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    hidden_act='gelu_pytorch_tanh',
    hidden_activation='gelu_pytorch_tanh',
    max_position_embeddings=8192,
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    sliding_window=4096,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
  ),
}


def model_config(name_or_path: str | os.PathLike, **overrides: Any) -> ModelConfig:
  """The ``ModelConfig`` of a named model (``NAMED_MODEL_CONFIGS``), an HF ``config.json`` file
  or a checkpoint directory (or ``bundled:NAME``) holding one; no weights are read.

  Raises:
    FileNotFoundError: neither a known name nor an existing file/directory (listing the names).
  """
  name = os.fspath(name_or_path)
  if name in NAMED_MODEL_CONFIGS:
    return config_from_hf_dict(dict(NAMED_MODEL_CONFIGS[name]), **overrides)
  path = pathlib.Path(name)
  if path.is_file():
    return config_from_hf_dict(read_json(path, 'an HF model config object'), **overrides)
  if path.is_dir() or name.startswith('bundled:'):
    return load_config(name, **overrides)
  raise FileNotFoundError(
    f'model {name!r} is neither a named model ({", ".join(sorted(NAMED_MODEL_CONFIGS))}) nor '
    'an HF config.json file or checkpoint directory'
  )
