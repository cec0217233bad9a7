"""Compiled metric programs the studies reuse (one compilation per shape, across modules, methods
and runs): weight spectra and CSD of one kernel pair, activation geometry of every layer at once.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.geometry import activations, spectral

# By name: the package re-exports a function called `csd` over the module's name.
from peft_jax.geometry.csd import csd_general_vs_target


@functools.lru_cache(maxsize=None)
def weight_programs():
  """``(weight_metrics, csd_metrics)``, both jitted.

  ``weight_metrics(w0, w1) -> (SpectralSummary, retention [k], energy [k])``;
  ``csd_metrics(h_general, h_target, w0, w1, general_mask, target_mask)`` -> CSD of general vs
  target inputs (``csd.csd_general_vs_target``).
  """

  @jax.jit
  def weight_metrics(w0, w1):
    return (
      spectral.spectral_summary(w0, w1),
      spectral.retention_profile(w0, w1),
      spectral.update_energy_profile(w0, w1),
    )

  @jax.jit
  def csd_metrics(h_general, h_target, w0, w1, general_mask, target_mask):
    return csd_general_vs_target(
      h_general, h_target, w0, w1, general_mask=general_mask, target_mask=target_mask
    )

  return weight_metrics, csd_metrics


@functools.lru_cache(maxsize=None)
def activation_program(gram_max_tokens: int):
  """``(x0 [L, B, T, d], x1, mask [B, T], key) -> {metric: [L]}``, vmapped over layers:
  linear CKA, Procrustes residual, raw residual and Gram distortion of base vs fine-tuned."""

  def one_layer(x0, x1, mask, key):
    return {
      'cka': activations.linear_cka(x0, x1, mask=mask),
      'procrustes': activations.procrustes_residual(x0, x1, mask=mask),
      'raw': activations.raw_residual(x0, x1, mask=mask),
      'gram': activations.gram_distortion(x0, x1, mask=mask, key=key, max_tokens=gram_max_tokens),
    }

  return jax.jit(jax.vmap(one_layer, in_axes=(0, 0, None, None)))


def flatten_named(value: Any, prefix: str = '') -> dict[str, float]:
  """Scalars of a (nested) NamedTuple or mapping as ``{'a/b': float}`` (arrays skipped)."""
  out = {}
  items = value._asdict().items() if hasattr(value, '_asdict') else dict(value).items()
  for k, v in items:
    name = f'{prefix}{k}'
    if hasattr(v, '_asdict') or isinstance(v, Mapping):
      out.update(flatten_named(v, name + '/'))
    elif np.ndim(v) == 0:
      out[name] = float(v)
  return out


def same_stack(a: Any, b: Any, tol: float = 1e-6) -> bool:
  """Whether two stacked params trees hold the same arrays (relative max-abs ``tol``)."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    float(jnp.max(jnp.abs(x - y))) <= tol * (1.0 + float(jnp.max(jnp.abs(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
