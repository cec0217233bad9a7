"""Label-free forgetting of a sentence encoder: how its embeddings of held-out text moved.

``e0 [n, d]`` are the base model's sentence embeddings of ``n`` texts, ``e1 [n, d]`` the
fine-tuned model's of the same texts (``train.classify.embed_texts``). Besides the activation
metrics of :mod:`peft_jax.geometry.activations` on these rows (linear CKA, Procrustes residual,
cosine-Gram distortion), :func:`similarity_rank_correlation` asks whether the fine-tuned model
still *orders* pairs of texts by similarity as the base did: the Spearman correlation of the
``n(n-1)/2`` pairwise cosine similarities before and after (1: the same ranking; the measure of
sentence-embedding benchmarks such as STS, with the base model's similarities as the gold
scores). docs/METRICS.md, "Sentence embeddings". Everything is jit-able.
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
