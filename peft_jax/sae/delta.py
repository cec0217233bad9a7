"""Delta activations: what an adapter adds to the activations on the same tokens.

docs/METRICS.md ("Delta activations") gives two quantities, both provided here:

* the **residual delta** ``Δh = h_adapted - h_base`` (:func:`collect_delta`), the difference of
  the residual streams of the adapted and the base model on identical tokens. Beyond the first
  adapted layer it also carries the downstream non-linear propagation of earlier adapters;
* the **module delta** ``s B A x`` (:func:`module_delta`), the adapter's own contribution at the
  output of one adapted linear module, ``out_adapted - in_adapted W_0``.

Captures are the model's flat dicts (docs/CONVENTIONS.md): ``{'layers_{i}/residual': [B, T, d],
'layers_{i}/self_attn/q_proj/in': [B, T, d_in], ...}`` with ``attention_mask: [B, T]`` (1 = real
token). Real tokens are gathered into rows ``[n, d]`` in row-major (batch, then position) order,
which gives each row a stable token index (``b * T + t`` over the unmasked positions).

The gather to real tokens has a data-dependent shape, so it runs eagerly; the arithmetic before
it (:func:`delta_activations`) and :func:`normalize_activations` are jit-able.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Captures = Mapping[str, Array]

NORMALIZATIONS = ('none', 'center', 'unit_mean_norm', 'center_unit_mean_norm')
_EPS = 1e-12


class NormStats(NamedTuple):
  """How :func:`normalize_activations` mapped ``x`` to ``(x - mean) * scale``."""

  mean: Array  # shape=[d]; zeros unless centering
  scale: Array  # shape=(); 1 unless rescaling


def normalize_activations(x: Array, method: str = 'none') -> tuple[Array, NormStats]:
  """Normalises token activations ``x: [n, d]`` before SAE training.

  Methods:

  * ``'none'``: unchanged.
  * ``'center'``: ``x - μ`` with ``μ`` the token mean.
  * ``'unit_mean_norm'``: ``c x`` with ``c = √d / mean_t ||x_t||₂`` so that the mean token norm is
    ``√d`` (Gao et al. 2024; SAE hyper-parameters then transfer across layers, ranks and models).
  * ``'center_unit_mean_norm'``: both, centering first.

  Returns:
    ``(x_normalized [n, d], NormStats(mean [d], scale []))`` with
    ``x_normalized = (x - mean) * scale``.
  """
  if method not in NORMALIZATIONS:
    raise ValueError(f'normalize={method!r} is not supported; valid: {NORMALIZATIONS}.')
  if x.ndim != 2:
    raise ValueError(f'x must be [n, d] token rows, got shape {x.shape}.')
  dtype = jnp.result_type(x.dtype, jnp.float32)
  x = x.astype(dtype)
  d = x.shape[-1]
  mean = jnp.mean(x, axis=0) if 'center' in method else jnp.zeros((d,), dtype)
  centered = x - mean
  if 'unit_mean_norm' in method:
    mean_norm = jnp.mean(jnp.linalg.norm(centered, axis=-1))
    scale = jnp.sqrt(jnp.asarray(d, dtype)) / jnp.maximum(mean_norm, _EPS)
  else:
    scale = jnp.ones((), dtype)
  return centered * scale, NormStats(mean=mean, scale=scale)


def delta_activations(h_base: Array, h_adapted: Array) -> Array:
  """``Δh = h_adapted - h_base`` in float32 (or wider); both ``[..., d]`` on the same tokens."""
  if h_base.shape != h_adapted.shape:
    raise ValueError(
      f'base and adapted activations must be aligned token by token with equal '
      f'shapes, got base {h_base.shape} and adapted {h_adapted.shape}.'
    )
  dtype = jnp.result_type(h_base.dtype, h_adapted.dtype, jnp.float32)
  return h_adapted.astype(dtype) - h_base.astype(dtype)


def _lookup(captures: Union[Captures, Array], key_name: Optional[str], which: str) -> Array:
  if isinstance(captures, Mapping):
    if key_name is None:
      raise ValueError(
        f'{which} is a capture dict, so key_name is required; keys are {sorted(captures)}.'
      )
    if key_name not in captures:
      raise KeyError(
        f'key_name {key_name!r} is not in the {which} captures; keys are {sorted(captures)}.'
      )
    return jnp.asarray(captures[key_name])
  return jnp.asarray(captures)


def select_tokens(x: Array, mask: Optional[Array] = None) -> Array:
  """Rows ``[n, d]`` of the real tokens of ``x: [..., d]``; ``mask`` has ``x``'s token shape.

  Without a mask every token is kept. Token order is row-major over the leading dims.
  """
  if x.ndim < 2:
    raise ValueError(f'activations must be [..., d] with token dims first, got shape {x.shape}.')
  if mask is None:
    return x.reshape(-1, x.shape[-1])
  mask = np.asarray(mask)
  if mask.shape != x.shape[:-1]:
    raise ValueError(
      f'mask must have the token shape {x.shape[:-1]} of the activations, got {mask.shape}.'
    )
  keep = np.flatnonzero(mask.reshape(-1) != 0)
  if keep.size == 0:
    raise ValueError('mask selects no tokens.')
  return jnp.take(x.reshape(-1, x.shape[-1]), jnp.asarray(keep), axis=0)


def collect_activations(
  captures: Union[Captures, Array],
  mask: Optional[Array] = None,
  key_name: Optional[str] = None,
  *,
  normalize: str = 'none',
) -> Array:
  """Real-token activations ``[n, d]`` of one capture (e.g. the base model's residual stream).

  Args:
    captures: a capture dict (then ``key_name`` picks the entry) or an array ``[..., d]``.
    mask: ``[...]`` token mask (1 = real token), or None for all tokens.
    key_name: e.g. ``'layers_3/residual'``.
    normalize: see :func:`normalize_activations`.
  """
  x = select_tokens(_lookup(captures, key_name, 'captures'), mask)
  return normalize_activations(x.astype(jnp.result_type(x.dtype, jnp.float32)), normalize)[0]


def collect_delta(
  base_captures: Union[Captures, Array],
  adapted_captures: Union[Captures, Array],
  mask: Optional[Array] = None,
  key_name: Optional[str] = None,
  *,
  normalize: str = 'none',
) -> Array:
  """Residual delta ``Δh = h_adapted - h_base`` on the real tokens, as rows ``[n, d]``.

  Args:
    base_captures: the base model's capture dict, or its activations ``[..., d]``.
    adapted_captures: the adapted model's, same structure and token layout.
    mask: ``[B, T]`` attention mask (1 = real token; any token shape of the activations works), or
      None for all tokens.
    key_name: capture key when dicts are given, e.g. ``'layers_3/residual'``.
    normalize: see :func:`normalize_activations` (applied to ``Δh`` after masking).

  Returns:
    ``Δh: [n, d]`` with ``n`` the number of real tokens.
  """
  h_base = _lookup(base_captures, key_name, 'base')
  h_adapted = _lookup(adapted_captures, key_name, 'adapted')
  delta = delta_activations(h_base, h_adapted)
  return normalize_activations(select_tokens(delta, mask), normalize)[0]


def module_delta(
  captures: Captures,
  base_kernel: Array,
  module_path: str,
  mask: Optional[Array] = None,
  *,
  normalize: str = 'none',
) -> Array:
  """Module delta ``s B A x = y_adapted - x W_0`` of one adapted linear module, rows ``[n, d_out]``.

  ``x`` and ``y_adapted`` are the module's input and output captured in the adapted model
  (``'{module_path}/in'`` and ``'{module_path}/out'``), ``W_0: [d_in, d_out]`` its frozen base
  kernel. For a LoRA module this is exactly the adapter's contribution (bias cancels).

  Args:
    captures: the adapted model's capture dict with ``'{module_path}/in'`` and ``'.../out'``.
    base_kernel: ``W_0: [d_in, d_out]`` (Flax layout).
    module_path: e.g. ``'layers_2/self_attn/q_proj'``.
    mask: token mask, or None.
    normalize: see :func:`normalize_activations`.
  """
  x = _lookup(captures, f'{module_path}/in', 'adapted')
  y = _lookup(captures, f'{module_path}/out', 'adapted')
  base_kernel = jnp.asarray(base_kernel)
  if base_kernel.shape != (x.shape[-1], y.shape[-1]):
    raise ValueError(
      f'base_kernel must be [d_in, d_out] = [{x.shape[-1]}, {y.shape[-1]}] for '
      f'{module_path!r}, got {base_kernel.shape}.'
    )
  dtype = jnp.result_type(x.dtype, jnp.float32)
  x_rows = select_tokens(x, mask).astype(dtype)
  y_rows = select_tokens(y, mask).astype(dtype)
  delta = y_rows - x_rows @ base_kernel.astype(dtype)
  return normalize_activations(delta, normalize)[0]
