"""Decoder model family (Llama 2/3, Mistral, Qwen2/2.5, Gemma 2), generation, logical axes."""

from peft_jax.models.axes import param_logical_axes
from peft_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from peft_jax.models.decoder import Decoder, init_cache, init_params
from peft_jax.models.generate import GenerationOutput, generate, generate_text, sample_logits

__all__ = [
    'SUPPORTED_MODEL_TYPES', 'ModelConfig', 'Decoder', 'init_cache', 'init_params',
    'param_logical_axes', 'GenerationOutput', 'generate', 'generate_text', 'sample_logits',
]
