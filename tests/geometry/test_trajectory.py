"""Metrics along a stack of trajectory snapshots equal per-snapshot metrics and NumPy references.

Two float32 computations of an SVD-based metric (stacked vs per snapshot, or another layout) are
compared within twice the metric's float32 perturbation bound (tests/svd_bounds.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import geometry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import svd_bounds  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def trajectory():
  rng = np.random.default_rng(0)
  w0 = rng.standard_normal((10, 7)).astype(np.float32)
  # Snapshots drift further from w0 with the step; the first one is w0 itself.
  steps = np.arange(4, dtype=np.float32)[:, None, None]
  snapshots = w0[None] + 0.05 * steps * rng.standard_normal((1, 10, 7)).astype(np.float32)
  return w0, snapshots


def test_weight_trajectory(trajectory):
  w0, snapshots = trajectory
  out = jax.jit(geometry.weight_trajectory)(w0, snapshots)
  bounds = [
    svd_bounds.summary_bounds(np.float64(w0).T, np.float64(snapshots[s]).T)
    for s in range(snapshots.shape[0])
  ]
  for s in range(snapshots.shape[0]):
    single = geometry.spectral_summary(w0, snapshots[s])
    for name in single._fields:
      diff = np.abs(np.asarray(out[name][s]) - np.asarray(getattr(single, name)))
      assert np.all(diff <= 2 * bounds[s][name]), (name, diff)
    dw = snapshots[s].astype(np.float64) - w0
    assert float(out['distance_from_base'][s]) == pytest.approx(
      np.linalg.norm(dw), rel=1e-5, abs=1e-7
    )
    assert float(out['relative_distance_from_base'][s]) == pytest.approx(
      np.linalg.norm(dw) / np.linalg.norm(w0), rel=1e-5, abs=1e-7
    )
  assert float(out['distance_from_base'][0]) == 0.0
  assert np.all(np.diff(np.asarray(out['distance_from_base'])) > 0)
  torch_layout = geometry.weight_trajectory(w0.T, np.swapaxes(snapshots, 1, 2), layout='torch')
  diff = np.abs(np.asarray(torch_layout['E_delta_mean']) - np.asarray(out['E_delta_mean']))
  assert np.all(diff <= 2 * np.array([b['E_delta_mean'] for b in bounds])), diff
  with pytest.raises(ValueError, match='num_snapshots'):
    geometry.weight_trajectory(w0, snapshots[0])


def test_params_distance_and_stacking(trajectory):
  w0, snapshots = trajectory
  theta0 = {'w': w0, 'b': np.ones(3, np.float32)}
  snaps = [{'w': snapshots[s], 'b': np.full(3, 1.0 + s, np.float32)} for s in range(4)]
  stacked = geometry.stack_snapshots(snaps)
  assert stacked['w'].shape == (4, 10, 7) and stacked['b'].shape == (4, 3)
  out = geometry.params_distance_trajectory(theta0, stacked)
  base_norm = np.sqrt(np.sum(w0.astype(np.float64) ** 2) + 3)
  for s in range(4):
    dist = np.sqrt(np.sum((snapshots[s].astype(np.float64) - w0) ** 2) + 3 * s**2)
    assert float(out['distance_from_base'][s]) == pytest.approx(dist, rel=1e-5, abs=1e-7)
    assert float(out['relative_distance_from_base'][s]) == pytest.approx(
      dist / base_norm, rel=1e-5, abs=1e-7
    )
  with pytest.raises(ValueError, match='snapshot 1'):
    geometry.stack_snapshots([theta0, {'w': w0}])


def test_activation_trajectory():
  rng = np.random.default_rng(1)
  x0 = rng.standard_normal((3, 8, 6)).astype(np.float32)  # [batch, seq, d]
  mask = np.ones((3, 8), np.float32)
  mask[2, 5:] = 0
  x1s = np.stack(
    [x0 + 0.2 * s * rng.standard_normal(x0.shape).astype(np.float32) for s in range(3)]
  )
  out = jax.jit(geometry.activation_trajectory, static_argnames='pca_ks')(
    x0, x1s, mask=mask, pca_ks=(2,)
  )
  for s in range(3):
    assert float(out['cka'][s]) == pytest.approx(
      float(geometry.linear_cka(x0, x1s[s], mask=mask)), rel=1e-5
    )
    real0, real1 = x0[mask.astype(bool)], x1s[s][mask.astype(bool)]
    assert abs(
      float(out['procrustes_residual'][s])
      - float(geometry.procrustes_residual(x0, x1s[s], mask=mask))
    ) <= 2 * (svd_bounds.procrustes_residual_bound(real0, real1))
    assert float(out['raw_residual'][s]) == pytest.approx(
      float(geometry.raw_residual(x0, x1s[s], mask=mask)), rel=1e-5, abs=1e-6
    )
    assert abs(
      float(out['pca_distance_k2'][s])
      - float(geometry.pca_subspace_distance(x0, x1s[s], 2, mask=mask))
    ) <= 2 * (svd_bounds.pca_distance_bound(real0, real1, 2))
  assert float(out['cka'][0]) == pytest.approx(1.0, abs=1e-6)
  # Different width: CKA and Procrustes only.
  x1_wide = np.stack([np.tanh(x0 @ rng.standard_normal((6, 9)).astype(np.float32))] * 2)
  wide = geometry.activation_trajectory(x0, x1_wide)
  assert set(wide) == {'cka', 'procrustes_residual'}
