"""The delta-SAE study (docs/METRICS.md, "The delta-SAE study") as one function with a JSON-ready summary.

Given base and adapted activations on the same tokens, :func:`delta_sae_study`

1. gathers the real tokens, ``h_b, h_a: [n, d]``, and the residual delta ``Δh = h_a - h_b``;
2. normalises them (an isotropic map, so decoder directions and FVUs are unchanged): the base
   statistics map both ``h_b`` and ``h_a`` into the base SAE's space, ``Δh`` gets its own;
3. trains the **base dictionary** (an SAE on ``h_b``) and the **delta SAE** (on ``Δh``);
4. reports each SAE's reconstruction (FVU, MSE, L0, feature density and its log10 histogram, dead
   fraction), how well the base dictionary explains the delta (``SAE_b(h_a) - SAE_b(h_b)`` against
   ``Δh``), the decoder matching (MMCS, match fractions at thresholds, novelty fraction), principal angles between the
   dominant decoder subspaces, the CKA between the delta SAE's codes and the base SAE's code
   change, and the most frequent delta features with their best base match and top tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.sae import compare
from peft_jax.sae import delta as delta_lib
from peft_jax.sae import sae as sae_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DeltaStudyConfig:
  """Configuration of :func:`delta_sae_study`.

  Attributes:
    base_sae: SAE trained on base activations (the base model's feature dictionary).
    delta_sae: SAE trained on delta activations.
    key_name: capture key (e.g. ``'layers_3/residual'``) when capture dicts are passed.
    normalize: :func:`~peft_jax.sae.delta.normalize_activations` method for both SAEs' data.
    thresholds: cosine thresholds for the match fractions.
    novel_threshold: a delta feature whose best ``|cos|`` is below this is novel.
    subspace_k: dimension of the dominant decoder subspaces compared by principal angles (clipped
      to ``min(d, m_Δ, m_b)``).
    num_top_features: delta features listed in the summary (most frequent first).
    top_tokens: top-activating token indices listed per feature.
    cka_tokens: tokens (evenly spaced) used for the code CKA.
    chunk_size: tokens per scan step in the statistics.
  """

  base_sae: sae_lib.SAEConfig
  delta_sae: sae_lib.SAEConfig
  key_name: Optional[str] = None
  normalize: str = 'unit_mean_norm'
  thresholds: Sequence[float] = (0.5, 0.7, 0.9)
  novel_threshold: float = 0.5
  subspace_k: int = 8
  num_top_features: int = 10
  top_tokens: int = 8
  cka_tokens: int = 2048
  chunk_size: int = 1024

  def __post_init__(self):
    for name in ('base_sae', 'delta_sae'):
      if not isinstance(getattr(self, name), sae_lib.SAEConfig):
        raise TypeError(
          f'DeltaStudyConfig.{name} must be an SAEConfig, got {type(getattr(self, name)).__name__}.'
        )
    if self.normalize not in delta_lib.NORMALIZATIONS:
      raise ValueError(
        f'DeltaStudyConfig.normalize={self.normalize!r}; valid: {delta_lib.NORMALIZATIONS}.'
      )
    object.__setattr__(self, 'thresholds', tuple(float(t) for t in self.thresholds))
    for name in ('subspace_k', 'num_top_features', 'top_tokens', 'cka_tokens', 'chunk_size'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'DeltaStudyConfig.{name} must be >= 1, got {getattr(self, name)}.')


def _chunks(x: Array, chunk_size: int):
  n = x.shape[0]
  chunk_size = min(chunk_size, n)
  num_chunks = -(-n // chunk_size)
  pad = num_chunks * chunk_size - n
  chunks = jnp.pad(x, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, x.shape[-1])
  valid = jnp.asarray(np.arange(num_chunks * chunk_size) < n).reshape(num_chunks, chunk_size)
  return chunks, valid


@functools.partial(jax.jit, static_argnames=('activation', 'k'))
def _reconstruction_sse(params, x_chunks, valid, *, activation, k):
  """``Σ_t ||x_t - x̂_t||²`` and ``Σ_t ||f_t||₀`` over the valid tokens."""

  def body(carry, inputs):
    sse, l0 = carry
    chunk, chunk_valid = inputs
    f = sae_lib.encode(params, chunk, activation, k=k)
    residual = chunk - sae_lib.decode(params, f)
    sse = sse + jnp.sum(jnp.sum(residual**2, axis=-1) * chunk_valid)
    l0 = l0 + jnp.sum(jnp.sum(f > 0, axis=-1) * chunk_valid)
    return (sse, l0), None

  (sse, l0), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), (x_chunks, valid))
  return sse, l0


@functools.partial(jax.jit, static_argnames=('activation', 'k'))
def _delta_through_sae_sse(params, xa_chunks, xb_chunks, valid, *, activation, k):
  """``Σ_t ||(x̂_a - x̂_b) - (x_a - x_b)||²``: the delta as the SAE's reconstructions see it."""

  def body(sse, inputs):
    xa, xb, chunk_valid = inputs
    recon = lambda x: sae_lib.decode(params, sae_lib.encode(params, x, activation, k=k))
    residual = (recon(xa) - recon(xb)) - (xa - xb)
    return sse + jnp.sum(jnp.sum(residual**2, axis=-1) * chunk_valid), None

  sse, _ = jax.lax.scan(body, jnp.zeros(()), (xa_chunks, xb_chunks, valid))
  return sse


def _total_variance(x: Array) -> Array:
  return jnp.sum((x - jnp.mean(x, axis=0)) ** 2)


def _density_histogram(frequency: np.ndarray) -> dict[str, list]:
  """Histogram of ``log10 ρ_i`` over the features that fire (Anthropic's feature-density plot)."""
  alive = frequency[frequency > 0]
  edges = np.linspace(-6.0, 0.0, 13)
  counts, _ = np.histogram(np.clip(np.log10(alive), -6.0, 0.0), bins=edges)
  return {'bin_edges': [float(e) for e in edges], 'counts': [int(c) for c in counts]}


def _sae_summary(
  params, x, config: sae_lib.SAEConfig, stats: compare.FeatureStats, chunk_size: int, history: dict
) -> dict[str, Any]:
  chunks, valid = _chunks(x, chunk_size)
  sse, l0 = _reconstruction_sse(params, chunks, valid, activation=config.activation, k=config.k)
  n = x.shape[0]
  frequency = np.asarray(stats.frequency)
  return {
    'activation': config.activation,
    'num_features': config.num_features,
    'fvu': float(sse / jnp.maximum(_total_variance(x), 1e-12)),
    'mse': float(sse / n),
    'l0': float(l0 / n),
    'mean_density': float(frequency.mean()),
    'dead_fraction': float(np.mean(frequency == 0)),
    'log10_density_histogram': _density_histogram(frequency),
    'final_train_fvu': history['fvu'][-1],
    'history': history,
  }


def _code_cka(params_delta, params_base, x_delta, xa, xb, config: DeltaStudyConfig) -> float:
  n = x_delta.shape[0]
  idx = jnp.asarray(np.unique(np.linspace(0, n - 1, min(n, config.cka_tokens)).astype(np.int64)))
  kw_delta, kw_base = config.delta_sae.encoder_kwargs, config.base_sae.encoder_kwargs
  codes_delta = sae_lib.encode(params_delta, x_delta[idx], **kw_delta)
  codes_base_change = sae_lib.encode(params_base, xa[idx], **kw_base) - sae_lib.encode(
    params_base, xb[idx], **kw_base
  )
  return float(compare.feature_cka(codes_delta, codes_base_change))


def delta_sae_study(
  base_acts,
  adapted_acts,
  mask: Optional[Array],
  config: DeltaStudyConfig,
  key: Array,
  *,
  return_params: bool = False,
):
  """Trains the base dictionary and the delta SAE and compares them.

  Args:
    base_acts: base-model activations ``[..., d]`` or a capture dict (with ``config.key_name``).
    adapted_acts: adapted-model activations on the same tokens, same structure.
    mask: token mask with the activations' token shape (1 = real token), or None.
    config: :class:`DeltaStudyConfig`.
    key: PRNG key.
    return_params: also return ``{'base': params, 'delta': params}``.

  Returns:
    A JSON-serialisable dict (floats, ints, lists, strings) with keys ``'num_tokens'``, ``'d'``,
    ``'delta_norm_ratio'`` (mean ``||Δh||`` / mean ``||h_b||``), ``'base_sae'`` and ``'delta_sae'``
    (reconstruction summaries with training history), ``'base_dictionary_delta_fvu'`` (FVU of
    ``SAE_b(h_a) - SAE_b(h_b)`` against ``Δh``), ``'matching'`` (``mmcs``, ``thresholds``,
    ``match_fractions``, ``novel_threshold``, ``novel_fraction``, ``alive_delta_features``),
    ``'subspace'`` (``k``, ``angles_deg``, ``mean_angle_deg``, ``rms_sin``), ``'code_cka'`` and
    ``'top_features'`` (list of dicts). With ``return_params``, ``(summary, params)``.
  """
  if not isinstance(config, DeltaStudyConfig):
    raise TypeError(f'config must be a DeltaStudyConfig, got {type(config).__name__}.')
  # --- Tokens and normalisation. ---
  h_base = delta_lib.collect_activations(base_acts, mask, config.key_name)
  h_adapted = delta_lib.collect_activations(adapted_acts, mask, config.key_name)
  if h_base.shape != h_adapted.shape:
    raise ValueError(
      f'base and adapted activations differ in shape: {h_base.shape} vs {h_adapted.shape}.'
    )
  n, d = h_base.shape
  delta = h_adapted - h_base
  if not bool(jnp.any(delta != 0)):
    raise ValueError('adapted and base activations are identical: the delta is zero.')
  x_base, base_norm = delta_lib.normalize_activations(h_base, config.normalize)
  x_adapted = (h_adapted - base_norm.mean) * base_norm.scale
  x_delta, _ = delta_lib.normalize_activations(delta, config.normalize)

  # --- The two SAEs. ---
  base_key, delta_key = jax.random.split(key)
  params_base, history_base = sae_lib.train_sae(x_base, config.base_sae, base_key)
  params_delta, history_delta = sae_lib.train_sae(x_delta, config.delta_sae, delta_key)

  # --- Statistics. ---
  top_tokens = min(config.top_tokens, n)
  stats_base = compare.feature_statistics(
    params_base,
    x_base,
    config.base_sae.activation,
    k=config.base_sae.k,
    top_n=top_tokens,
    chunk_size=config.chunk_size,
  )
  stats_delta = compare.feature_statistics(
    params_delta,
    x_delta,
    config.delta_sae.activation,
    k=config.delta_sae.k,
    top_n=top_tokens,
    chunk_size=config.chunk_size,
  )
  base_summary = _sae_summary(
    params_base, x_base, config.base_sae, stats_base, config.chunk_size, history_base
  )
  delta_summary = _sae_summary(
    params_delta, x_delta, config.delta_sae, stats_delta, config.chunk_size, history_delta
  )
  xa_chunks, valid = _chunks(x_adapted, config.chunk_size)
  xb_chunks, _ = _chunks(x_base, config.chunk_size)
  through_base = _delta_through_sae_sse(
    params_base,
    xa_chunks,
    xb_chunks,
    valid,
    activation=config.base_sae.activation,
    k=config.base_sae.k,
  )
  base_delta_fvu = float(through_base / jnp.maximum(_total_variance(x_adapted - x_base), 1e-12))

  # --- Dictionary comparison. ---
  alive = stats_delta.frequency > 0
  comparison = compare.compare_dictionaries(
    params_delta,
    params_base,
    thresholds=config.thresholds,
    novel_threshold=config.novel_threshold,
    alive=alive,
  )
  k_sub = min(config.subspace_k, d, config.delta_sae.num_features, config.base_sae.num_features)
  angles = np.asarray(
    compare.decoder_subspace_angles(params_delta['W_dec'], params_base['W_dec'], k_sub)
  )
  code_cka = _code_cka(params_delta, params_base, x_delta, x_adapted, x_base, config)

  # --- Top delta features. ---
  frequency = np.asarray(stats_delta.frequency)
  order = np.argsort(-frequency, kind='stable')[: config.num_top_features]
  best = np.asarray(comparison.best_match)
  cosine = np.asarray(comparison.cosine)
  top_features = []
  for i in order:
    if frequency[i] == 0:
      break
    fires = np.asarray(stats_delta.top_values[i]) > 0
    top_features.append(
      {
        'feature': int(i),
        'frequency': float(frequency[i]),
        'mean_activation': float(stats_delta.mean_activation[i]),
        'mean_when_active': float(stats_delta.mean_when_active[i]),
        'best_base_feature': int(best[i]),
        'cosine': float(cosine[i, best[i]]),
        'novel': bool(comparison.novel[i]),
        'top_token_indices': [int(t) for t in np.asarray(stats_delta.top_indices[i])[fires]],
        'top_token_values': [float(v) for v in np.asarray(stats_delta.top_values[i])[fires]],
      }
    )

  summary = {
    'num_tokens': int(n),
    'd': int(d),
    'normalize': config.normalize,
    'delta_norm_ratio': float(
      jnp.mean(jnp.linalg.norm(delta, axis=-1))
      / jnp.maximum(jnp.mean(jnp.linalg.norm(h_base, axis=-1)), 1e-12)
    ),
    'base_sae': base_summary,
    'delta_sae': delta_summary,
    'base_dictionary_delta_fvu': base_delta_fvu,
    'matching': {
      'mmcs': float(comparison.mmcs),
      'thresholds': list(config.thresholds),
      'match_fractions': [float(v) for v in np.asarray(comparison.match_fractions)],
      'novel_threshold': float(config.novel_threshold),
      'novel_fraction': float(comparison.novel_fraction),
      'alive_delta_features': int(np.sum(frequency > 0)),
    },
    'subspace': {
      'k': int(k_sub),
      'angles_deg': [float(a) for a in np.degrees(angles)],
      'mean_angle_deg': float(np.degrees(angles).mean()),
      'rms_sin': float(np.sqrt(np.mean(np.sin(angles) ** 2))),
    },
    'code_cka': code_cka,
    'top_features': top_features,
  }
  if return_params:
    return summary, {'base': params_base, 'delta': params_delta}
  return summary
