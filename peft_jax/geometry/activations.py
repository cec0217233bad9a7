"""Activation-space geometry between a base and a fine-tuned model on the same prompts.

PEFT-Arena's metrics (docs/METRICS.md, "Activation geometry") plus Kornblith's CKA and principal angles
(docs/METRICS.md, "CKA").
Inputs are token activations stacked as rows, ``x0: [n, d0]`` (base model) and ``x1: [n, d1]``
(fine-tuned model), aligned by token position; any leading token dims (``[batch, seq, d]``) are
flattened. An optional ``mask`` with the token shape (1 = real token, 0 = padding) removes padding
from every mean, centering and sum, so padded batches give the same numbers as the real tokens
alone. Centering means subtracting the column mean over (real) tokens:
``X̄ = X - 1 μᵀ``. ``ε = 1e-12`` sits where PEFT-Arena's code has it.

Two ways to compute:

* one-shot functions on ``[n, d]`` matrices (:func:`linear_cka`, :func:`procrustes_residual`, ...);
* a streaming accumulator (:func:`activation_stats_init` / :func:`activation_stats_update` /
  :func:`activation_stats_finalize`) whose state holds only ``d x d`` centered co-moments, so memory
  stays bounded as tokens grow. Metrics defined on ``n x n`` token Grams (Gram distortion, debiased
  CKA) are computed one-shot on a token subsample (:func:`subsample_tokens`).

Everything is jit-able and vmaps over a leading layer axis when shapes agree.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

EPS = 1e-12
MAX_PAIR_TOKENS = 1024


# ---------------------------------------------------------------------------------------------
# Input handling.


def _flatten(x: Array, name: str) -> Array:
  if x.ndim < 2:
    raise ValueError(
      f'{name} must be [..., n, d] token activations with d last, got shape {x.shape}.'
    )
  return x.reshape(-1, x.shape[-1])


def _prepare(x0: Array, x1: Array, mask: Optional[Array], *, same_dim: bool = False, dtype=None):
  """Flattens ``x0 [..., d0]``, ``x1 [..., d1]`` to ``[n, d]`` and returns token weights ``[n]``."""
  if x0.shape[:-1] != x1.shape[:-1]:
    raise ValueError(
      f'x0 and x1 must have the same token dims (aligned by position), got x0 '
      f'{x0.shape} and x1 {x1.shape}.'
    )
  if same_dim and x0.shape[-1] != x1.shape[-1]:
    raise ValueError(f'this metric needs equal feature dims, got x0 {x0.shape} and x1 {x1.shape}.')
  x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
  dtype = dtype or jnp.promote_types(jnp.promote_types(x0.dtype, x1.dtype), jnp.float32)
  a = _flatten(x0, 'x0').astype(dtype)
  b = _flatten(x1, 'x1').astype(dtype)
  if mask is None:
    weights = jnp.ones((a.shape[0],), dtype)
  else:
    if mask.shape != x0.shape[:-1]:
      raise ValueError(
        f'mask shape {mask.shape} must equal the token dims {x0.shape[:-1]} of x0 {x0.shape}.'
      )
    weights = mask.reshape(-1).astype(dtype)
  return a, b, weights


def _center(x: Array, weights: Array) -> Array:
  """``X̄ = (X - 1 μᵀ)`` with ``μ`` the mean over real tokens; padding rows set to 0."""
  count = jnp.sum(weights)
  mean = jnp.sum(weights[:, None] * x, axis=0) / count
  return (x - mean) * weights[:, None]


# ---------------------------------------------------------------------------------------------
# One-shot metrics.


def raw_residual(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> Array:
  """Centered raw residual ``||X̄1 - X̄0||_F / (||X̄0||_F + ε)``.

  Args:
    x0: base activations ``[..., d]``.
    x1: fine-tuned activations ``[..., d]`` (same shape).
    mask: optional token mask ``x0.shape[:-1]``.
  Returns:
    scalar (0 for identical inputs).
  """
  a, b, w = _prepare(x0, x1, mask, same_dim=True)
  a, b = _center(a, w), _center(b, w)
  return jnp.linalg.norm(b - a) / (jnp.linalg.norm(a) + EPS)


def _zero_pad_pair(a: Array, b: Array):
  """Pads the narrower of ``a [n, d0]``, ``b [n, d1]`` with zero columns to ``max(d0, d1)``."""
  width = max(a.shape[1], b.shape[1])
  return (
    jnp.pad(a, ((0, 0), (0, width - a.shape[1]))),
    jnp.pad(b, ((0, 0), (0, width - b.shape[1]))),
  )


def procrustes_rotation(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> Array:
  """Orthogonal ``R`` minimising ``||X̄1 R - X̄0||_F`` (reflections allowed, no scale).

  SVD ``X̄1ᵀ X̄0 = U S Vᵀ``, ``R = U Vᵀ`` (``scipy.linalg.orthogonal_procrustes(X̄1, X̄0)``). When
  ``d0 != d1`` the narrower side is zero-padded to ``d = max(d0, d1)`` first (netrep's
  ``zero_pad``), so ``R`` is a square orthogonal ``[d, d]``.

  Returns:
    ``R [d, d]``.
  """
  a, b, w = _prepare(x0, x1, mask)
  a, b = _zero_pad_pair(_center(a, w), _center(b, w))
  u, _, vh = jnp.linalg.svd(b.T @ a)
  return u @ vh


def procrustes_residual(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> Array:
  """Orthogonal Procrustes residual ``||X̄1 R - X̄0||_F / (||X̄0||_F + ε)``.

  ``R`` from :func:`procrustes_rotation`. Equivalently
  ``d² = (||X̄1||_F² + ||X̄0||_F² - 2 ||X̄1ᵀ X̄0||_*) / ||X̄0||_F²``; the explicit rotation is used
  here because it keeps float32 accuracy when the residual is tiny. Asymmetric: only ``X0``'s norm
  normalises.

  Args:
    x0: base activations ``[..., d0]``.
    x1: fine-tuned activations ``[..., d1]``.
    mask: optional token mask.
  Returns:
    scalar; 0 when ``X1 = X0 Q`` for an orthogonal ``Q``.
  """
  a, b, w = _prepare(x0, x1, mask)
  a, b = _zero_pad_pair(_center(a, w), _center(b, w))
  u, _, vh = jnp.linalg.svd(b.T @ a)
  return jnp.linalg.norm(b @ (u @ vh) - a) / (jnp.linalg.norm(a) + EPS)


def procrustes_improvement(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> Array:
  """``raw_residual - procrustes_residual`` (>= 0): how much of the change is a rotation."""
  return raw_residual(x0, x1, mask=mask) - procrustes_residual(x0, x1, mask=mask)


def linear_cka(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> Array:
  """Linear CKA, biased (Kornblith et al. 2019; PEFT-Arena's CKA), on centered features.

  .. math::
    CKA = \\lVert X̄_0ᵀ X̄_1\\rVert_F^2 /
          (\\lVert X̄_0ᵀX̄_0\\rVert_F \\lVert X̄_1ᵀX̄_1\\rVert_F + ε)

  Invariant to orthogonal maps and isotropic scaling of either side; ``d0`` may differ from ``d1``.

  Args:
    x0: ``[..., d0]``.
    x1: ``[..., d1]``.
    mask: optional token mask.
  Returns:
    scalar in ``[0, 1]`` (1 for identical inputs).
  """
  a, b, w = _prepare(x0, x1, mask)
  a, b = _center(a, w), _center(b, w)
  cross = jnp.sum((a.T @ b) ** 2)
  return cross / (jnp.linalg.norm(a.T @ a) * jnp.linalg.norm(b.T @ b) + EPS)


def linear_cka_debiased(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> Array:
  """Debiased linear CKA (Song et al. 2012 HSIC estimator; Nguyen et al. 2021), feature space.

  With ``s_x`` the squared row norms of the centered ``X̄`` (``[n]``), ``N_x = Σ s_x`` and ``n`` the
  number of real tokens:

  .. math::
    dps(a, s_x, s_y) = a - \\frac{n}{n-2} s_x·s_y + \\frac{N_x N_y}{(n-1)(n-2)}
    CKA_{deb} = dps(\\lVert X̄ᵀȲ\\rVert_F^2, s_x, s_y) /
                \\sqrt{dps(\\lVert X̄ᵀX̄\\rVert_F^2, s_x, s_x)\\,
                      dps(\\lVert ȲᵀȲ\\rVert_F^2, s_y, s_y)}

  equal to the U-centered Gram form. Needs ``n >= 4``; it can be negative.

  Args:
    x0: ``[..., d0]``.
    x1: ``[..., d1]``.
    mask: optional token mask.
  Returns:
    scalar.
  """
  a, b, w = _prepare(x0, x1, mask)
  if a.shape[0] < 4:
    raise ValueError(f'linear_cka_debiased needs at least 4 tokens, got {a.shape[0]}.')
  n = jnp.sum(w)
  a, b = _center(a, w), _center(b, w)
  rows_a = jnp.sum(a**2, axis=1)
  rows_b = jnp.sum(b**2, axis=1)

  def debiased_dot(similarity, rows_x, rows_y):
    return (
      similarity
      - n / (n - 2) * jnp.dot(rows_x, rows_y)
      + jnp.sum(rows_x) * jnp.sum(rows_y) / ((n - 1) * (n - 2))
    )

  xy = debiased_dot(jnp.sum((a.T @ b) ** 2), rows_a, rows_b)
  xx = debiased_dot(jnp.sum((a.T @ a) ** 2), rows_a, rows_a)
  yy = debiased_dot(jnp.sum((b.T @ b) ** 2), rows_b, rows_b)
  return xy / jnp.sqrt(xx * yy)


def subsample_tokens(num_tokens: int, max_tokens: int, key: Array, mask: Optional[Array] = None):
  """Indices of at most ``max_tokens`` real tokens, drawn without replacement, sorted.

  PEFT-Arena draws ``np.random.default_rng(0).choice(n, 1024, replace=False)`` and sorts; we draw
  with ``jax.random`` from ``key`` (deterministic per key, not the same subset as NumPy's).

  Args:
    num_tokens: ``n`` (static).
    max_tokens: subsample size (static); if ``n <= max_tokens`` every token is kept.
    key: PRNG key.
    mask: optional ``[n]`` 0/1 weights; padding tokens are drawn only when fewer than
      ``max_tokens`` real tokens exist, and then come back with weight 0.
  Returns:
    ``(indices [m], weights [m])`` with ``m = min(n, max_tokens)``.
  """
  weights = jnp.ones((num_tokens,), jnp.float32) if mask is None else mask.reshape(-1)
  if num_tokens <= max_tokens:
    return jnp.arange(num_tokens), weights
  # Gumbel top-k over log-weights: uniform over real tokens, padding (log 0 = -inf) ranked last.
  gumbel = jax.random.gumbel(key, (num_tokens,))
  scores = jnp.where(weights > 0, gumbel, -jnp.inf)
  _, indices = jax.lax.top_k(scores, max_tokens)
  indices = jnp.sort(indices)
  return indices, weights[indices]


def gram_distortion(
  x0: Array,
  x1: Array,
  *,
  mask: Optional[Array] = None,
  max_tokens: int = MAX_PAIR_TOKENS,
  key: Optional[Array] = None,
) -> Array:
  """Cosine-Gram distortion ``||K1 - K0||_F / (||K0||_F + ε)`` on a token subsample.

  Rows are L2-normalised (no centering), ``Z_t = X_t / max(||X_t||, ε)``, ``K_j = Z_j Z_jᵀ`` over at
  most ``max_tokens`` tokens chosen by :func:`subsample_tokens`. Padding rows are zeroed.

  Args:
    x0: ``[..., d0]``.
    x1: ``[..., d1]``.
    mask: optional token mask.
    max_tokens: static subsample size (PEFT-Arena: 1024).
    key: PRNG key for the subsample (default ``jax.random.key(0)``).
  Returns:
    scalar (0 for identical inputs).
  """
  a, b, w = _prepare(x0, x1, mask)
  key = jax.random.key(0) if key is None else key
  indices, w_sub = subsample_tokens(a.shape[0], max_tokens, key, w)
  a, b = a[indices], b[indices]

  def normalised(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), EPS) * w_sub[:, None]

  za, zb = normalised(a), normalised(b)
  gram_a, gram_b = za @ za.T, zb @ zb.T
  return jnp.linalg.norm(gram_b - gram_a) / (jnp.linalg.norm(gram_a) + EPS)


def _top_principal_directions(x_centered: Array, k: int) -> Array:
  _, _, vh = jnp.linalg.svd(x_centered, full_matrices=False)
  return vh[:k].T


def _check_k(k: int, n: int, d: int) -> None:
  if not 1 <= k <= min(n, d):
    raise ValueError(f'PCA subspace size k={k} must be in [1, min(n={n}, d={d})].')


def pca_subspace_distance(x0: Array, x1: Array, k: int, *, mask: Optional[Array] = None) -> Array:
  """Distance between the top-``k`` principal subspaces of ``X̄0`` and ``X̄1``.

  .. math:: d = \\lVert V_0V_0ᵀ - V_1V_1ᵀ\\rVert_F/\\sqrt{2k} = \\sqrt{\\tfrac1k\\sum_i \\sin^2θ_i}
            = \\lVert V_1 - V_0V_0ᵀV_1\\rVert_F / \\sqrt{k}

  ``V_j [d, k]`` are the top-``k`` right singular vectors of ``X̄_j``, from an exact SVD (PEFT-Arena
  uses the randomised ``torch.pca_lowrank``). Meaningful when the ``k``-th and ``k+1``-th singular
  values are distinct.

  Args:
    x0: ``[..., d]``.
    x1: ``[..., d]``.
    k: subspace size (static).
    mask: optional token mask.
  Returns:
    scalar in ``[0, 1]``.
  """
  a, b, w = _prepare(x0, x1, mask, same_dim=True)
  _check_k(k, a.shape[0], a.shape[1])
  v0 = _top_principal_directions(_center(a, w), k)
  v1 = _top_principal_directions(_center(b, w), k)
  return _subspace_distance(v0, v1)


def _subspace_distance(v0: Array, v1: Array) -> Array:
  """``sqrt(Σ sin²θ_i / k)`` for orthonormal ``v0, v1 [d, k]``.

  ``Σ sin²θ_i = ||V1 - V0 V0ᵀ V1||_F²``, which stays accurate for nearly equal subspaces where
  ``k - ||V0ᵀV1||_F²`` would cancel to ``sqrt(eps)``.
  """
  k = v0.shape[1]
  return jnp.linalg.norm(v1 - v0 @ (v0.T @ v1)) / jnp.sqrt(k)


def principal_angles(basis0: Array, basis1: Array) -> Array:
  """Principal angles between ``span(basis0)`` and ``span(basis1)``, largest first.

  Orthonormalise both (``Q_j`` from the thin SVD, so the columns must be linearly independent),
  ``σ = svd(Q_0ᵀ Q_1)``; angles with ``cos² >= 1/2`` come from the sines (``svd`` of the residual
  ``Q_1 - Q_0 Q_0ᵀ Q_1``) for accuracy at small angles, as ``scipy.linalg.subspace_angles``.

  Args:
    basis0: ``[d, p]``.
    basis1: ``[d, q]``.
  Returns:
    ``[min(p, q)]`` angles in radians, decreasing.
  """
  if basis0.ndim != 2 or basis1.ndim != 2 or basis0.shape[0] != basis1.shape[0]:
    raise ValueError(
      f'bases must be [d, p] and [d, q] with the same d, got {basis0.shape} and {basis1.shape}.'
    )
  q0 = jnp.linalg.svd(basis0, full_matrices=False)[0]
  q1 = jnp.linalg.svd(basis1, full_matrices=False)[0]
  if q0.shape[1] < q1.shape[1]:
    q0, q1 = q1, q0
  overlap = q0.T @ q1
  cosines = jnp.linalg.svd(overlap, compute_uv=False)[::-1]  # increasing: angles decreasing
  sines = jnp.linalg.svd(q1 - q0 @ overlap, compute_uv=False)  # decreasing: angles decreasing
  small = cosines**2 >= 0.5
  return jnp.where(
    small, jnp.arcsin(jnp.clip(sines, -1.0, 1.0)), jnp.arccos(jnp.clip(cosines, -1.0, 1.0))
  )


class PointwiseStats(NamedTuple):
  """Per-token comparisons of ``x0_t`` and ``x1_t``, averaged over real tokens."""

  mean_cos: Array  # shape=(), mean cos_t (cos clamped to [-1, 1])
  mean_one_minus_cos: Array  # shape=(), mean (1 - cos_t)
  mean_angle: Array  # shape=(), mean arccos(cos_t), radians
  median_angle: Array  # shape=(), median arccos(cos_t)
  mean_abs_log_norm_ratio: Array  # shape=(), mean |log(r_t + ε)|, r_t = ||x1_t|| / (||x0_t|| + ε)
  norm_ratio_mean: Array  # shape=(), mean r_t
  norm_ratio_std: Array  # shape=(), population std of r_t


def _pointwise_terms(a: Array, b: Array):
  """Per-token cosine, angle and norm ratio, each ``[n]``.

  The angle is ``arccos(cos_t)`` computed as ``2 atan2(||â - b̂||, ||â + b̂||)`` (unit rows ``â``,
  ``b̂``; Kahan): the same value, but accurate near 0 where ``arccos`` of a rounded cosine
  (``1 - 6e-8`` in float32) would give ``~3e-4`` rad of noise. Norms clamp at ε.
  """
  norm_a = jnp.linalg.norm(a, axis=1)
  norm_b = jnp.linalg.norm(b, axis=1)
  cos = jnp.clip(jnp.sum(a * b, axis=1) / jnp.maximum(norm_a * norm_b, EPS), -1.0, 1.0)
  unit_a = a / jnp.maximum(norm_a, EPS)[:, None]
  unit_b = b / jnp.maximum(norm_b, EPS)[:, None]
  angle = 2.0 * jnp.arctan2(
    jnp.linalg.norm(unit_a - unit_b, axis=1), jnp.linalg.norm(unit_a + unit_b, axis=1)
  )
  ratio = norm_b / (norm_a + EPS)
  return cos, angle, ratio


def pointwise_stats(x0: Array, x1: Array, *, mask: Optional[Array] = None) -> PointwiseStats:
  """Pointwise cosine and norm-ratio statistics (docs/METRICS.md, "Pointwise statistics"), no centering.

  Args:
    x0: ``[..., d]``.
    x1: ``[..., d]``.
    mask: optional token mask.
  Returns:
    :class:`PointwiseStats`.
  """
  a, b, w = _prepare(x0, x1, mask, same_dim=True)
  cos, angle, ratio = _pointwise_terms(a, b)
  count = jnp.sum(w)

  def mean(v):
    return jnp.sum(w * v) / count

  ratio_mean = mean(ratio)
  return PointwiseStats(
    mean_cos=mean(cos),
    mean_one_minus_cos=mean(1.0 - cos),
    mean_angle=mean(angle),
    median_angle=jnp.nanmedian(jnp.where(w > 0, angle, jnp.nan)),
    mean_abs_log_norm_ratio=mean(jnp.abs(jnp.log(ratio + EPS))),
    norm_ratio_mean=ratio_mean,
    norm_ratio_std=jnp.sqrt(jnp.maximum(mean((ratio - ratio_mean) ** 2), 0.0)),
  )


def activation_geometry(
  x0: Array,
  x1: Array,
  *,
  mask: Optional[Array] = None,
  pca_ks: Sequence[int] = (32, 64),
  max_pair_tokens: int = MAX_PAIR_TOKENS,
  key: Optional[Array] = None,
) -> dict:
  """Every PEFT-Arena activation metric of one module, as a flat dict of scalars.

  Keys: ``raw_residual``, ``procrustes_residual``, ``procrustes_improvement``, ``gram_distortion``,
  ``cka``, ``cka_debiased``, ``pca_distance_k{k}`` for each ``k`` in ``pca_ks`` with
  ``k <= min(n, d)``, and the :class:`PointwiseStats` fields.

  Args:
    x0: base module outputs ``[..., d]``.
    x1: fine-tuned module outputs ``[..., d]``.
    mask: optional token mask.
    pca_ks: PCA subspace sizes (static); sizes above ``min(n, d)`` are left out.
    max_pair_tokens: Gram-distortion subsample size.
    key: subsample key (default ``jax.random.key(0)``).
  """
  raw = raw_residual(x0, x1, mask=mask)
  procrustes = procrustes_residual(x0, x1, mask=mask)
  n, d = x0.reshape(-1, x0.shape[-1]).shape
  out = {
    'raw_residual': raw,
    'procrustes_residual': procrustes,
    'procrustes_improvement': raw - procrustes,
    'gram_distortion': gram_distortion(x0, x1, mask=mask, max_tokens=max_pair_tokens, key=key),
    'cka': linear_cka(x0, x1, mask=mask),
    'cka_debiased': linear_cka_debiased(x0, x1, mask=mask),
  }
  for k in pca_ks:
    if k <= min(n, d):
      out[f'pca_distance_k{k}'] = pca_subspace_distance(x0, x1, k, mask=mask)
  out.update(pointwise_stats(x0, x1, mask=mask)._asdict())
  return out


# ---------------------------------------------------------------------------------------------
# Streaming accumulation of d x d statistics.


class ActivationStatsState(NamedTuple):
  """Running centered moments of a stream of aligned token pairs (Chan et al.'s parallel update)."""

  count: Array  # shape=(), number of real tokens so far
  mean0: Array  # shape=(d0,), running mean of x0
  mean1: Array  # shape=(d1,), running mean of x1
  comoment00: Array  # shape=(d0, d0), Σ_t (x0_t - μ0)(x0_t - μ0)ᵀ = X̄0ᵀX̄0
  comoment11: Array  # shape=(d1, d1), X̄1ᵀX̄1
  comoment01: Array  # shape=(d0, d1), X̄0ᵀX̄1
  cos_sum: Array  # shape=(), Σ_t cos_t      (pointwise sums: only when d0 == d1, else 0)
  angle_sum: Array  # shape=(), Σ_t arccos(cos_t)
  abs_log_ratio_sum: Array  # shape=(), Σ_t |log(r_t + ε)|
  ratio_sum: Array  # shape=(), Σ_t r_t
  ratio_sq_sum: Array  # shape=(), Σ_t r_t²


def activation_stats_init(d0: int, d1: int, dtype=jnp.float32) -> ActivationStatsState:
  """Empty accumulator for ``x0 [., d0]`` and ``x1 [., d1]`` in ``dtype``."""
  zero = jnp.zeros((), dtype)
  return ActivationStatsState(
    count=zero,
    mean0=jnp.zeros((d0,), dtype),
    mean1=jnp.zeros((d1,), dtype),
    comoment00=jnp.zeros((d0, d0), dtype),
    comoment11=jnp.zeros((d1, d1), dtype),
    comoment01=jnp.zeros((d0, d1), dtype),
    cos_sum=zero,
    angle_sum=zero,
    abs_log_ratio_sum=zero,
    ratio_sum=zero,
    ratio_sq_sum=zero,
  )


def activation_stats_update(
  state: ActivationStatsState, x0: Array, x1: Array, *, mask: Optional[Array] = None
) -> ActivationStatsState:
  """Adds one batch of aligned tokens to the accumulator.

  Merges the batch's own centered co-moments ``M_b`` with the running ``M_a``:
  ``M = M_a + M_b + (n_a n_b / n) δ0 δ1ᵀ`` with ``δ = μ_b - μ_a`` (numerically stable: no
  ``XᵀX - n μμᵀ`` cancellation). A batch with no real tokens leaves the state unchanged.

  Args:
    state: current :class:`ActivationStatsState`.
    x0: ``[..., d0]`` base activations.
    x1: ``[..., d1]`` fine-tuned activations.
    mask: optional token mask (padding excluded).
  Returns:
    the new state.
  """
  if x0.shape[-1] != state.mean0.shape[0] or x1.shape[-1] != state.mean1.shape[0]:
    raise ValueError(
      f"batch dims x0 {x0.shape}, x1 {x1.shape} do not match the accumulator's "
      f'(d0={state.mean0.shape[0]}, d1={state.mean1.shape[0]}).'
    )
  a, b, w = _prepare(x0, x1, mask, dtype=state.mean0.dtype)
  n_b = jnp.sum(w)
  safe_n_b = jnp.maximum(n_b, 1.0)
  mean_b0 = jnp.sum(w[:, None] * a, axis=0) / safe_n_b
  mean_b1 = jnp.sum(w[:, None] * b, axis=0) / safe_n_b
  ac = (a - mean_b0) * w[:, None]
  bc = (b - mean_b1) * w[:, None]
  n_a = state.count
  n = n_a + n_b
  safe_n = jnp.maximum(n, 1.0)
  delta0 = mean_b0 - state.mean0
  delta1 = mean_b1 - state.mean1
  scale = n_a * n_b / safe_n

  if a.shape[1] == b.shape[1]:
    cos, angle, ratio = _pointwise_terms(a, b)
    pointwise = (
      jnp.sum(w * cos),
      jnp.sum(w * angle),
      jnp.sum(w * jnp.abs(jnp.log(ratio + EPS))),
      jnp.sum(w * ratio),
      jnp.sum(w * ratio**2),
    )
  else:
    pointwise = (0.0,) * 5
  return ActivationStatsState(
    count=n,
    mean0=state.mean0 + delta0 * n_b / safe_n,
    mean1=state.mean1 + delta1 * n_b / safe_n,
    comoment00=state.comoment00 + ac.T @ ac + scale * jnp.outer(delta0, delta0),
    comoment11=state.comoment11 + bc.T @ bc + scale * jnp.outer(delta1, delta1),
    comoment01=state.comoment01 + ac.T @ bc + scale * jnp.outer(delta0, delta1),
    cos_sum=state.cos_sum + pointwise[0],
    angle_sum=state.angle_sum + pointwise[1],
    abs_log_ratio_sum=state.abs_log_ratio_sum + pointwise[2],
    ratio_sum=state.ratio_sum + pointwise[3],
    ratio_sq_sum=state.ratio_sq_sum + pointwise[4],
  )


def activation_stats_finalize(state: ActivationStatsState, *, pca_ks: Sequence[int] = ()) -> dict:
  """Metrics from the accumulated ``d x d`` statistics.

  With ``C_ij = X̄_iᵀ X̄_j``:

  * ``cka = ||C01||_F² / (||C00||_F ||C11||_F + ε)``;
  * ``procrustes_residual = sqrt(max(tr C00 + tr C11 - 2 ||C01||_*, 0)) / (sqrt(tr C00) + ε)``
    (closed form; zero-padded when ``d0 != d1``). In float32 its absolute error near 0 is about
    ``sqrt(float32 eps) ≈ 3e-4`` from cancellation: accumulate in float64 or use
    :func:`procrustes_residual` when tiny residuals matter;
  * when ``d0 == d1``: ``raw_residual`` from ``tr C00 + tr C11 - 2 tr C01``,
    ``procrustes_improvement``, ``pca_distance_k{k}`` (top-``k`` eigenvectors of ``C00``, ``C11``),
    and the pointwise means (``mean_cos``, ``mean_one_minus_cos``, ``mean_angle``,
    ``mean_abs_log_norm_ratio``, ``norm_ratio_mean``, ``norm_ratio_std``; the median angle is not
    streamable and is left out).

  Args:
    state: accumulated :class:`ActivationStatsState`.
    pca_ks: PCA subspace sizes (static).
  Returns:
    dict of scalars.
  """
  trace0 = jnp.trace(state.comoment00)
  trace1 = jnp.trace(state.comoment11)
  norm0 = jnp.sqrt(jnp.maximum(trace0, 0.0))
  nuclear = jnp.sum(jnp.linalg.svd(state.comoment01, compute_uv=False))
  procrustes = jnp.sqrt(jnp.maximum(trace0 + trace1 - 2.0 * nuclear, 0.0)) / (norm0 + EPS)
  out = {
    'cka': jnp.sum(state.comoment01**2)
    / (jnp.linalg.norm(state.comoment00) * jnp.linalg.norm(state.comoment11) + EPS),
    'procrustes_residual': procrustes,
  }
  d0, d1 = state.mean0.shape[0], state.mean1.shape[0]
  if d0 == d1:
    raw = jnp.sqrt(jnp.maximum(trace0 + trace1 - 2.0 * jnp.trace(state.comoment01), 0.0)) / (
      norm0 + EPS
    )
    count = state.count
    ratio_mean = state.ratio_sum / count
    out.update(
      {
        'raw_residual': raw,
        'procrustes_improvement': raw - procrustes,
        'mean_cos': state.cos_sum / count,
        'mean_one_minus_cos': 1.0 - state.cos_sum / count,
        'mean_angle': state.angle_sum / count,
        'mean_abs_log_norm_ratio': state.abs_log_ratio_sum / count,
        'norm_ratio_mean': ratio_mean,
        'norm_ratio_std': jnp.sqrt(jnp.maximum(state.ratio_sq_sum / count - ratio_mean**2, 0.0)),
      }
    )
    for k in pca_ks:
      _check_k(k, d0, d0)
      v0 = jnp.linalg.eigh(state.comoment00)[1][:, ::-1][:, :k]
      v1 = jnp.linalg.eigh(state.comoment11)[1][:, ::-1][:, :k]
      out[f'pca_distance_k{k}'] = _subspace_distance(v0, v1)
  elif pca_ks:
    raise ValueError(f'pca_ks={tuple(pca_ks)} needs equal feature dims, got d0={d0}, d1={d1}.')
  return out
