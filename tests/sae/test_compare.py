"""Dictionary comparison and the delta-SAE study against float64 NumPy/SciPy references."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import peft_jax.sae as S

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import svd_bounds  # noqa: E402  pylint: disable=g-import-not-at-top


def subspace_angle_bound(a, b, k, angles=None):
  """Bound on the error of float32 ``decoder_subspace_angles(a, b, k)``: each top-k right singular
  subspace rotates by at most ``arcsin(s)`` (Wedin, :func:`svd_bounds.top_subspace_sin`), which
  moves every principal angle by at most the sum of both rotations; the cosines, singular values
  of the float32 ``Q_aᵀ Q_b`` (error ``e``: its SVD's backward error plus the product's rounding
  and the factors' loss of orthonormality), reach the angles through arccos:
  ``arccos(1 - e)``, or less away from 0 (``angles``: the exact ones, :func:`arccos_error`)."""
  rotation = sum(
    np.arcsin(svd_bounds.top_subspace_sin(x, k, svd_bounds.svd_backward_error(x))) for x in (a, b)
  )
  d = a.shape[1]
  cos_error = 2 * (k + 2 * d + 2) * 2 * svd_bounds.U32
  return rotation + svd_bounds.arccos_error(cos_error, angles)


def _unit(a):
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_compare_dictionaries_planted():
  rng = np.random.default_rng(0)
  d, m_base = 48, 64
  base = _unit(rng.normal(size=(m_base, d)))
  # 6 delta features copy base atoms (signs flipped on some, small noise), 4 are new directions.
  shared = base[[3, 10, 11, 40, 41, 63]] * np.array([1, -1, 1, 1, -1, 1])[:, None]
  shared = shared + 0.05 * rng.normal(size=shared.shape)
  novel = rng.normal(size=(4, d))
  delta = np.concatenate([shared, novel]) * rng.uniform(0.5, 2.0, size=(10, 1))  # any row norms
  alive = np.ones(10, bool)
  alive[9] = False
  out = S.compare_dictionaries(
    jnp.asarray(delta, jnp.float32),
    {'W_dec': jnp.asarray(base)},
    thresholds=(0.5, 0.7, 0.9),
    novel_threshold=0.5,
    alive=alive,
  )
  cos = _unit(delta) @ base.T
  np.testing.assert_allclose(out.cosine, cos, rtol=1e-5, atol=1e-6)
  c = np.abs(cos).max(1)
  np.testing.assert_array_equal(out.best_match, np.abs(cos).argmax(1))
  np.testing.assert_array_equal(out.best_match[:6], [3, 10, 11, 40, 41, 63])
  np.testing.assert_allclose(out.max_abs_cosine, c, rtol=1e-5)
  np.testing.assert_allclose(out.mmcs, c[alive].mean(), rtol=1e-5)
  for tau, frac in zip((0.5, 0.7, 0.9), np.asarray(out.match_fractions)):
    np.testing.assert_allclose(frac, np.mean(c[alive] >= tau), rtol=1e-6)
  np.testing.assert_allclose(out.match_fractions, [6 / 9] * 3, rtol=1e-6)  # planted: 6 of 9
  np.testing.assert_array_equal(out.novel, alive & (c < 0.5))
  np.testing.assert_allclose(out.novel_fraction, 3 / 9, rtol=1e-6)
  with pytest.raises(ValueError, match='different spaces'):
    S.compare_dictionaries(jnp.ones((3, 4)), jnp.ones((3, 5)))
  with pytest.raises(ValueError, match='thresholds'):
    S.compare_dictionaries(jnp.ones((3, 4)), jnp.ones((3, 4)), thresholds=(1.5,))


def test_subspace_angles_and_cka():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(12, 7)), rng.normal(size=(9, 7))
  k = 3
  qa = np.linalg.svd(a, full_matrices=False)[2][:k].T
  qb = np.linalg.svd(b, full_matrices=False)[2][:k].T
  ref = np.sort(scipy.linalg.subspace_angles(qa, qb))
  angles = np.asarray(S.decoder_subspace_angles(jnp.asarray(a), jnp.asarray(b), k))
  af, bf = np.float32(a), np.float32(b)
  assert np.all(np.abs(angles - ref) <= subspace_angle_bound(af, bf, k, ref)), (angles, ref)
  same = np.asarray(S.decoder_subspace_angles(jnp.asarray(a), jnp.asarray(3 * a), k))
  assert np.all(same <= subspace_angle_bound(af, np.float32(3 * a), k)), same
  fa, fb = rng.normal(size=(30, 5)), rng.normal(size=(30, 8))
  ac, bc = fa - fa.mean(0), fb - fb.mean(0)
  ref = np.linalg.norm(bc.T @ ac) ** 2 / (np.linalg.norm(ac.T @ ac) * np.linalg.norm(bc.T @ bc))
  np.testing.assert_allclose(S.feature_cka(jnp.asarray(fa), jnp.asarray(fb)), ref, rtol=1e-5)
  q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
  np.testing.assert_allclose(
    S.feature_cka(jnp.asarray(fa), jnp.asarray(2 * fa @ q)), 1.0, rtol=1e-5
  )


def test_feature_statistics_match_numpy():
  rng = np.random.default_rng(2)
  d, m, n, top_n = 5, 7, 50, 4
  params = S.init_sae(jax.random.key(3), d, m)
  params['b_enc'] = jnp.asarray(rng.normal(size=m) - 0.5, jnp.float32)
  x = rng.normal(size=(n, d))
  stats = S.feature_statistics(
    params, jnp.asarray(x, jnp.float32), 'relu', top_n=top_n, chunk_size=16
  )  # 4 chunks, the last one padded
  p = {name: np.asarray(v, np.float64) for name, v in params.items()}
  f = np.maximum((x - p['b_dec']) @ p['W_enc'] + p['b_enc'], 0.0)
  count = (f > 0).sum(0)
  np.testing.assert_allclose(stats.frequency, count / n, rtol=1e-6)
  np.testing.assert_allclose(stats.mean_activation, f.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
    stats.mean_when_active, np.where(count > 0, f.sum(0) / np.maximum(count, 1), 0), rtol=1e-5
  )
  order = np.argsort(-f, axis=0, kind='stable')[:top_n].T  # [m, top_n]
  np.testing.assert_allclose(
    stats.top_values, np.take_along_axis(f.T, order, 1), rtol=1e-5, atol=1e-7
  )
  positive = np.take_along_axis(f.T, order, 1) > 0
  np.testing.assert_array_equal(np.asarray(stats.top_indices)[positive], order[positive])
  with pytest.raises(ValueError, match='top_n'):
    S.feature_statistics(params, jnp.asarray(x), 'relu', top_n=n + 1)


# ---------------------------------------------------------------------------------------------
# The study end to end on planted data.

D, M_BASE, N_TOKENS = 48, 64, 4096


def _sparse_codes(rng, n, m, active):
  codes = np.zeros((n, m))
  idx = np.argsort(rng.random((n, m)), axis=1)[:, :active]
  np.put_along_axis(codes, idx, rng.uniform(0.5, 2.0, size=(n, active)), axis=1)
  return codes


@pytest.fixture(scope='module')
def planted():
  """Base activations from a known dictionary P [64, 48]; Δh from 8 base atoms + 8 new atoms."""
  rng = np.random.default_rng(1)
  base_dict = _unit(rng.normal(size=(M_BASE, D)))
  h_base = _sparse_codes(rng, N_TOKENS, M_BASE, 4) @ base_dict
  delta_dict = np.concatenate([base_dict[:8], _unit(rng.normal(size=(8, D)))])
  assert np.abs(delta_dict[8:] @ base_dict.T).max() < 0.5  # the new atoms really are new
  delta = 0.3 * _sparse_codes(rng, N_TOKENS, 16, 2) @ delta_dict
  # Pack the 4096 real tokens into [2, 2100] captures with left and right padding.
  mask = np.ones((2, 2100), np.int32)
  mask[0, :52] = 0
  mask[1, -52:] = 0
  caps_base = np.full((2, 2100, D), 7.0)
  caps_adapted = np.full((2, 2100, D), -3.0)
  caps_base[mask == 1] = h_base
  caps_adapted[mask == 1] = h_base + delta
  config = S.DeltaStudyConfig(
    base_sae=S.SAEConfig(
      num_features=M_BASE,
      activation='topk',
      k=4,
      learning_rate=3e-3,
      num_steps=1500,
      log_every=250,
      dead_after=250,
      resample_every=500,
    ),
    delta_sae=S.SAEConfig(
      num_features=16,
      activation='topk',
      k=2,
      learning_rate=3e-3,
      num_steps=1500,
      log_every=250,
      dead_after=250,
      resample_every=500,
    ),
    key_name='layers_5/residual',
    thresholds=(0.5, 0.7, 0.9),
    novel_threshold=0.5,
    num_top_features=5,
    top_tokens=6,
  )
  summary, params = S.delta_sae_study(
    {'layers_5/residual': jnp.asarray(caps_base, jnp.float32)},
    {'layers_5/residual': jnp.asarray(caps_adapted, jnp.float32)},
    mask,
    config,
    jax.random.key(0),
    return_params=True,
  )
  return dict(
    base_dict=base_dict,
    delta_dict=delta_dict,
    h_base=h_base,
    delta=delta,
    summary=summary,
    params=params,
  )


def test_study_recovers_base_dictionary(planted):
  w = np.asarray(planted['params']['base']['W_dec'], np.float64)
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)
  cos = np.abs(planted['base_dict'] @ w.T)
  assert cos.max(axis=1).mean() > 0.95
  history = planted['summary']['base_sae']['history']
  assert history['fvu'][-1] < 0.5 * history['fvu'][0]
  assert planted['summary']['base_sae']['fvu'] < 0.1


def test_study_finds_planted_shared_and_novel_features(planted):
  s = planted['summary']
  json.loads(json.dumps(s))  # JSON-serialisable
  assert s['num_tokens'] == N_TOKENS and s['d'] == D
  w = np.asarray(planted['params']['delta']['W_dec'], np.float64)
  assert np.abs(planted['delta_dict'] @ w.T).max(axis=1).mean() > 0.95
  matching = s['matching']
  assert matching['alive_delta_features'] >= 14
  # Planted: half the delta atoms are base atoms, half are new.
  assert matching['match_fractions'][0] == pytest.approx(0.5, abs=0.15)  # τ = 0.5
  assert matching['match_fractions'][2] == pytest.approx(0.5, abs=0.15)  # τ = 0.9
  assert matching['novel_fraction'] == pytest.approx(0.5, abs=0.15)
  assert s['delta_sae']['fvu'] < 0.05
  assert s['delta_sae']['l0'] == pytest.approx(2.0, abs=1e-4)
  for name in ('base_sae', 'delta_sae'):  # mean density ρ̄ = L0 / m; histogram over alive features
    sae_summary = s[name]
    assert sae_summary['mean_density'] == pytest.approx(
      sae_summary['l0'] / sae_summary['num_features'], rel=1e-5
    )
    hist = sae_summary['log10_density_histogram']
    alive = round(sae_summary['num_features'] * (1 - sae_summary['dead_fraction']))
    assert sum(hist['counts']) == alive and len(hist['bin_edges']) == len(hist['counts']) + 1
  # The delta SAE explains Δh better than the base dictionary's reconstructions do.
  assert s['base_dictionary_delta_fvu'] > 5 * s['delta_sae']['fvu']
  # Summary numbers equal their definitions on the real tokens.
  ratio = (
    np.linalg.norm(planted['delta'], axis=1).mean()
    / np.linalg.norm(planted['h_base'], axis=1).mean()
  )
  assert s['delta_norm_ratio'] == pytest.approx(ratio, rel=1e-4)
  assert len(s['subspace']['angles_deg']) == s['subspace']['k'] == 8
  assert 0.0 <= s['code_cka'] <= 1.0
  top = s['top_features']
  assert len(top) == 5
  assert [t['frequency'] for t in top] == sorted([t['frequency'] for t in top], reverse=True)
  # Top tokens of a feature are real-token rows where that feature's atom was planted.
  params = planted['params']['delta']
  x_delta = planted['delta'] * np.sqrt(D) / np.linalg.norm(planted['delta'], axis=1).mean()
  for feature in top:
    i = feature['feature']
    f = np.asarray(
      S.encode(params, jnp.asarray(x_delta[feature['top_token_indices']], jnp.float32), 'topk', k=2)
    )[:, i]
    np.testing.assert_allclose(f, feature['top_token_values'], rtol=1e-3)
    f_all = np.asarray(S.encode(params, jnp.asarray(x_delta, jnp.float32), 'topk', k=2))[:, i]
    np.testing.assert_allclose(feature['top_token_values'], np.sort(f_all)[::-1][:6], rtol=1e-3)
    assert feature['frequency'] == pytest.approx(np.mean(f_all > 0), abs=1e-6)
    assert feature['novel'] == (abs(feature['cosine']) < 0.5)
