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
