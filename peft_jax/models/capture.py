"""Activation capture as compiled programs: the model's forward returning only the captures.

``capture_activations(config, params, tokens, mask, names)`` runs one jitted forward (compiled
once per config, names and shape) and returns ``{capture name: [B, T, d]}`` as float32 NumPy
arrays (names as in ``Decoder.__call__``'s ``capture``: ``'layers_{i}/residual'``,
``'<module path>/in'`` and ``'/out'``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models.config import ModelConfig
from peft_jax.models.decoder import Decoder, unrolled


@functools.lru_cache(maxsize=None)
def capture_program(config: ModelConfig, names: tuple[str, ...]):
  """Jitted ``(params, tokens [B, T], mask [B, T]) -> {name: [B, T, d]}``."""
  model = Decoder(config)

  @jax.jit
  def forward(params, tokens, mask):
    _, captures = model.apply({'params': params}, tokens, attention_mask=mask, capture=names)
    return captures

  return forward


def capture_activations(
  config: ModelConfig, params: Any, tokens: Any, mask: Any, names: Sequence[str]
) -> dict[str, np.ndarray]:
  """The captured activations of one batch, as float32 host arrays (a model that scans its
  layers is run unrolled here: captures are per layer)."""
  config, params = unrolled(config, params)
  captures = capture_program(config, tuple(names))(params, jnp.asarray(tokens), jnp.asarray(mask))
  return {k: np.asarray(v, np.float32) for k, v in captures.items()}


def masked_tokens(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """``x [B, T, d]`` -> ``[n_real_tokens, d]``: the rows where ``mask [B, T]`` is 1."""
  return x.reshape(-1, x.shape[-1])[mask.reshape(-1).astype(bool)]
