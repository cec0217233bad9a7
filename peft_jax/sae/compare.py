"""Comparing an SAE trained on delta activations with the base model's feature dictionary.

docs/METRICS.md, "Dictionary comparison": adapter ("delta") SAEs are compared with the base dictionary through

* **decoder cosine similarity**: with unit decoder directions ``d̂_i`` (delta SAE, ``[m_Δ, d]``)
  and ``p̂_j`` (base SAE, ``[m_b, d]``), ``C_ij = <d̂_i, p̂_j>``; per delta feature the best match
  ``c_i = max_j |C_ij|`` (absolute value taken: a feature and its negation span the same
  direction), the mean max cosine similarity ``MMCS = mean_i c_i`` (Sharkey et al. 2022), the
  fraction of delta features with ``c_i ≥ τ`` for thresholds ``τ``, and the "novel" features with
  ``c_i < τ_novel``;
* **principal angles** between the top-``k`` decoder subspaces, ``cos θ = σ(Q_Δᵀ Q_b)``;
* **linear CKA** between SAE codes ``F_Δ: [n, m_Δ]`` and ``F_b: [n, m_b]`` on the same tokens;
* **feature density**: per feature the firing frequency ``ρ_i = (1/n) Σ_t 1[f_i(x_t) > 0]``, its
  mean activation, and its top-activating tokens.

Everything numeric is jit-able; token statistics stream over fixed-size chunks with ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.sae import sae as sae_lib

Array = jax.Array
_EPS = 1e-12


def _decoder(dictionary) -> Array:
  """Accepts SAE params (uses ``W_dec``) or a decoder matrix ``[m, d]``."""
  if isinstance(dictionary, dict):
    if 'W_dec' not in dictionary:
      raise ValueError(f"SAE params need 'W_dec'; got keys {sorted(dictionary)}.")
    dictionary = dictionary['W_dec']
  dictionary = jnp.asarray(dictionary)
  if dictionary.ndim != 2:
    raise ValueError(
      f'a dictionary is a decoder matrix [m, d] (one row per feature), got shape '
      f'{dictionary.shape}.'
    )
  return dictionary


@jax.jit
def decoder_cosine(dec_a: Array, dec_b: Array) -> Array:
  """Cosine similarities ``C_ij = <a_i, b_j> / (||a_i|| ||b_j||)``.

  Args:
    dec_a: ``[m_a, d]`` decoder rows; dec_b: ``[m_b, d]``.

  Returns:
    ``C: [m_a, m_b]``.
  """
  if dec_a.ndim != 2 or dec_b.ndim != 2 or dec_a.shape[1] != dec_b.shape[1]:
    raise ValueError(
      f'decoders must be [m_a, d] and [m_b, d] with the same d, got {dec_a.shape} '
      f'and {dec_b.shape}.'
    )
  a = dec_a / jnp.maximum(jnp.linalg.norm(dec_a, axis=-1, keepdims=True), _EPS)
  b = dec_b / jnp.maximum(jnp.linalg.norm(dec_b, axis=-1, keepdims=True), _EPS)
  return a @ b.T


class DictionaryComparison(NamedTuple):
  """Delta-vs-base decoder comparison (:func:`compare_dictionaries`)."""

  cosine: Array  # [m_delta, m_base] signed cosine similarities
  best_match: Array  # [m_delta] int32, argmax_j |C_ij|
  max_abs_cosine: Array  # [m_delta] c_i = max_j |C_ij|
  mmcs: Array  # () mean of c_i over the counted (alive) delta features
  thresholds: Array  # [t] the thresholds τ
  match_fractions: Array  # [t] fraction of counted delta features with c_i >= τ
  novel: Array  # [m_delta] bool, counted and c_i < novel_threshold
  novel_fraction: Array  # () fraction of counted delta features that are novel


@functools.partial(jax.jit, static_argnames=('thresholds', 'novel_threshold'))
def _compare(dec_delta, dec_base, alive, *, thresholds, novel_threshold):
  cosine = decoder_cosine(dec_delta, dec_base)
  abs_cos = jnp.abs(cosine)
  best = jnp.argmax(abs_cos, axis=1).astype(jnp.int32)
  max_abs = jnp.max(abs_cos, axis=1)
  weights = alive.astype(max_abs.dtype)
  count = jnp.maximum(jnp.sum(weights), 1.0)
  taus = jnp.asarray(thresholds, max_abs.dtype)
  fractions = jnp.sum((max_abs[None, :] >= taus[:, None]) * weights, axis=1) / count
  novel = alive & (max_abs < novel_threshold)
  return DictionaryComparison(
    cosine=cosine,
    best_match=best,
    max_abs_cosine=max_abs,
    mmcs=jnp.sum(max_abs * weights) / count,
    thresholds=taus,
    match_fractions=fractions,
    novel=novel,
    novel_fraction=jnp.sum(novel) / count,
  )


def compare_dictionaries(
  delta_dictionary,
  base_dictionary,
  *,
  thresholds: Sequence[float] = (0.5, 0.7, 0.9),
  novel_threshold: float = 0.5,
  alive: Optional[Array] = None,
) -> DictionaryComparison:
  """Matches every delta feature to its closest base feature by decoder direction.

  Args:
    delta_dictionary: delta-SAE params or its decoder ``[m_Δ, d]``.
    base_dictionary: base-SAE params or its decoder ``[m_b, d]``.
    thresholds: cosine thresholds ``τ`` for the match fractions (each in [0, 1]).
    novel_threshold: a delta feature with ``c_i < novel_threshold`` is "novel".
    alive: optional ``[m_Δ]`` bool mask of the delta features to count (e.g. those that fire); dead
      features keep their random init directions and would count as spuriously novel.

  Returns:
    :class:`DictionaryComparison`.
  """
  dec_delta = _decoder(delta_dictionary)
  dec_base = _decoder(base_dictionary)
  if dec_delta.shape[1] != dec_base.shape[1]:
    raise ValueError(
      f'delta and base dictionaries live in different spaces: [m, d] shapes '
      f'{dec_delta.shape} and {dec_base.shape}.'
    )
  thresholds = tuple(float(t) for t in thresholds)
  if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
    raise ValueError(f'thresholds must be a non-empty sequence in [0, 1], got {thresholds}.')
  if not 0.0 <= novel_threshold <= 1.0:
    raise ValueError(f'novel_threshold must be in [0, 1], got {novel_threshold}.')
  if alive is None:
    alive = jnp.ones((dec_delta.shape[0],), bool)
  alive = jnp.asarray(alive, bool)
  if alive.shape != (dec_delta.shape[0],):
    raise ValueError(f'alive must be [m_delta]=({dec_delta.shape[0]},), got {alive.shape}.')
  return _compare(
    dec_delta, dec_base, alive, thresholds=thresholds, novel_threshold=float(novel_threshold)
  )


@functools.partial(jax.jit, static_argnames=('k',))
def decoder_subspace_angles(dec_a: Array, dec_b: Array, k: int) -> Array:
  """Principal angles (radians, ascending) between the top-``k`` subspaces of two decoders.

  ``Q_a: [d, k]`` holds the top-``k`` right singular vectors of ``dec_a: [m_a, d]`` (the dominant
  span of its rows), likewise ``Q_b``; ``cos θ_i = σ_i(Q_aᵀ Q_b)`` (Björck-Golub).

  Returns:
    ``θ: [k]`` in ``[0, π/2]``.
  """
  d = dec_a.shape[1]
  if dec_b.shape[1] != d or not 1 <= k <= min(d, dec_a.shape[0], dec_b.shape[0]):
    raise ValueError(
      f'need decoders [m_a, d], [m_b, d] with the same d and 1 <= k <= min(d, m_a, '
      f'm_b); got {dec_a.shape}, {dec_b.shape}, k={k}.'
    )
  q_a = jnp.linalg.svd(dec_a, full_matrices=False)[2][:k].T
  q_b = jnp.linalg.svd(dec_b, full_matrices=False)[2][:k].T
  cosines = jnp.linalg.svd(q_a.T @ q_b, compute_uv=False)
  return jnp.arccos(jnp.clip(cosines, -1.0, 1.0))


@jax.jit
def feature_cka(codes_a: Array, codes_b: Array) -> Array:
  """Biased linear CKA between code matrices ``[n, m_a]`` and ``[n, m_b]`` on the same tokens.

  .. math:: \\mathrm{CKA} = \\frac{\\lVert \\bar F_b^\\top \\bar F_a \\rVert_F^2}
     {\\lVert \\bar F_a^\\top \\bar F_a \\rVert_F \\, \\lVert \\bar F_b^\\top \\bar F_b \\rVert_F}

  with column-centred ``F̄`` (Kornblith et al. 2019).
  """
  if codes_a.ndim != 2 or codes_b.ndim != 2 or codes_a.shape[0] != codes_b.shape[0]:
    raise ValueError(
      f'codes must be [n, m_a] and [n, m_b] on the same n tokens, got '
      f'{codes_a.shape} and {codes_b.shape}.'
    )
  a = codes_a - jnp.mean(codes_a, axis=0)
  b = codes_b - jnp.mean(codes_b, axis=0)
  cross = jnp.sum((b.T @ a) ** 2)
  return cross / jnp.maximum(jnp.linalg.norm(a.T @ a) * jnp.linalg.norm(b.T @ b), _EPS)


class FeatureStats(NamedTuple):
  """Per-feature activation statistics over ``n`` tokens (:func:`feature_statistics`)."""

  frequency: Array  # [m] ρ_i = fraction of tokens with f_i > 0
  mean_activation: Array  # [m] (1/n) Σ_t f_i(x_t)
  mean_when_active: Array  # [m] Σ_t f_i / #{t: f_i > 0} (0 if never active)
  top_values: Array  # [m, top_n] largest activations, descending
  top_indices: Array  # [m, top_n] int32 token rows of x giving them


@functools.partial(jax.jit, static_argnames=('activation', 'k', 'chunk_size', 'top_n'))
def _feature_statistics(params, x_chunks, valid, *, activation, k, chunk_size, top_n):
  m = params['W_dec'].shape[0]
  dtype = params['W_dec'].dtype

  def body(carry, inputs):
    count, total, top_vals, top_idx = carry
    chunk, chunk_valid, offset = inputs
    f = sae_lib.encode(params, chunk, activation, k=k) * chunk_valid[:, None]
    count = count + jnp.sum(f > 0, axis=0)
    total = total + jnp.sum(f, axis=0)
    masked = jnp.where(chunk_valid[None, :], f.T, -jnp.inf)  # [m, chunk]
    token_idx = offset + jnp.arange(chunk_size, dtype=jnp.int32)
    all_vals = jnp.concatenate([top_vals, masked], axis=1)
    all_idx = jnp.concatenate([top_idx, jnp.broadcast_to(token_idx, (m, chunk_size))], axis=1)
    top_vals, pos = jax.lax.top_k(all_vals, top_n)
    top_idx = jnp.take_along_axis(all_idx, pos, axis=1)
    return (count, total, top_vals, top_idx), None

  num_chunks = x_chunks.shape[0]
  offsets = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
  init = (
    jnp.zeros((m,), jnp.int32),
    jnp.zeros((m,), dtype),
    jnp.full((m, top_n), -jnp.inf, dtype),
    jnp.zeros((m, top_n), jnp.int32),
  )
  (count, total, top_vals, top_idx), _ = jax.lax.scan(body, init, (x_chunks, valid, offsets))
  n = jnp.sum(valid)
  return FeatureStats(
    frequency=count / n,
    mean_activation=total / n,
    mean_when_active=jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0),
    top_values=top_vals,
    top_indices=top_idx,
  )


def feature_statistics(
  params: sae_lib.SAEParams,
  x: Array,
  activation: str = 'relu',
  *,
  k: Optional[int] = None,
  top_n: int = 8,
  chunk_size: int = 1024,
) -> FeatureStats:
  """Firing frequency, mean activation and top-activating tokens of every SAE feature.

  Tokens stream through :func:`~peft_jax.sae.sae.encode` in chunks of ``chunk_size`` under one
  jitted ``lax.scan`` (the last chunk is zero-padded and masked), so memory is
  ``O(chunk_size · m)`` whatever ``n`` is.

  Args:
    params: SAE params.
    x: ``[n, d]`` activations (leading dims flattened; row ``t`` is token index ``t``).
    activation, k: the SAE's encoder (as in :func:`~peft_jax.sae.sae.encode`).
    top_n: top-activating tokens kept per feature (``<= n``).
    chunk_size: tokens per scan step.

  Returns:
    :class:`FeatureStats`. Ties among top tokens (e.g. several zeros) are broken by lower index.
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f'x must be [n, d] token rows, got shape {x.shape}.')
  x = x.reshape(-1, x.shape[-1])
  n = x.shape[0]
  if not 1 <= top_n <= n:
    raise ValueError(f'top_n must be in [1, n={n}], got {top_n}.')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}.')
  chunk_size = min(int(chunk_size), n)
  num_chunks = -(-n // chunk_size)
  pad = num_chunks * chunk_size - n
  dtype = params['W_dec'].dtype
  x_chunks = jnp.pad(x.astype(dtype), ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, -1)
  valid = jnp.asarray(np.arange(num_chunks * chunk_size) < n).reshape(num_chunks, chunk_size)
  return _feature_statistics(
    params, x_chunks, valid, activation=activation, k=k, chunk_size=chunk_size, top_n=int(top_n)
  )
