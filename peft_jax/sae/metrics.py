"""Per-SAE metrics and code CKA streamed over stored activations, with block-bootstrap intervals.

docs/SAE.md, "Metrics". On the evaluation rows ``x_t`` (normalised as the SAE saw them) with
reconstructions ``x̂_t`` and codes ``f_t``:

* ``mse = (1/n) Σ_t ||x_t - x̂_t||²`` (summed over dimensions, per token);
* ``fvu = Σ_t ||x_t - x̂_t||² / Σ_t ||x_t - x̄||²``;
* ``l0 = (1/n) Σ_t #{i: f_ti > 0}``;
* per feature the firing frequency ``ρ_i = (1/n) #{t: f_ti > 0}``; **dead** features never fire
  on the evaluation rows (``ρ_i = 0``), **dense** ones fire on more than ``dense_threshold`` of
  them; the density distribution is the histogram and quantiles of ``log10 ρ_i`` over firing
  features;
* code CKA between two SAEs' codes on the same rows (linear, biased; Kornblith et al. 2019).

Rows stream through one jitted program in fixed-size blocks (the last one masked), so memory
is one block whatever ``n`` is. Each block's sums are kept, and intervals resample blocks with
replacement (a block bootstrap: consecutive rows come from the same sequences, so resampling
tokens one by one would understate the spread). ``n`` in the output counts tokens and blocks.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from peft_jax.sae import sae as sae_lib
from peft_jax.sae import store as store_lib

_EPS = 1e-12


@functools.partial(jax.jit, static_argnames=('activation', 'k', 'bandwidth'))
def _block_stats(params, x, valid, *, activation, k, bandwidth):
  f = sae_lib.encode(params, x, activation, k=k, bandwidth=bandwidth)
  residual = x - sae_lib.decode(params, f)
  w = valid.astype(jnp.float32)
  fired = (f > 0) & valid[:, None]
  return {
    'sse': jnp.sum(jnp.sum(residual**2, axis=-1) * w),
    'sum': jnp.sum(x * w[:, None], axis=0),
    'sum_sq': jnp.sum(jnp.sum(x**2, axis=-1) * w),
    'l0': jnp.sum(fired),
    'count': jnp.sum(fired, axis=0),
    'n': jnp.sum(w),
  }


def _padded_blocks(stores, start, stop, block_rows, mean, scale):
  for _, blocks in store_lib.aligned_blocks(stores, start, stop, block_rows):
    k = blocks[0].shape[0]
    valid = np.arange(block_rows) < k
    out = []
    for block, m, s in zip(blocks, mean, scale):
      x = (np.asarray(block, np.float32) - np.asarray(m, np.float32)) * np.float32(s)
      out.append(np.pad(x, ((0, block_rows - k), (0, 0))))
    yield out, valid


def _interval(samples: np.ndarray, level: float) -> list[float]:
  samples = samples[np.isfinite(samples)]
  if samples.size == 0:
    return [float('nan'), float('nan')]
  lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
  return [float(lo), float(hi)]


def _bootstrap_weights(num_blocks: int, num_resamples: int, seed: int) -> np.ndarray:
  """``[R, blocks]`` multiplicities of blocks drawn with replacement."""
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, num_blocks, size=(num_resamples, num_blocks))
  weights = np.zeros((num_resamples, num_blocks))
  np.add.at(weights, (np.arange(num_resamples)[:, None], draws), 1.0)
  return weights


def density_summary(frequency: np.ndarray, dense_threshold: float) -> dict:
  """Dead / dense fractions and the ``log10 ρ`` distribution of the firing features."""
  frequency = np.asarray(frequency, np.float64)
  alive = frequency[frequency > 0]
  edges = np.linspace(-6.0, 0.0, 13)
  counts = np.histogram(np.clip(np.log10(alive), -6.0, 0.0), bins=edges)[0] if alive.size else []
  quantiles = [0.1, 0.25, 0.5, 0.75, 0.9]
  values = np.quantile(np.log10(alive), quantiles) if alive.size else [float('nan')] * 5
  usage = frequency / max(frequency.sum(), _EPS)
  nz = usage[usage > 0]
  return {
    'num_features': int(frequency.size),
    'alive_features': int(alive.size),
    'dead_fraction': float(np.mean(frequency == 0)),
    'dense_threshold': float(dense_threshold),
    'dense_fraction': float(np.mean(frequency > dense_threshold)),
    'mean_density': float(frequency.mean()),
    'log10_density_quantiles': {'q': quantiles, 'value': [float(v) for v in values]},
    'log10_density_histogram': {
      'bin_edges': [float(e) for e in edges],
      'counts': [int(c) for c in counts] if alive.size else [0] * 12,
    },
    # exp(entropy) of the usage distribution p_i = ρ_i / Σ ρ: how many features share the firing.
    'effective_features': float(np.exp(-np.sum(nz * np.log(nz)))) if nz.size else 0.0,
  }


def sae_metrics(
  params: dict,
  config: sae_lib.SAEConfig,
  store: store_lib.ActivationStore,
  start: int,
  stop: int,
  *,
  mean: Optional[np.ndarray] = None,
  scale: float = 1.0,
  block_rows: int = 256,
  dense_threshold: float = 0.1,
  num_resamples: int = 1000,
  level: float = 0.95,
  seed: int = 0,
) -> tuple[dict, np.ndarray]:
  """Reconstruction and density metrics of one SAE on rows ``[start, stop)`` of ``store``.

  Returns:
    ``(summary, frequency [m])``: the summary holds ``n_tokens``, ``n_blocks``, ``mse``,
    ``fvu``, ``l0`` (each ``{'value', 'interval'}``, block bootstrap at ``level``) and
    :func:`density_summary`'s keys.
  """
  if stop - start < 1:
    raise ValueError(f'{store.directory}: no evaluation rows in [{start}, {stop})')
  mean = np.zeros(store.d) if mean is None else np.asarray(mean)
  params = jax.tree.map(jnp.asarray, params)
  rows = []
  for (x,), valid in _padded_blocks([store], start, stop, block_rows, [mean], [scale]):
    out = _block_stats(
      params,
      jnp.asarray(x),
      jnp.asarray(valid),
      activation=config.activation,
      k=config.k,
      bandwidth=config.bandwidth,
    )
    rows.append(jax.device_get(out))
  stats = {key: np.stack([np.asarray(r[key], np.float64) for r in rows]) for key in rows[0]}

  def metrics(w):  # w: [R, blocks] block multiplicities
    n = w @ stats['n']
    sse = w @ stats['sse']
    total_sum = w @ stats['sum']
    variance = w @ stats['sum_sq'] - np.sum(total_sum**2, axis=-1) / np.maximum(n, 1)
    return {
      'mse': sse / np.maximum(n, 1),
      'fvu': sse / np.maximum(variance, _EPS),
      'l0': (w @ stats['l0']) / np.maximum(n, 1),
    }

  num_blocks = len(rows)
  point = {k: float(v[0]) for k, v in metrics(np.ones((1, num_blocks))).items()}
  boot = metrics(_bootstrap_weights(num_blocks, num_resamples, seed))
  n = float(stats['n'].sum())
  frequency = stats['count'].sum(0) / n
  summary = {
    'n_tokens': int(n),
    'n_blocks': num_blocks,
    **{
      k: {'value': point[k], 'interval': _interval(boot[k], level), 'level': level}
      for k in ('mse', 'fvu', 'l0')
    },
    **density_summary(frequency, dense_threshold),
  }
  return summary, frequency


@functools.partial(jax.jit, static_argnames=('spec_a', 'spec_b'))
def _cka_block(params_a, params_b, xa, xb, valid, *, spec_a, spec_b):
  fa = sae_lib.encode(params_a, xa, spec_a[0], k=spec_a[1], bandwidth=spec_a[2])
  fb = sae_lib.encode(params_b, xb, spec_b[0], k=spec_b[1], bandwidth=spec_b[2])
  w = valid.astype(jnp.float32)[:, None]
  fa, fb = fa * w, fb * w
  return {
    'sa': fa.sum(0),
    'sb': fb.sum(0),
    'aa': fa.T @ fa,
    'bb': fb.T @ fb,
    'ba': fb.T @ fa,
    'n': jnp.sum(valid),
  }


def _spec(config: sae_lib.SAEConfig):
  return (config.activation, config.k, config.bandwidth)


def code_cka(
  params_a: dict,
  config_a: sae_lib.SAEConfig,
  store_a: store_lib.ActivationStore,
  params_b: dict,
  config_b: sae_lib.SAEConfig,
  store_b: store_lib.ActivationStore,
  start: int,
  stop: int,
  *,
  norm_a: Sequence = (None, 1.0),
  norm_b: Sequence = (None, 1.0),
  block_rows: int = 256,
  level: float = 0.95,
) -> dict:
  """Linear CKA between SAE A's codes on ``store_a`` and SAE B's on ``store_b`` (same tokens).

  From per-block sums ``Σf``, ``FᵀF`` (column-centred afterwards: ``F̄ᵀF̄ = FᵀF - n μ μᵀ``), so the
  interval (a delete-one-block jackknife) costs no extra encoding. ``norm_*``: ``(mean, scale)``
  of each store.
  """
  means = [np.zeros(store_a.d) if norm_a[0] is None else norm_a[0]]
  means.append(np.zeros(store_b.d) if norm_b[0] is None else norm_b[0])
  pa, pb = jax.tree.map(jnp.asarray, params_a), jax.tree.map(jnp.asarray, params_b)
  rows = []
  for (xa, xb), valid in _padded_blocks(
    [store_a, store_b], start, stop, block_rows, means, [norm_a[1], norm_b[1]]
  ):
    out = _cka_block(
      pa,
      pb,
      jnp.asarray(xa),
      jnp.asarray(xb),
      jnp.asarray(valid),
      spec_a=_spec(config_a),
      spec_b=_spec(config_b),
    )
    rows.append(jax.device_get(out))
  stats = {key: np.stack([np.asarray(r[key], np.float64) for r in rows]) for key in rows[0]}

  flat = {key: stats[key].reshape(stats[key].shape[0], -1) for key in ('aa', 'bb', 'ba')}
  ma_dim, mb_dim = stats['sa'].shape[1], stats['sb'].shape[1]

  def cka(w):  # [R, blocks] -> [R], in groups of resamples to bound memory
    out = []
    for g in range(0, w.shape[0], 32):
      wg = w[g : g + 32]
      n = np.maximum(wg @ stats['n'], 1)[:, None, None]
      ma = (wg @ stats['sa'])[:, :, None] / n[:, :, :1]
      mb = (wg @ stats['sb'])[:, :, None] / n[:, :, :1]
      aa = (wg @ flat['aa']).reshape(-1, ma_dim, ma_dim) - n * ma * ma.transpose(0, 2, 1)
      bb = (wg @ flat['bb']).reshape(-1, mb_dim, mb_dim) - n * mb * mb.transpose(0, 2, 1)
      ba = (wg @ flat['ba']).reshape(-1, mb_dim, ma_dim) - n * mb * ma.transpose(0, 2, 1)
      cross = np.sum(ba**2, axis=(1, 2))
      norm = np.sqrt(np.sum(aa**2, axis=(1, 2))) * np.sqrt(np.sum(bb**2, axis=(1, 2)))
      out.append(cross / np.maximum(norm, _EPS))
    return np.concatenate(out)

  num_blocks = len(rows)
  value = float(cka(np.ones((1, num_blocks)))[0])
  # Delete-one-block jackknife (one evaluation per block instead of a bootstrap's hundreds).
  leave_out = cka(1.0 - np.eye(num_blocks)) if num_blocks > 1 else np.asarray([value])
  se = float(np.sqrt((num_blocks - 1) / num_blocks * np.sum((leave_out - leave_out.mean()) ** 2)))
  z = float(scipy.stats.norm.ppf((1 + level) / 2))
  return {
    'value': value,
    'interval': [value - z * se, value + z * se],
    'interval_method': 'delete-one-block jackknife, normal approximation',
    'level': level,
    'n_tokens': int(stats['n'].sum()),
    'n_blocks': num_blocks,
  }
