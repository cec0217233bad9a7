"""Activation-geometry metrics against float64 NumPy/SciPy references written from
docs/METRICS.md, "Activation geometry" and "CKA" (Kornblith's Gram-form CKA, U-centering, scipy's Procrustes and
subspace angles), plus invariances, streaming == one-shot and vmap == per layer.

Exact-match tests run the JAX side in float64 (``jax.enable_x64``); the float32 tests use
tolerances set by the float32 epsilon (1.2e-7) times the conditioning of each metric; for the
SVD/eigh-based ones (Procrustes, PCA subspaces) the bound is computed from the test data's own
singular values (tests/svd_bounds.py), so it holds on any CPU.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from peft_jax import geometry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import svd_bounds  # noqa: E402  pylint: disable=g-import-not-at-top

EPS = 1e-12


# --- float64 references from the definitions ---------------------------------------------------


def _center(x):
  return x - x.mean(axis=0)


def np_raw(x0, x1):
  a, b = _center(x0), _center(x1)
  return np.linalg.norm(b - a) / (np.linalg.norm(a) + EPS)


def np_procrustes(x0, x1):
  a, b = _center(x0), _center(x1)
  width = max(a.shape[1], b.shape[1])
  a = np.pad(a, ((0, 0), (0, width - a.shape[1])))
  b = np.pad(b, ((0, 0), (0, width - b.shape[1])))
  rotation, _ = scipy.linalg.orthogonal_procrustes(b, a)
  return np.linalg.norm(b @ rotation - a) / (np.linalg.norm(a) + EPS)


def np_gram(x0, x1, idx=None):
  if idx is not None:
    x0, x1 = x0[idx], x1[idx]
  z0 = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
  z1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
  k0, k1 = z0 @ z0.T, z1 @ z1.T
  return np.linalg.norm(k1 - k0) / (np.linalg.norm(k0) + EPS)


def np_cka_gram(x0, x1):
  """Kornblith's Gram-space CKA with HKH centering (independent of the feature-space form)."""
  n = x0.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  k, l = h @ (x0 @ x0.T) @ h, h @ (x1 @ x1.T) @ h
  return np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l))


def _u_center(gram):
  n = gram.shape[0]
  gram = gram.copy()
  np.fill_diagonal(gram, 0)
  means = gram.sum(axis=0) / (n - 2)
  means -= means.sum() / (2 * (n - 1))
  gram -= means[:, None] + means[None, :]
  np.fill_diagonal(gram, 0)
  return gram


def np_cka_debiased_gram(x0, x1):
  k, l = _u_center(x0 @ x0.T), _u_center(x1 @ x1.T)
  return np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l))


def np_pca_distance(x0, x1, k):
  v0 = np.linalg.svd(_center(x0), full_matrices=False)[2][:k].T
  v1 = np.linalg.svd(_center(x1), full_matrices=False)[2][:k].T
  return np.linalg.norm(v0 @ v0.T - v1 @ v1.T) / np.sqrt(2 * k)


def np_pointwise(x0, x1):
  n0, n1 = np.linalg.norm(x0, axis=1), np.linalg.norm(x1, axis=1)
  cos = np.clip(np.sum(x0 * x1, axis=1) / (n0 * n1), -1, 1)
  angle = np.arccos(cos)
  r = n1 / (n0 + EPS)
  return {
    'mean_cos': cos.mean(),
    'mean_one_minus_cos': (1 - cos).mean(),
    'mean_angle': angle.mean(),
    'median_angle': np.median(angle),
    'mean_abs_log_norm_ratio': np.abs(np.log(r + EPS)).mean(),
    'norm_ratio_mean': r.mean(),
    'norm_ratio_std': r.std(),
  }


# --- data --------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pairs():
  """(x0, x1) cases: n > d, n < d, rank-deficient, different widths (d0 != d1)."""
  rng = np.random.default_rng(0)
  full = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + 1.5
  wide = rng.standard_normal((7, 12))
  low_rank = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 10))  # rank 3 < d = 10
  cases = {}
  for name, x0 in (('n_gt_d', full), ('n_lt_d', wide), ('rank_deficient', low_rank)):
    x1 = x0 @ (np.eye(x0.shape[1]) + 0.3 * rng.standard_normal((x0.shape[1],) * 2)) + 0.2 * (
      rng.standard_normal(x0.shape)
    )
    cases[name] = (x0, x1)
  x0 = rng.standard_normal((25, 8))
  cases['d0_ne_d1'] = (x0, np.tanh(x0 @ rng.standard_normal((8, 5))))
  return cases


