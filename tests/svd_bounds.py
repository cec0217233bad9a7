"""Error bounds for float32 SVD/eigh results, from perturbation theory, for tests that compare
them with float64 references or with another float32 computation.

CPUs differ in their LAPACK/BLAS rounding (Intel AVX-512 vs AMD EPYC builds of the same
library), so a fixed tolerance on a float32 singular vector is a property of one machine. What
holds on every machine is the backward-error bound of LAPACK's SVD and eigensolvers,
``||E||_2 <= p(m, n) eps ||A||_2`` (LAPACK Users' Guide, "Error Bounds for the Singular Value
Decomposition"; here ``p(m, n) = max(m, n)``, ``eps = 2u``), and what it implies:

* singular values / eigenvalues move by at most ``||E||_2`` (Weyl);
* singular vectors and subspaces rotate by ``sin t <= sqrt(2) ||E|| / (gap - ||E||)`` (Wedin;
  Davis-Kahan for symmetric eigenproblems, without the sqrt(2)), ``gap`` being the distance to
  the nearest other singular value (0 included for a rectangular matrix's null space);
* a sign-aligned unit vector then moves by ``2 sin(t/2) <= sqrt(2) sin t``.

The bounds are computed from the float64 singular values of the actual test matrices, so a test
whose matrix has a small gap gets the (correctly) larger tolerance.
"""

import numpy as np

U32 = 2.0**-24  # float32 unit roundoff (eps32 = 2 u32 = 1.19e-7)
U64 = 2.0**-53


def svd_backward_error(a, unit=U32):
  """Bound on ``||E||_2`` for a computed SVD (or eigendecomposition) of ``a`` in a precision with
  unit roundoff ``unit``, including the rounding of ``a`` itself into that precision."""
  a = np.asarray(a, np.float64)
  return max(a.shape) * 2 * unit * np.linalg.norm(a, 2) + unit * np.linalg.norm(a)


def singular_gaps(a):
  """``(sv, gap)``: the singular values of ``a`` and each one's distance to the others (and to 0,
  for a rectangular ``a``, whose null space is another "singular value")."""
  sv = np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)
  others = sv if a.shape[0] == a.shape[1] else np.concatenate([sv, [0.0]])
  gap = np.array(
    [
      np.min(np.abs(np.delete(others, i) - s)) if len(others) > 1 else np.inf
      for i, s in enumerate(sv)
    ]
  )
  return sv, gap


def vector_errors(a, delta):
  """Per singular triplet ``i``: bound on ``||u'_i - u_i||_2`` and ``||v'_i - v_i||_2`` (sign
  aligned) when the SVD is exact for ``a + E``, ``||E||_2 <= delta``. Never more than 2."""
  _, gap = singular_gaps(a)
  with np.errstate(divide='ignore'):
    sin = np.where(gap > delta, np.sqrt(2) * delta / (gap - delta), 1.0)
  return np.minimum(np.sqrt(2) * np.minimum(sin, 1.0), 2.0)


def top_subspace_sin(a, k, delta):
  """Bound on the sine of the largest angle between the exact and the computed top-``k``
  singular subspace (left or right) of ``a`` (Wedin); 1 when the gap ``sv_k - sv_{k+1}`` is not
  resolved."""
  sv = np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)
  below = sv[k] if k < len(sv) else 0.0
  gap = sv[k - 1] - below
  if gap <= delta:
    return 1.0
  return min(1.0, np.sqrt(2) * delta / (gap - delta))


def top_eigen_subspace_sin(c, k, delta):
  """Davis-Kahan: sine of the largest angle between the exact and the computed top-``k``
  eigenspace of the symmetric ``c`` when the eigensolver is exact for ``c + E``,
  ``||E||_2 <= delta``."""
  lam = np.sort(np.linalg.eigvalsh(np.asarray(c, np.float64)))[::-1]
  below = lam[k] if k < len(lam) else -np.inf
  gap = lam[k - 1] - below
  if gap <= delta:
    return 1.0
  return min(1.0, delta / (gap - delta))


