"""Decoder model family (Llama 2/3, Mistral, Qwen2/2.5, Gemma 2), the BERT-family encoder
(BERT, RoBERTa, MiniLM), KV-cache decoding, activation capture programs, logical axes. Text in and out (tokenisation) lives in ``peft_jax.evals.generation``."""

from peft_jax.models.activation_sharding import activation_sharding, constrain
from peft_jax.models.axes import param_logical_axes
from peft_jax.models.capture import capture_activations, capture_program, masked_tokens
from peft_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from peft_jax.models.decoder import Decoder, init_cache, init_params, scanned, unrolled
from peft_jax.models.encoder import (
  Encoder,
  EncoderConfig,
  init_encoder_params,
  l2_normalize,
  mean_pool,
  sentence_embeddings,
)
from peft_jax.models.generate import GenerationOutput, decode, generate, sample_logits

__all__ = [
  'activation_sharding',
  'constrain',
  'SUPPORTED_MODEL_TYPES',
  'ModelConfig',
  'Decoder',
  'Encoder',
  'EncoderConfig',
  'init_encoder_params',
  'l2_normalize',
  'mean_pool',
  'sentence_embeddings',
  'init_cache',
  'init_params',
  'scanned',
  'unrolled',
  'param_logical_axes',
  'GenerationOutput',
  'decode',
  'generate',
  'sample_logits',
  'capture_activations',
  'capture_program',
  'masked_tokens',
]
