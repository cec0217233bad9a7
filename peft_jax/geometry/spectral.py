"""Weight-space spectral analysis of a fine-tuned weight against its pretrained weight.

PEFT-Arena's "dual-view spectral analysis" (docs/METRICS.md, "Weight spectra"). Everything is stated in the
papers' layout ``W [d_out, d_in]`` with ``y = W x``; our kernels are Flax ``[d_in, d_out]``
(``y = x @ kernel``). Every function here takes ``layout='flax'`` (default: the argument is a
kernel ``[d_in, d_out]`` and is transposed internally) or ``layout='torch'`` (the argument
already is ``W [d_out, d_in]``). Results do not depend on the layout once it is stated correctly.

With the thin SVD of the pretrained weight ``W0 = U diag(σ) Vᵀ`` (float32 or wider),
``k = min(d_out, d_in)``, ``u_i = U[:, i]``, ``v_i = V[:, i]`` and ``ΔW = W1 - W0``:

* retention profile ``ΔP(i) = |u_iᵀ ΔW v_i|`` (invariant to the joint sign flip of ``(u_i, v_i)``);
* update-energy profile ``E(i) = ||ΔW v_i||₂`` (input-side singular vectors, not squared);
* stable ("effective") rank ``||ΔW||_F² / ||ΔW||₂²`` (0 when ΔW = 0);
* spectral smoothness ``mean_i |p_i - MA_i|`` with a width-5 moving average over reflect padding.

All functions are pure and jit-able; batch over layers of equal shape with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

_LAYOUTS = ('flax', 'torch')


def as_torch_layout(kernel: Array, layout: str) -> Array:
  """``W [d_out, d_in]`` from a kernel in ``layout`` ('flax' ``[d_in, d_out]`` or 'torch')."""
  if layout not in _LAYOUTS:
    raise ValueError(
      f'layout={layout!r} is not valid; valid layouts are {_LAYOUTS} '
      "('flax': kernel [d_in, d_out]; 'torch': W [d_out, d_in])."
    )
  if kernel.ndim != 2:
    raise ValueError(
      f'expected a 2-D weight, got shape {kernel.shape}; batch over layers with jax.vmap.'
    )
  return kernel.T if layout == 'flax' else kernel


def compute_dtype(x: Array):
  """float32, or float64 when ``x`` already is (SVDs in at least float32, as PEFT-Arena)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _check_pair(w0: Array, w1: Array) -> None:
  if w0.shape != w1.shape:
    raise ValueError(f'w0 and w1 must have the same shape, got w0 {w0.shape} and w1 {w1.shape}.')


def pretrained_svd(w0: Array):
  """Thin SVD of ``W0 [d_out, d_in]`` in float32: ``U [d_out, k]``, ``σ [k]``, ``V [d_in, k]``."""
  u, s, vh = jnp.linalg.svd(w0.astype(compute_dtype(w0)), full_matrices=False)
  return u, s, vh.T


def retention_profile(w0: Array, w1: Array, *, layout: str = 'flax') -> Array:
  """View I: how much each pretrained singular direction's gain changed.

  .. math:: ΔP(i) = |u_iᵀ W_1 v_i - σ_i| = |u_iᵀ ΔW v_i|

  Args:
    w0: pretrained weight, ``[d_in, d_out]`` (``layout='flax'``) or ``[d_out, d_in]`` ('torch').
    w1: fine-tuned (merged) weight, same shape and layout.
    layout: 'flax' or 'torch'.
  Returns:
    ``[k]``, ``k = min(d_in, d_out)``, ordered by decreasing ``σ_i`` of ``W0``.
  """
  _check_pair(w0, w1)
  w0 = as_torch_layout(w0, layout).astype(compute_dtype(w0))
  dw = as_torch_layout(w1, layout).astype(compute_dtype(w0)) - w0
  u, _, v = pretrained_svd(w0)
  # u_iᵀ ΔW v_i for every i at once: the diagonal of Uᵀ ΔW V without forming the k x k product.
  return jnp.abs(jnp.sum(u * (dw @ v), axis=0))


def update_energy_profile(w0: Array, w1: Array, *, layout: str = 'flax') -> Array:
  """View II: the energy of the update along each pretrained input singular direction.

  .. math:: E(i) = \\lVert ΔW v_i \\rVert_2

  Args:
    w0: pretrained weight (see :func:`retention_profile` for layouts).
    w1: fine-tuned weight, same shape.
    layout: 'flax' or 'torch'.
  Returns:
    ``[k]``, ``E(i) >= ΔP(i)``.
  """
  _check_pair(w0, w1)
  w0 = as_torch_layout(w0, layout).astype(compute_dtype(w0))
  dw = as_torch_layout(w1, layout).astype(compute_dtype(w0)) - w0
  _, _, v = pretrained_svd(w0)
  return jnp.linalg.norm(dw @ v, axis=0)


def stable_rank(dw: Array) -> Array:
  """Effective rank of an update, PEFT-Arena's stable-rank definition.

  .. math::
    \\mathrm{erank}(ΔW) = \\sum_j s_j^2 / s_1^2 = \\lVert ΔW\\rVert_F^2 / \\lVert ΔW\\rVert_2^2

  and 0 when ``s_1 = 0``. Invariant to transposition, so either layout may be passed.

  Args:
    dw: ``[m, n]`` update.
  Returns:
    scalar.
  """
  if dw.ndim != 2:
    raise ValueError(f'stable_rank expects a 2-D update, got shape {dw.shape}.')
  s = jnp.linalg.svd(dw.astype(compute_dtype(dw)), compute_uv=False)
  top = s[0]
  return jnp.where(top > 0, jnp.sum(s**2) / jnp.where(top > 0, top**2, 1.0), 0.0)