def arccos_error(cos_error, angle=None):
  """Bound on ``|arccos x' - arccos x|`` for ``|x' - x| <= cos_error``: ``arccos(1 - e)`` in
  general (arccos changes fastest at +-1); given the exact ``angle = arccos x`` (an array), the
  mean-value bound ``e / sqrt(1 - (|x| + e)^2)`` where that is smaller."""
  worst = np.arccos(max(-1.0, 1.0 - cos_error))
  if angle is None:
    return float(worst)
  top = np.abs(np.cos(np.asarray(angle, np.float64))) + cos_error
  with np.errstate(invalid='ignore', divide='ignore'):
    local = np.where(top < 1, cos_error / np.sqrt(np.maximum(1 - top**2, 0.0)), np.inf)
  return np.minimum(worst, local)


# ------------------------------------------------------------------------------------------------
# Bounds for peft_jax.geometry's SVD-based metrics computed in float32 (against exact values).
# Two float32 computations of the same metric (vmapped vs per layer, another layout) differ by at
# most twice the bound.
# ------------------------------------------------------------------------------------------------


def profile_bounds(w0_t, w1_t):
  """Bounds on the float32 retention / energy profiles' errors (per singular index).

  ``w0_t, w1_t``: torch layout ``[d_out, d_in]``, float64 values of the inputs. The float32 SVD
  of ``W0`` is exact for ``W0 + E`` (``||E|| <= delta``), so ``u_i, v_i`` move by at most ``m_i``
  (:func:`vector_errors`). ``ΔW`` from the float32 casts is off by at most
  ``e = ||u (|W0| + |W1| + |ΔW|)||_F``, and each dot product adds ``n u ||ΔW||_F``. Then
  ``|u'ᵀΔW'v' - uᵀΔWv| <= ||ΔW|| (2 m + m²) + e (1 + m)² + rounding`` and
  ``|‖ΔW'v'‖ - ‖ΔWv‖| <= ||ΔW|| m + e (1 + m) + rounding``.
  """
  w0_t, w1_t = np.asarray(w0_t, np.float64), np.asarray(w1_t, np.float64)
  dw = w1_t - w0_t
  move = vector_errors(w0_t, svd_backward_error(w0_t))
  norm = np.linalg.norm(dw, 2)
  cast = U32 * np.linalg.norm(np.abs(w0_t) + np.abs(w1_t) + np.abs(dw))
  rounding = (sum(dw.shape) + 2) * U32 * np.linalg.norm(dw)
  retention = norm * (2 * move + move**2) + cast * (1 + move) ** 2 + rounding
  energy = norm * move + cast * (1 + move) + rounding
  return retention, energy


