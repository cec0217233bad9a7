"""Hugging Face I/O: config + safetensors load/save, GGUF import, tokenizers, the PEFT adapter
format."""

from peft_jax.hub.checkpoint import (
  config_from_hf_dict,
  config_to_hf_dict,
  load_config,
  load_hf_directory,
  load_params,
  resolve_path,
  save_pretrained,
)
from peft_jax.hub.encoder_checkpoint import (
  load_encoder_directory,
  load_encoder_tokenizer,
  save_encoder_pretrained,
)
from peft_jax.hub.gguf import load_gguf
from peft_jax.hub.peft_format import load_adapter, save_adapter
from peft_jax.hub.pretrained import load_pretrained
from peft_jax.hub.tokenizer import encode_prompts, encode_texts, load_tokenizer

__all__ = [
  'config_from_hf_dict',
  'config_to_hf_dict',
  'load_config',
  'load_params',
  'load_pretrained',
  'load_hf_directory',
  'resolve_path',
  'save_pretrained',
  'encode_prompts',
  'encode_texts',
  'load_tokenizer',
  'load_adapter',
  'save_adapter',
  'load_gguf',
  'load_encoder_directory',
  'load_encoder_tokenizer',
  'save_encoder_pretrained',
]