CASES = ('n_gt_d', 'n_lt_d', 'rank_deficient', 'd0_ne_d1')


@pytest.mark.parametrize('case', CASES)
def test_metrics_match_float64_references(pairs, case):
  x0, x1 = pairs[case]
  with jax.enable_x64(True):
    cka = float(jax.jit(geometry.linear_cka)(x0, x1))
    cka_deb = float(jax.jit(geometry.linear_cka_debiased)(x0, x1))
    procrustes = float(jax.jit(geometry.procrustes_residual)(x0, x1))
    gram = float(jax.jit(geometry.gram_distortion)(x0, x1))
  assert cka == pytest.approx(np_cka_gram(x0, x1), rel=1e-10)
  assert cka_deb == pytest.approx(np_cka_debiased_gram(x0, x1), rel=1e-9)
  assert procrustes == pytest.approx(np_procrustes(x0, x1), rel=1e-9)
  assert gram == pytest.approx(np_gram(x0, x1), rel=1e-10)
  if x0.shape[1] == x1.shape[1]:
    with jax.enable_x64(True):
      raw = float(geometry.raw_residual(x0, x1))
      stats = geometry.pointwise_stats(x0, x1)
      improvement = float(geometry.procrustes_improvement(x0, x1))
    assert raw == pytest.approx(np_raw(x0, x1), rel=1e-12)
    assert improvement == pytest.approx(np_raw(x0, x1) - np_procrustes(x0, x1), rel=1e-9)
    assert improvement >= 0
    for name, value in np_pointwise(x0, x1).items():
      assert float(getattr(stats, name)) == pytest.approx(value, rel=1e-10), name
  # float32 (the default): CKA (matmuls only) to ~1e2 eps32; Procrustes (an SVD) within its
  # perturbation bound.
  x0f, x1f = jnp.float32(x0), jnp.float32(x1)
  assert float(geometry.linear_cka(x0f, x1f)) == pytest.approx(np_cka_gram(x0, x1), rel=1e-5)
  assert abs(float(geometry.procrustes_residual(x0f, x1f)) - np_procrustes(x0, x1)) <= (
    svd_bounds.procrustes_residual_bound(np.float32(x0), np.float32(x1))
  )


def test_paper_test_vectors():
  """Kornblith's notebook data: CKA 0.55761, debiased 0.51346; docs/METRICS.md "Reference values"."""
  np.random.seed(1337)
  x = np.random.randn(100, 10)
  y = np.random.randn(100, 10) + x
  metrics = jax.jit(geometry.activation_geometry, static_argnames='pca_ks')(
    jnp.float32(x), jnp.float32(y), pca_ks=()
  )
  assert float(metrics['cka']) == pytest.approx(0.557613, abs=2e-6)
  assert float(metrics['cka_debiased']) == pytest.approx(0.51346, abs=1e-5)
  assert float(metrics['raw_residual']) == pytest.approx(0.991137, abs=2e-6)
  assert float(metrics['procrustes_residual']) == pytest.approx(0.972211, abs=2e-6)
  assert float(metrics['gram_distortion']) == pytest.approx(0.962571, abs=2e-6)


def test_pca_distance_and_principal_angles():
  rng = np.random.default_rng(5)
  # Distinct spectra so the top-k subspaces are well defined.
  scales = np.array([9.0, 7.0, 5.0, 3.0, 1.0, 0.5, 0.3, 0.2, 0.1])
  x0 = rng.standard_normal((50, 9)) * scales
  x1 = x0 @ scipy.linalg.expm(0.2 * (lambda a: a - a.T)(rng.standard_normal((9, 9))))
  with jax.enable_x64(True):
    for k in (1, 3, 5):
      value = float(jax.jit(geometry.pca_subspace_distance, static_argnums=2)(x0, x1, k))
      assert value == pytest.approx(np_pca_distance(x0, x1, k), rel=1e-9)
    a, b = rng.standard_normal((9, 4)), rng.standard_normal((9, 3))
    b_near = a[:, :3] + 1e-4 * rng.standard_normal((9, 3))
    for q0, q1 in ((a, b), (b, a), (a, b_near)):
      np.testing.assert_allclose(
        jax.jit(geometry.principal_angles)(q0, q1),
        scipy.linalg.subspace_angles(q0, q1),
        rtol=1e-9,
        atol=1e-14,
      )
  with pytest.raises(ValueError, match='k=20'):
    geometry.pca_subspace_distance(x0, x1, 20)


