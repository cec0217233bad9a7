"""Sentence-embedding drift: the similarity rank correlation against SciPy's Spearman, and the
invariances its definition implies."""

import jax.numpy as jnp
import numpy as np
from scipy import stats

from peft_jax import geometry


def test_similarity_rank_correlation_matches_scipy():
  rng = np.random.default_rng(0)
  e0 = rng.normal(size=(20, 8))
  e1 = e0 + 0.7 * rng.normal(size=(20, 8))
  z0 = e0 / np.linalg.norm(e0, axis=1, keepdims=True)
  z1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
  iu = np.triu_indices(20, k=1)
  expected = stats.spearmanr((z0 @ z0.T)[iu], (z1 @ z1.T)[iu]).statistic
  ours = geometry.similarity_rank_correlation(
    jnp.asarray(e0, jnp.float32), jnp.asarray(e1, jnp.float32)
  )
  # float32 cosines: a rank swap needs two similarities within ~1e-7 of each other.
  np.testing.assert_allclose(float(ours), expected, atol=1e-6)
  assert 0.2 < expected < 0.95  # a real, partial change


def test_embedding_drift_invariances():
  rng = np.random.default_rng(1)
  e0 = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  rotated = e0 @ jnp.asarray(q, jnp.float32) * 3.0  # cosines unchanged, CKA unchanged
  drift = geometry.embedding_drift(e0, rotated)
  np.testing.assert_allclose(float(drift['similarity_spearman']), 1.0, atol=1e-6)
  np.testing.assert_allclose(float(drift['cka']), 1.0, atol=1e-5)
  np.testing.assert_allclose(float(drift['gram']), 0.0, atol=1e-5)
  shuffled = geometry.embedding_drift(e0, e0[::-1])
  assert float(shuffled['similarity_spearman']) < 0.5 and float(shuffled['procrustes']) > 0.5


def _reference_replicate(e0, e1, index):
  """float64 from the definitions: CKA of the drawn rows; SciPy's Spearman over the pairs of
  drawn positions whose texts differ."""
  x0, x1 = e0[index], e1[index]
  a, b = x0 - x0.mean(0), x1 - x1.mean(0)
  cka = np.sum((a.T @ b) ** 2) / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
  z0 = e0 / np.linalg.norm(e0, axis=1, keepdims=True)
  z1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
  s0, s1 = [], []
  for p in range(len(index)):
    for q in range(p + 1, len(index)):
      if index[p] != index[q]:
        s0.append(z0[index[p]] @ z0[index[q]])
        s1.append(z1[index[p]] @ z1[index[q]])
  return cka, stats.spearmanr(s0, s1).statistic


def test_drift_replicates_match_definitions():
  rng = np.random.default_rng(2)
  n = 14
  e0 = rng.normal(size=(n, 6))
  e1 = e0 + 0.8 * rng.normal(size=(n, 6))
  indices = rng.integers(0, n, size=(5, n))
  indices[0] = np.arange(n)  # the identity draw: the point estimates on all pairs
  ours = geometry.drift_replicates(
    jnp.asarray(e0, jnp.float32), jnp.asarray(e1, jnp.float32), jnp.asarray(indices)
  )
  assert len(set(indices[1])) < n  # real resamples: repeated texts, hence tied pairs
  for j, index in enumerate(indices):
    cka, rho = _reference_replicate(e0, e1, index)
    # float32 kernels of O(1) entries: relative error ~1e-6; ranks are exact unless two
    # distinct cosines lie within float32 rounding (they do not here).
    np.testing.assert_allclose(float(ours['cka'][j]), cka, rtol=1e-5)
    np.testing.assert_allclose(float(ours['similarity_spearman'][j]), rho, atol=1e-5)