def spectral_smoothness(profile: Array, window: int = 5) -> Array:
  """PEFT-Arena's fluctuation score of a spectral profile (lower = smoother).

  .. math::
    p = \\lfloor w/2 \\rfloor,\\quad
    MA = \\mathrm{pad}_{reflect}(v, p) * \\mathbf{1}_w / w,\\quad
    \\mathrm{fluct}(v) = \\frac1k \\sum_i |v_i - MA_i|

  Reflect padding excludes the edge sample (``np.pad(mode='reflect')``). Returns 0 when
  ``k < window`` (as the paper's code).

  Args:
    profile: ``[k]`` profile (e.g. :func:`retention_profile`).
    window: moving-average width ``w`` (static), default 5.
  Returns:
    scalar.
  """
  if profile.ndim != 1:
    raise ValueError(f'spectral_smoothness expects a 1-D profile [k], got shape {profile.shape}.')
  if window < 1:
    raise ValueError(f'window must be >= 1, got {window}.')
  k = profile.shape[0]
  if k < window:
    return jnp.zeros((), profile.dtype)
  pad = window // 2
  padded = jnp.pad(profile, (pad, pad), mode='reflect')
  moving_average = jnp.convolve(padded, jnp.ones((window,), profile.dtype) / window, mode='valid')[
    :k
  ]
  return jnp.mean(jnp.abs(profile - moving_average))


def singular_vector_alignment(w0: Array, w1: Array, *, layout: str = 'flax') -> Array:
  """SVA (used for OFT): per index, ``|cos(v_i^{pre}, v_i^{ft})|``.

  ``v_i^{pre}`` and ``v_i^{ft}`` are the unit input-side right singular vectors of ``W0`` and ``W1``
  (the rows of ``Vh``), so the cosine is a plain dot product; the absolute value removes the SVD's
  sign ambiguity.

  Args:
    w0: pretrained weight (see :func:`retention_profile` for layouts).
    w1: fine-tuned weight, same shape.
    layout: 'flax' or 'torch'.
  Returns:
    ``[k]`` in ``[0, 1]``; PEFT-Arena reports its mean and min.
  """
  _check_pair(w0, w1)
  _, _, v0 = pretrained_svd(as_torch_layout(w0, layout))
  _, _, v1 = pretrained_svd(as_torch_layout(w1, layout))
  return jnp.abs(jnp.sum(v0 * v1, axis=0))


class SpectralSummary(NamedTuple):
  """The scalars PEFT-Arena saves per weight (names as in its ``spectral_analysis.py``)."""

  delta_P_diag_mean: Array  # shape=(), mean_i ΔP(i)
  delta_P_diag_max: Array  # shape=(), max_i ΔP(i)
  E_delta_mean: Array  # shape=(), mean_i E(i)
  E_delta_max: Array  # shape=(), max_i E(i)
  delta_sv_top5: Array  # shape=(min(5, k),), the largest singular values of ΔW, decreasing
  effective_rank: Array  # shape=(), stable rank of ΔW
  smoothness_retention: Array  # shape=(), spectral_smoothness(ΔP)
  smoothness_adaptation: Array  # shape=(), spectral_smoothness(E)


def spectral_summary(
  w0: Array, w1: Array, *, layout: str = 'flax', window: int = 5
) -> SpectralSummary:
  """All PEFT-Arena summary scalars of one weight from one SVD of ``W0`` and one of ``ΔW``.

  .. note:: PEFT-Arena lists the saved key (docs/METRICS.md, "Summary scalars") ``delta_sv_top5`` without its formula; we define
     it as the five largest singular values of ``ΔW`` (the ``s_j`` the effective rank uses).

  Args:
    w0: pretrained weight (see :func:`retention_profile` for layouts).
    w1: fine-tuned weight, same shape.
    layout: 'flax' or 'torch'.
    window: smoothness window.
  Returns:
    :class:`SpectralSummary`.
  """
  _check_pair(w0, w1)
  w0 = as_torch_layout(w0, layout).astype(compute_dtype(w0))
  dw = as_torch_layout(w1, layout).astype(compute_dtype(w0)) - w0
  u, _, v = pretrained_svd(w0)
  return summary_from_pretrained_svd(u, v, dw, window=window)


def summary_from_pretrained_svd(
  u: Array, v: Array, dw: Array, *, window: int = 5
) -> SpectralSummary:
  """:func:`spectral_summary` given ``W0``'s singular vectors (reuse one SVD for many ``ΔW``).

  Args:
    u: ``[d_out, k]`` left singular vectors of ``W0 [d_out, d_in]``.
    v: ``[d_in, k]`` right singular vectors (columns).
    dw: ``ΔW [d_out, d_in]`` (torch layout).
    window: smoothness window.
  """
  dw_v = dw @ v
  retention = jnp.abs(jnp.sum(u * dw_v, axis=0))
  energy = jnp.linalg.norm(dw_v, axis=0)
  delta_sv = jnp.linalg.svd(dw, compute_uv=False)
  top = delta_sv[0]
  effective_rank = jnp.where(top > 0, jnp.sum(delta_sv**2) / jnp.where(top > 0, top**2, 1.0), 0.0)
  return SpectralSummary(
    delta_P_diag_mean=jnp.mean(retention),
    delta_P_diag_max=jnp.max(retention),
    E_delta_mean=jnp.mean(energy),
    E_delta_max=jnp.max(energy),
    delta_sv_top5=delta_sv[:5],
    effective_rank=effective_rank,
    smoothness_retention=spectral_smoothness(retention, window),
    smoothness_adaptation=spectral_smoothness(energy, window),
  )
