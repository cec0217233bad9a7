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
  """SciPy's Spearman (average ranks for ties) over the pairs of drawn positions whose texts
  differ, cosines in float64."""
  z0 = e0 / np.linalg.norm(e0, axis=1, keepdims=True)
  z1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
  s0, s1 = [], []
  for p in range(len(index)):
    for q in range(p + 1, len(index)):
      if index[p] != index[q]:
        s0.append(z0[index[p]] @ z0[index[q]])
        s1.append(z1[index[p]] @ z1[index[q]])
  return stats.spearmanr(s0, s1).statistic


def test_similarity_spearman_replicates_match_scipy():
  rng = np.random.default_rng(2)
  n = 14
  e0 = rng.normal(size=(n, 6))
  e1 = e0 + 0.8 * rng.normal(size=(n, 6))
  indices = rng.integers(0, n, size=(5, n))
  indices[0] = np.arange(n)  # the identity draw: the point estimate on all pairs
  ours = geometry.similarity_spearman_replicates(
    jnp.asarray(e0, jnp.float32), jnp.asarray(e1, jnp.float32), jnp.asarray(indices)
  )
  assert len(set(indices[1])) < n  # real resamples: repeated texts, hence tied pairs
  for j, index in enumerate(indices):
    # Ranks are exact unless two distinct cosines lie within float32 rounding (not here); tied
    # pairs are bit-identical (one Gram entry), so ties are found exactly.
    np.testing.assert_allclose(float(ours[j]), _reference_replicate(e0, e1, index), atol=1e-5)