def summary_bounds(w0_t, w1_t):
  """``{field: bound}`` for :func:`peft_jax.geometry.spectral_summary` in float32.

  Means and maxima of a profile are 1-Lipschitz in its max-norm; the smoothness score
  ``mean|v - MA(v)|`` is 2-Lipschitz; the singular values of ``ΔW`` move by at most its SVD's
  backward error plus the cast error (Weyl); the effective rank ``sum s² / s_1²`` is bounded by
  interval arithmetic on those.
  """
  w0_t, w1_t = np.asarray(w0_t, np.float64), np.asarray(w1_t, np.float64)
  dw = w1_t - w0_t
  retention, energy = profile_bounds(w0_t, w1_t)
  k = len(retention)
  cast = U32 * np.linalg.norm(np.abs(w0_t) + np.abs(w1_t) + np.abs(dw))
  delta = svd_backward_error(dw) + cast
  sv = np.linalg.svd(dw, compute_uv=False)
  sums = (np.sum(sv**2), np.sum(2 * sv * delta + delta**2) + k * U32 * np.sum(sv**2))
  top = sv[0]
  if top > 2 * delta:
    rank = sums[0] / top**2
    rank_bound = max(
      abs((sums[0] + sums[1]) / (top - delta) ** 2 - rank),
      abs(max(sums[0] - sums[1], 0.0) / (top + delta) ** 2 - rank),
    )
  else:
    rank_bound = float(k)
  scale_r = np.max(np.abs(retention)) if k else 0.0
  rounding = 4 * k * U32  # relative, of the means and moving averages
  return {
    'delta_P_diag_mean': np.max(retention) * (1 + rounding) + rounding * scale_r,
    'delta_P_diag_max': np.max(retention),
    'E_delta_mean': np.max(energy) * (1 + rounding),
    'E_delta_max': np.max(energy),
    'effective_rank': rank_bound + (rounding * sums[0] / top**2 if top > 0 else 0.0),
    'smoothness_retention': 2 * np.max(retention) * (1 + rounding),
    'smoothness_adaptation': 2 * np.max(energy) * (1 + rounding),
    'delta_sv_top5': delta + 4 * U32 * top,
  }


def _center(x):
  return x - x.mean(axis=0)


def _centering_error(x):
  """Bound on the Frobenius error of centering ``x [n, d]`` in float32 (the mean's sum and the
  subtraction)."""
  n = x.shape[0]
  return (n + 2) * U32 * np.linalg.norm(np.abs(x) + np.abs(x.mean(axis=0)))


def procrustes_residual_bound(x0, x1):
  """Bound on the error of the float32 :func:`peft_jax.geometry.procrustes_residual` of
  ``x0 [n, d0]``, ``x1 [n, d1]`` (float64 values).

  With ``M = B̄ᵀĀ`` computed to ``E1`` and its SVD exact for ``M + E1 + E2``, the computed
  rotation ``R`` satisfies ``|tr(RᵀM) - ||M||_*| <= 2 d ||E1 + E2||`` (Weyl on the nuclear norm,
  ``|tr(RᵀE)| <= d ||E||`` for orthogonal ``R``), so the squared residual (before the
  normalisation) moves by ``4 d ||E|| + eta ||B̄||²`` (``eta``: the float32 loss of orthogonality of
  ``R``) and the residual by the smaller of the square root and ``Δ/r``; centering errors move it
  by at most their size (the Procrustes distance is 1-Lipschitz in each argument), and its final
  float32 evaluation adds ``(d^1.5 + n d + 2) u (||Ā|| + ||B̄||)``. When ``M`` is well conditioned
  the polar-factor bound on ``R`` is used instead where it is smaller (tiny residuals).
  """
  x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
  n = x0.shape[0]
  d = max(x0.shape[1], x1.shape[1])
  a, b = _center(x0), _center(x1)
  a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
  b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
  ea, eb = _centering_error(x0), _centering_error(x1)
  m = b.T @ a
  e1 = n * U32 * np.linalg.norm(np.abs(b).T @ np.abs(a))  # the centering errors: ea + eb below
  e2 = svd_backward_error(m)
  norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
  nuclear = np.sum(np.linalg.svd(m, compute_uv=False))
  rho2 = max(norm_a**2 + norm_b**2 - 2 * nuclear, 0.0)
  rho = np.sqrt(rho2)
  eta = 4 * d * 2 * U32
  delta2 = 4 * d * (e1 + e2) + eta * norm_b**2
  delta = min(np.sqrt(delta2), delta2 / rho if rho > 0 else np.inf)
  # Or through the rotation itself: r is ||B̄||-Lipschitz in R, and R (the polar factor of M)
  # moves by at most 2 ||E||_F / (s_d + s_{d-1}) (R.-C. Li's bound), tighter when r is ~0.
  sv = np.linalg.svd(m, compute_uv=False)
  if len(sv) > 1 and sv[-1] + sv[-2] > 0:
    polar = 2 * (e1 + np.sqrt(d) * e2) / (sv[-1] + sv[-2]) + eta
    delta = min(delta, norm_b * polar)
  evaluation = (d**1.5 + n * d + 2) * U32 * (norm_a + norm_b)
  absolute = delta + ea + eb + evaluation
  r = rho / norm_a
  return absolute / (norm_a - ea) + r * (n * d + 2) * U32 + r * ea / (norm_a - ea)


