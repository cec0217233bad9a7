"""Label-free forgetting of a sentence encoder: how its embeddings of held-out text moved.

``e0 [n, d]`` are the base model's sentence embeddings of ``n`` texts, ``e1 [n, d]`` the
fine-tuned model's of the same texts (``train.classify.embed_texts``). Besides the activation
metrics of :mod:`peft_jax.geometry.activations` on these rows (linear CKA, Procrustes residual,
cosine-Gram distortion), :func:`similarity_rank_correlation` asks whether the fine-tuned model
still *orders* pairs of texts by similarity as the base did: the Spearman correlation of the
``n(n-1)/2`` pairwise cosine similarities before and after (1: the same ranking; the measure of
sentence-embedding benchmarks such as STS, with the base model's similarities as the gold
scores). :func:`similarity_spearman_replicates` recomputes that correlation on bootstrap
resamples of the texts, for intervals. docs/METRICS.md, "Sentence embeddings". Everything is jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from peft_jax.geometry.activations import EPS, gram_distortion, linear_cka, procrustes_residual

Array = jax.Array


def _ranks(x: Array) -> Array:
  """Ranks ``0..m-1`` of a vector, ties broken by position (cosines of distinct texts do not tie
  in float32 unless texts repeat)."""
  order = jnp.argsort(x)
  return jnp.zeros(x.shape, jnp.float32).at[order].set(jnp.arange(x.shape[0], dtype=jnp.float32))


def pairwise_cosines(e: Array) -> Array:
  """The ``n(n-1)/2`` cosine similarities of distinct rows (upper triangle, row-major)."""
  z = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), EPS)
  gram = z @ z.T
  rows, cols = jnp.triu_indices(e.shape[0], k=1)
  return gram[rows, cols]


def similarity_rank_correlation(e0: Array, e1: Array) -> Array:
  """Spearman correlation of the pairwise cosine similarities of ``e0`` and of ``e1``.

  .. math:: ρ = \\mathrm{corr}(\\mathrm{rank}(s^0), \\mathrm{rank}(s^1)),\\quad
     s^j_{ab} = \\cos(e^j_a, e^j_b),\\ a < b

  Args:
    e0: ``[n, d0]`` base embeddings (``n >= 3``).
    e1: ``[n, d1]`` fine-tuned embeddings of the same texts.
  Returns:
    scalar in ``[-1, 1]``.
  """
  if e0.shape[0] != e1.shape[0] or e0.shape[0] < 3:
    raise ValueError(
      f'similarity_rank_correlation: need the same n >= 3 rows, got {e0.shape}, {e1.shape}'
    )
  r0 = _ranks(pairwise_cosines(e0.astype(jnp.float32)))
  r1 = _ranks(pairwise_cosines(e1.astype(jnp.float32)))
  r0, r1 = r0 - jnp.mean(r0), r1 - jnp.mean(r1)
  return jnp.sum(r0 * r1) / (jnp.linalg.norm(r0) * jnp.linalg.norm(r1) + EPS)


def embedding_drift(e0: Array, e1: Array) -> dict[str, Array]:
  """``{'cka', 'procrustes', 'gram', 'similarity_spearman'}`` between base and fine-tuned
  embeddings of the same texts (linear CKA, Procrustes residual and cosine-Gram distortion from
  :mod:`peft_jax.geometry.activations`, and :func:`similarity_rank_correlation`)."""
  return {
    'cka': linear_cka(e0, e1),
    'procrustes': procrustes_residual(e0, e1),
    'gram': gram_distortion(e0, e1, max_tokens=e0.shape[0]),
    'similarity_spearman': similarity_rank_correlation(e0, e1),
  }


def _average_ranks(x: Array, valid: Array) -> Array:
  """Ranks ``0..k-1`` of the ``k`` valid entries of ``x``, ties sharing their average rank (the
  convention of ``scipy.stats.rankdata``); invalid entries rank after every valid one."""
  keyed = jnp.where(valid, x, jnp.inf)
  order = jnp.argsort(keyed)
  ordered = keyed[order]
  m = x.shape[0]
  starts = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
  group = jnp.cumsum(starts) - 1  # the tie group of each sorted position
  position = jnp.arange(m, dtype=jnp.float32)
  first = jax.ops.segment_min(position, group, num_segments=m)
  size = jax.ops.segment_sum(jnp.ones((m,), jnp.float32), group, num_segments=m)
  average = first[group] + (size[group] - 1.0) / 2.0
  return jnp.zeros((m,), jnp.float32).at[order].set(average)


def _resampled_spearman(g0: Array, g1: Array, index: Array) -> Array:
  """Spearman of the pairwise cosines over the pairs of distinct resampled texts."""
  rows, cols = jnp.triu_indices(index.shape[0], k=1)
  a, b = index[rows], index[cols]
  valid = a != b  # a text drawn twice is not a pair of texts
  r0 = _average_ranks(g0[a, b], valid)
  r1 = _average_ranks(g1[a, b], valid)
  w = valid.astype(jnp.float32)
  count = jnp.sum(w)
  r0 = (r0 - jnp.sum(w * r0) / count) * w
  r1 = (r1 - jnp.sum(w * r1) / count) * w
  return jnp.sum(r0 * r1) / (jnp.linalg.norm(r0) * jnp.linalg.norm(r1) + EPS)


def similarity_spearman_replicates(e0: Array, e1: Array, indices: Array) -> Array:
  """Bootstrap replicates of :func:`similarity_rank_correlation`.

  Replicate ``j`` draws the texts ``indices[j]`` (``n`` row indices, with replacement) and
  recomputes the rank correlation over the pairs of drawn positions ``p < q`` whose texts
  differ (``indices[j, p] != indices[j, q]``): a text paired with itself is no pair, and its
  cosine would be 1 in both models. Pairs that repeat (one text drawn twice, paired with a
  third) tie, and ties take their average rank, as in ``scipy.stats.spearmanr``. With
  ``indices[j] = arange(n)`` it equals :func:`similarity_rank_correlation` (up to its tie
  rule). (Linear CKA has no such replicates here: repeated rows bias it upwards, so its
  percentile interval need not even hold the point estimate.)

  Args:
    e0: ``[n, d0]`` base embeddings.
    e1: ``[n, d1]`` fine-tuned embeddings of the same texts.
    indices: ``[B, n]`` int row indices, one resample per row.
  Returns:
    ``[B]`` float32.
  """
  if e0.shape[0] != e1.shape[0] or indices.ndim != 2:
    raise ValueError(
      'similarity_spearman_replicates: need e0, e1 with the same rows and indices [B, n]; '
      f'got {e0.shape}, {e1.shape}, {indices.shape}'
    )
  return _spearman_replicates(e0, e1, indices)


@jax.jit
def _spearman_replicates(e0: Array, e1: Array, indices: Array) -> Array:
  e0, e1 = e0.astype(jnp.float32), e1.astype(jnp.float32)
  z0 = e0 / jnp.maximum(jnp.linalg.norm(e0, axis=-1, keepdims=True), EPS)
  z1 = e1 / jnp.maximum(jnp.linalg.norm(e1, axis=-1, keepdims=True), EPS)
  g0, g1 = z0 @ z0.T, z1 @ z1.T
  return jax.vmap(lambda index: _resampled_spearman(g0, g1, index))(indices)