def test_invariances_and_identity(pairs):
  x0, x1 = (jnp.float32(v) for v in pairs['n_gt_d'])
  rng = np.random.default_rng(6)
  q64, _ = np.linalg.qr(rng.standard_normal((6, 6)))
  q = jnp.float32(q64)
  base = float(geometry.linear_cka(x0, x1))
  # Orthogonal maps and isotropic scaling of either side leave CKA unchanged (float32: 1e-5).
  for a, b in ((x0 @ q, x1), (x0, x1 @ q), (3.7 * x0, x1), (x0, 0.02 * x1 @ q)):
    assert float(geometry.linear_cka(a, b)) == pytest.approx(base, rel=1e-5)
  # Procrustes residual is 0 when X1 = X0 Q (and X1 = X0 Q + shift: it centers): to float64
  # rounding in float64, to its float32 perturbation bound in float32.
  with jax.enable_x64(True):
    x0_64 = np.asarray(x0, np.float64)
    assert float(geometry.procrustes_residual(x0_64, x0_64 @ q64 + 2.0)) < 1e-12
  shifted = x0 @ q + 2.0
  assert float(geometry.procrustes_residual(x0, shifted)) <= svd_bounds.procrustes_residual_bound(
    np.asarray(x0), np.asarray(shifted)
  )
  # Identical inputs: distances 0, CKA 1, cosines 1.
  metrics = jax.jit(geometry.activation_geometry, static_argnames='pca_ks')(x0, x0, pca_ks=(2,))
  for name in (
    'raw_residual',
    'gram_distortion',
    'pca_distance_k2',
    'mean_one_minus_cos',
    'mean_abs_log_norm_ratio',
    'norm_ratio_std',
    'mean_angle',
    'median_angle',
  ):
    assert abs(float(metrics[name])) < 2e-6, name
  assert float(metrics['procrustes_residual']) <= svd_bounds.procrustes_residual_bound(
    np.asarray(x0), np.asarray(x0)
  )
  for name in ('cka', 'cka_debiased', 'mean_cos', 'norm_ratio_mean'):
    assert float(metrics[name]) == pytest.approx(1.0, abs=2e-6), name


def test_masks_and_subsampling():
  rng = np.random.default_rng(7)
  x0 = rng.standard_normal((4, 9, 5))
  x1 = x0 + 0.5 * rng.standard_normal((4, 9, 5))
  mask = np.ones((4, 9))
  mask[0, 6:] = 0
  mask[3, 2:] = 0
  real0, real1 = x0[mask.astype(bool)], x1[mask.astype(bool)]
  with jax.enable_x64(True):
    everything = jax.jit(geometry.activation_geometry, static_argnames='pca_ks')
    masked = everything(x0, x1, mask=mask, pca_ks=(2,))
    plain = everything(real0, real1, pca_ks=(2,))
    for name, value in plain.items():
      assert float(masked[name]) == pytest.approx(float(value), rel=1e-9), name
    # Subsampling: n = 36 - 5 real tokens > max_tokens = 16; reference on the same indices.
    key = jax.random.key(3)
    idx, w = geometry.subsample_tokens(36, 16, key, jnp.asarray(mask.reshape(-1)))
    idx, w = np.asarray(idx), np.asarray(w)
    assert len(set(idx.tolist())) == 16 and np.all(np.diff(idx) > 0) and np.all(w == 1)
    gram = float(
      jax.jit(geometry.gram_distortion, static_argnames='max_tokens')(
        x0, x1, mask=mask, max_tokens=16, key=key
      )
    )
    flat0, flat1 = x0.reshape(-1, 5), x1.reshape(-1, 5)
    assert gram == pytest.approx(np_gram(flat0, flat1, idx), rel=1e-10)
    # Same key -> same subset; different key -> a different one.
    idx2, _ = geometry.subsample_tokens(36, 16, key, jnp.asarray(mask.reshape(-1)))
    idx3, _ = geometry.subsample_tokens(36, 16, jax.random.key(4), jnp.asarray(mask.reshape(-1)))
    assert np.array_equal(idx, idx2) and not np.array_equal(idx, idx3)
  with pytest.raises(ValueError, match='mask shape'):
    geometry.linear_cka(x0, x1, mask=mask[:, :3])
  with pytest.raises(ValueError, match='same token dims'):
    geometry.linear_cka(x0, x1[:, :4])