def pca_distance_bound(x0, x1, k):
  """Bound on the error of the float32 one-shot ``pca_subspace_distance(x0, x1, k)``: each top-k
  right singular subspace of the centered data rotates by at most ``sin t``
  (:func:`top_subspace_sin`), which moves ``||P0 - P1||_F / sqrt(2k)`` by at most the sum of
  both; plus the final evaluation's rounding."""
  x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
  sines = [
    top_subspace_sin(_center(x), k, svd_backward_error(_center(x)) + _centering_error(x))
    for x in (x0, x1)
  ]
  return sum(sines) + (x0.shape[1] + 4) * 2 * U32


def streamed_pca_distance_bound(x0, x1, k):
  """As :func:`pca_distance_bound` for the streamed statistics: the top-k eigenvectors of the
  float32-accumulated co-moment ``C = X̄ᵀX̄`` (error ``n u || |X̄|ᵀ|X̄| || + 2 ||X̄|| e_center``,
  then the eigensolver's backward error) rotate by the Davis-Kahan bound."""
  sines = []
  for x in (np.asarray(x0, np.float64), np.asarray(x1, np.float64)):
    xc = _center(x)
    c = xc.T @ xc
    accumulated = (x.shape[0] + 4) * U32 * np.linalg.norm(np.abs(xc).T @ np.abs(xc)) + (
      2 * np.linalg.norm(xc) * _centering_error(x)
    )
    sines.append(top_eigen_subspace_sin(c, k, accumulated + svd_backward_error(c)))
  return sum(sines) + (np.asarray(x0).shape[1] + 4) * 2 * U32


def streamed_procrustes_bound(x0, x1):
  """Bound on the error of the streamed (closed-form) Procrustes residual
  ``sqrt(tr C00 + tr C11 - 2 ||C01||_*) / sqrt(tr C00)`` in float32: the co-moments' accumulation
  errors, ``||C01||_*`` moving by ``d`` times its SVD's backward error (Weyl), then the
  cancellation ``Δ(r²) -> min(sqrt(Δ), Δ / r)``."""
  x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
  n = x0.shape[0]
  d = max(x0.shape[1], x1.shape[1])
  a, b = _center(x0), _center(x1)
  c01 = b.T @ a
  acc = lambda p, q, ep, eq: (
    (n + 4) * U32 * np.linalg.norm(np.abs(p).T @ np.abs(q))
    + (np.linalg.norm(p) * eq + np.linalg.norm(q) * ep)
  )
  ea, eb = _centering_error(x0), _centering_error(x1)
  t0, t1 = np.sum(a * a), np.sum(b * b)
  err_t = np.sqrt(d) * (acc(a, a, ea, ea) + acc(b, b, eb, eb))  # traces of d x d co-moments
  err_nuclear = d * (acc(b, a, eb, ea) + svd_backward_error(c01))
  nuclear = np.sum(np.linalg.svd(c01, compute_uv=False))
  rho2 = max(t0 + t1 - 2 * nuclear, 0.0)
  delta2 = err_t + 2 * err_nuclear + 4 * U32 * (t0 + t1)
  rho = np.sqrt(rho2)
  delta = min(np.sqrt(delta2), delta2 / rho if rho > 0 else np.inf)
  norm0 = np.sqrt(t0)
  r = rho / norm0
  e_norm0 = err_t / (2 * norm0)
  return (delta + r * e_norm0) / (norm0 - e_norm0) + 4 * U32 * r
