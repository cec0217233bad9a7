"""Spectral (weight-space) metrics and CSD against float64 NumPy references written from
docs/METRICS.md ("Weight spectra", "Capability-Conditioned Drift (CSD)").

The exact-match tests run the JAX side in float64 (``jax.enable_x64``) so they check the formulas,
not float32 rounding; separate float32 tests check the library's default precision against
bounds computed from the SVD's perturbation theory on the test matrices themselves
(tests/svd_bounds.py: float32 eps times ||W|| / singular-value gap), not tuned to one machine.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import geometry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import svd_bounds  # noqa: E402  pylint: disable=g-import-not-at-top

D_IN, D_OUT = 12, 9  # n != d, k = 9


def _np_retention(w0_t, w1_t):
  u, _, vh = np.linalg.svd(w0_t, full_matrices=False)
  dw = w1_t - w0_t
  return np.array([abs(u[:, i] @ dw @ vh[i]) for i in range(len(vh))])


def _np_energy(w0_t, w1_t):
  _, _, vh = np.linalg.svd(w0_t, full_matrices=False)
  dw = w1_t - w0_t
  return np.array([np.linalg.norm(dw @ vh[i]) for i in range(len(vh))])


def _np_stable_rank(dw):
  s = np.linalg.svd(dw, compute_uv=False)
  return 0.0 if s[0] == 0 else float(np.sum(s**2) / s[0] ** 2)


def _np_smoothness(v, w=5):
  if len(v) < w:
    return 0.0
  p = w // 2
  ma = np.convolve(np.pad(v, (p, p), mode='reflect'), np.ones(w) / w, mode='valid')
  return float(np.mean(np.abs(v - ma)))


@pytest.fixture(scope='module')
def weights():
  rng = np.random.default_rng(0)
  w0 = rng.standard_normal((D_IN, D_OUT))  # Flax layout [d_in, d_out]
  # A rank-2 (rank-deficient) LoRA-like update.
  dw = 0.1 * rng.standard_normal((D_IN, 2)) @ rng.standard_normal((2, D_OUT))
  return w0, w0 + dw


def test_profiles_match_numpy_float64(weights):
  w0, w1 = weights
  with jax.enable_x64(True):
    retention = np.asarray(jax.jit(geometry.retention_profile)(w0, w1))
    energy = np.asarray(jax.jit(geometry.update_energy_profile)(w0, w1))
  ref_retention, ref_energy = _np_retention(w0.T, w1.T), _np_energy(w0.T, w1.T)
  np.testing.assert_allclose(retention, ref_retention, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(energy, ref_energy, rtol=1e-9, atol=1e-12)
  assert np.all(energy >= retention - 1e-12)


def test_profiles_float32_and_layouts(weights):
  w0, w1 = weights
  w0f, w1f = jnp.float32(w0), jnp.float32(w1)
  retention = geometry.retention_profile(w0f, w1f)
  assert retention.dtype == jnp.float32
  bound_retention, bound_energy = svd_bounds.profile_bounds(w0.T, w1.T)
  assert np.all(np.abs(retention - _np_retention(w0.T, w1.T)) <= bound_retention)
  energy = geometry.update_energy_profile(w0f, w1f)
  assert np.all(np.abs(energy - _np_energy(w0.T, w1.T)) <= bound_energy)
  # Another float32 SVD (of the transposed matrix): within both computations' bounds.
  torch_layout = geometry.retention_profile(w0f.T, w1f.T, layout='torch')
  assert np.all(np.abs(torch_layout - retention) <= 2 * bound_retention)
  # The bound is informative, not vacuous: ~1e-4 of the profile's scale here.
  assert np.max(bound_retention) < 1e-3 * np.max(_np_retention(w0.T, w1.T))
  with pytest.raises(ValueError, match="layout='jax' is not valid"):
    geometry.retention_profile(w0f, w1f, layout='jax')
  with pytest.raises(ValueError, match='same shape'):
    geometry.retention_profile(w0f, w1f.T)


def test_stable_rank_and_smoothness(weights):
  w0, w1 = weights
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    for dw in (w1 - w0, rng.standard_normal((7, 11)), np.zeros((4, 6))):
      assert float(geometry.stable_rank(dw)) == pytest.approx(_np_stable_rank(dw), rel=1e-10)
    for v in (rng.random(9), rng.random(5), rng.random(30)):
      assert float(jax.jit(geometry.spectral_smoothness)(v)) == pytest.approx(
        _np_smoothness(v), rel=1e-10
      )
    assert float(geometry.spectral_smoothness(rng.random(4))) == 0.0  # k < window
  # Rank-2 update: stable rank in [1, 2].
  assert 1.0 <= float(geometry.stable_rank(jnp.float32(w1 - w0))) <= 2.0


def test_sva_for_orthogonal_update(weights):
  w0, _ = weights
  rng = np.random.default_rng(2)
  # OFT merges as W_eff = W0 R_bdᵀ (torch layout), i.e. kernel R_bd @ kernel0 in Flax layout.
  rotation = np.eye(D_IN)
  rotation[:4, :4] = np.linalg.qr(np.eye(4) + 0.05 * rng.standard_normal((4, 4)))[0]
  w1 = rotation @ w0
  with jax.enable_x64(True):
    sva = np.asarray(jax.jit(geometry.singular_vector_alignment)(w0, w1))
  _, _, vh0 = np.linalg.svd(w0.T, full_matrices=False)
  _, _, vh1 = np.linalg.svd(w1.T, full_matrices=False)
  np.testing.assert_allclose(sva, np.abs(np.sum(vh0 * vh1, axis=1)), rtol=1e-9, atol=1e-12)
  with jax.enable_x64(True):
    np.testing.assert_allclose(
      geometry.singular_vector_alignment(w0, w0), np.ones(D_OUT), rtol=1e-12
    )


def test_summary_and_vmap_over_layers(weights):
  w0, w1 = weights
  with jax.enable_x64(True):
    summary = jax.jit(geometry.spectral_summary)(w0, w1)
  ret, en = _np_retention(w0.T, w1.T), _np_energy(w0.T, w1.T)
  s = np.linalg.svd(w1 - w0, compute_uv=False)
  ref = {
    'delta_P_diag_mean': ret.mean(),
    'delta_P_diag_max': ret.max(),
    'E_delta_mean': en.mean(),
    'E_delta_max': en.max(),
    'effective_rank': _np_stable_rank(w1 - w0),
    'smoothness_retention': _np_smoothness(ret),
    'smoothness_adaptation': _np_smoothness(en),
  }
  for name, value in ref.items():
    assert float(getattr(summary, name)) == pytest.approx(value, rel=1e-9, abs=1e-13), name
  np.testing.assert_allclose(summary.delta_sv_top5, s[:5], rtol=1e-9, atol=1e-13)
  # Identical weights: every summary is 0.
  zero = geometry.spectral_summary(jnp.float32(w0), jnp.float32(w0))
  for name in ref:
    assert float(getattr(zero, name)) == 0.0, name
  # vmap over a stack of 3 layers equals per-layer results.
  rng = np.random.default_rng(3)
  w0s = jnp.float32(rng.standard_normal((3, D_IN, D_OUT)))
  w1s = w0s + jnp.float32(0.05 * rng.standard_normal((3, D_IN, D_OUT)))
  batched = jax.jit(jax.vmap(geometry.spectral_summary))(w0s, w1s)
  for layer in range(3):
    single = geometry.spectral_summary(w0s[layer], w1s[layer])
    # Two float32 computations (vmapped and not): within twice the float32 bound of each field.
    bounds = svd_bounds.summary_bounds(
      np.asarray(w0s[layer], np.float64).T, np.asarray(w1s[layer], np.float64).T
    )
    for name in single._fields:
      diff = np.abs(np.asarray(getattr(batched, name)[layer]) - np.asarray(getattr(single, name)))
      assert np.all(diff <= 2 * bounds[name]), (name, diff, bounds[name])


def _np_csd(h, w0_t, w1_t):
  dw = w1_t - w0_t
  upd = np.mean(np.sum((h @ dw.T) ** 2, axis=1))
  base = np.mean(np.sum((h @ w0_t.T) ** 2, axis=1))
  inp = np.mean(np.sum(h**2, axis=1))
  return upd, upd / (base + 1e-12), upd / ((np.sum(dw**2) + 1e-12) * (inp + 1e-12))


def test_csd_matches_numpy_with_padding(weights):
  w0, w1 = weights
  rng = np.random.default_rng(4)
  h_general = rng.standard_normal((3, 5, D_IN))  # [batch, seq, d_in], right-padded
  general_mask = np.ones((3, 5))
  general_mask[1, 3:] = 0
  general_mask[2, 1:] = 0
  h_target = rng.standard_normal((7, D_IN)) @ np.diag(np.linspace(0.1, 2.0, D_IN))
  with jax.enable_x64(True):
    result = jax.jit(geometry.csd_general_vs_target)(
      h_general, h_target, w0, w1, general_mask=general_mask
    )
    torch_layout = geometry.csd(h_target, w0.T, w1.T, layout='torch')
  real = h_general[general_mask.astype(bool)]
  ref_g = _np_csd(real, w0.T, w1.T)
  ref_t = _np_csd(h_target, w0.T, w1.T)
  np.testing.assert_allclose(tuple(result.general), ref_g, rtol=1e-10)
  np.testing.assert_allclose(tuple(result.target), ref_t, rtol=1e-10)
  np.testing.assert_allclose(tuple(torch_layout), ref_t, rtol=1e-10)
  assert float(result.rel_ratio) == pytest.approx(ref_g[1] / (ref_t[1] + 1e-12), rel=1e-10)
  assert float(result.un_ratio) == pytest.approx(ref_g[2] / (ref_t[2] + 1e-12), rel=1e-10)
  # float32 default path.
  f32 = geometry.csd(jnp.float32(real), jnp.float32(w0), jnp.float32(w1))
  np.testing.assert_allclose(tuple(f32), ref_g, rtol=1e-5)
  # No update: zero drift.
  assert float(geometry.csd(jnp.float32(real), jnp.float32(w0), jnp.float32(w0)).rel) == 0.0
  with pytest.raises(ValueError, match='last dim'):
    geometry.csd(jnp.zeros((4, D_OUT)), jnp.float32(w0), jnp.float32(w1))


def test_csd_from_streamed_moments(weights):
  w0, w1 = weights
  rng = np.random.default_rng(5)
  h = rng.standard_normal((3, 8, D_IN)) + 0.7
  mask = np.ones((3, 8))
  mask[1, 5:] = 0
  with jax.enable_x64(True):
    update = jax.jit(geometry.activation_stats_update)
    state = geometry.activation_stats_init(D_IN, D_IN, np.float64)
    for batch in range(3):
      state = update(state, h[batch], h[batch], mask=mask[batch])
    streamed = geometry.csd_from_moments(state.count, state.mean0, state.comoment00, w0, w1)
  ref = _np_csd(h[mask.astype(bool)], w0.T, w1.T)
  np.testing.assert_allclose(tuple(streamed), ref, rtol=1e-10)