@pytest.mark.parametrize('case', ('n_gt_d', 'd0_ne_d1'))
def test_streaming_equals_one_shot(pairs, case):
  x0, x1 = pairs[case]
  n = x0.shape[0]
  # Three padded batches of 10 token slots covering the n tokens (last slots are padding).
  slots = 10 * int(np.ceil(n / 10))
  pad = ((0, slots - n), (0, 0))
  b0 = np.pad(x0, pad).reshape(-1, 10, x0.shape[1])
  b1 = np.pad(x1, pad).reshape(-1, 10, x1.shape[1])
  mask = (np.arange(slots) < n).astype(np.float64).reshape(-1, 10)
  pca_ks = (2,) if x0.shape[1] == x1.shape[1] else ()
  for dtype, rel in ((np.float64, 1e-9), (np.float32, 2e-5)):
    with jax.enable_x64(dtype == np.float64):
      update = jax.jit(geometry.activation_stats_update)
      state = geometry.activation_stats_init(x0.shape[1], x1.shape[1], dtype)
      for i in range(b0.shape[0]):
        state = update(state, b0[i].astype(dtype), b1[i].astype(dtype), mask=mask[i])
      # An all-padding batch changes nothing.
      state = update(state, b0[0].astype(dtype), b1[0].astype(dtype), mask=np.zeros(10))
      streamed = geometry.activation_stats_finalize(state, pca_ks=pca_ks)
    assert float(streamed['cka']) == pytest.approx(np_cka_gram(x0, x1), rel=rel)
    # The closed form cancels (its float32 error is ~sqrt(eps32) of ||X0||, absolute): bounded
    # by the co-moments' accumulation and SVD errors.
    procrustes_error = abs(float(streamed['procrustes_residual']) - np_procrustes(x0, x1))
    if dtype == np.float64:
      assert procrustes_error <= rel * np_procrustes(x0, x1)
    else:
      assert procrustes_error <= svd_bounds.streamed_procrustes_bound(
        np.float32(x0), np.float32(x1)
      )
    if pca_ks:
      ref = np_pointwise(x0, x1)
      assert float(streamed['raw_residual']) == pytest.approx(np_raw(x0, x1), rel=rel)
      pca_error = abs(float(streamed['pca_distance_k2']) - np_pca_distance(x0, x1, 2))
      if dtype == np.float64:
        assert pca_error <= rel * 10 * np_pca_distance(x0, x1, 2)
      else:  # top-2 eigenvectors of the float32 co-moments: Davis-Kahan
        assert pca_error <= svd_bounds.streamed_pca_distance_bound(
          np.float32(x0), np.float32(x1), 2
        )
      for name in (
        'mean_cos',
        'mean_angle',
        'mean_abs_log_norm_ratio',
        'norm_ratio_mean',
        'norm_ratio_std',
        'mean_one_minus_cos',
      ):
        assert float(streamed[name]) == pytest.approx(ref[name], rel=rel * 10), name


def test_vmap_over_layers_equals_per_layer():
  rng = np.random.default_rng(8)
  x0 = jnp.float32(rng.standard_normal((3, 20, 6)))  # [layers, tokens, d]
  x1 = x0 + jnp.float32(0.3 * rng.standard_normal((3, 20, 6)))
  batched = jax.jit(jax.vmap(lambda a, b: geometry.activation_geometry(a, b, pca_ks=(2,))))(x0, x1)
  for layer in range(3):
    single = geometry.activation_geometry(x0[layer], x1[layer], pca_ks=(2,))
    svd_based = activation_svd_bounds(np.asarray(x0[layer]), np.asarray(x1[layer]), k=2)
    for name, value in single.items():
      if name in svd_based:  # two float32 SVDs: within twice the bound of each
        assert abs(float(batched[name][layer]) - float(value)) <= 2 * svd_based[name], name
      else:
        np.testing.assert_allclose(batched[name][layer], value, rtol=1e-5, atol=1e-6, err_msg=name)


def activation_svd_bounds(x0, x1, k):
  """Float32 error bounds of activation_geometry's SVD-based metrics (the rest are matmuls)."""
  procrustes = svd_bounds.procrustes_residual_bound(x0, x1)
  return {
    'procrustes_residual': procrustes,
    'procrustes_improvement': procrustes + 1e-5 * np_raw(x0, x1) + 1e-6,
    f'pca_distance_k{k}': svd_bounds.pca_distance_bound(x0, x1, k),
  }
