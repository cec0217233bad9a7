"""Speed of the jitted geometry metrics against NumPy/SciPy, measured in the same run.

  # PEFT-Arena's sizes (4096 tokens x 1024 dims, 28 layers; minutes):
  .venv/bin/python benchmarks/geometry_bench.py --out=/tmp/geometry.json
  # a quick look:
  .venv/bin/python benchmarks/geometry_bench.py --tokens=1024 --width=256 --layers=4

For every metric: median wall time of the jitted JAX function (float32, after one warm-up call
that compiles; compile time reported apart) and of a NumPy/SciPy implementation of the same
definition on the same data, in float32 and in float64; the three are timed alternately (the
machine may be shared). Ratios are ``reference / jax`` (> 1: JAX is faster). ``max_rel_err``
compares the JAX float32 result with the float64 NumPy value. Sizes follow PEFT-Arena (<= 4096
tokens, 1024 tokens for the Gram matrix); the per-layer cases run ``--layers`` layers at full size
(JAX: one ``vmap``; NumPy: a loop over layers). Weights are ``[d, 2d]`` with a rank-8 update.
"""

import sys
import time

import bench_common
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from absl import app, flags

from peft_jax import geometry
from peft_jax.common import files

_TOKENS = flags.DEFINE_integer('tokens', 4096, 'Tokens n per activation matrix.')
_WIDTH = flags.DEFINE_integer('width', 1024, 'Feature width d (weights are [d, 2d]).')
_LAYERS = flags.DEFINE_integer('layers', 28, 'Layers in the batched (vmap) cases.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (median reported).')
_OUT = flags.DEFINE_string('out', None, 'Write every number here as JSON (atomically).')


def _paired_median_seconds(fns, repeats):
  """Median times of each, measured alternately so a busy shared machine slows all alike."""
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      out.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def _np_center(x):
  return x - x.mean(axis=0)


def np_cka(x0, x1):
  a, b = _np_center(x0), _np_center(x1)
  return np.sum((a.T @ b) ** 2) / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b) + 1e-12)


def np_procrustes(x0, x1):
  a, b = _np_center(x0), _np_center(x1)
  rotation, _ = scipy.linalg.orthogonal_procrustes(b, a)
  return np.linalg.norm(b @ rotation - a) / (np.linalg.norm(a) + 1e-12)


def np_gram(x0, x1):
  z0 = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
  z1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
  k0, k1 = z0 @ z0.T, z1 @ z1.T
  return np.linalg.norm(k1 - k0) / (np.linalg.norm(k0) + 1e-12)


def np_pca(x0, x1, k):
  v0 = np.linalg.svd(_np_center(x0), full_matrices=False)[2][:k].T
  v1 = np.linalg.svd(_np_center(x1), full_matrices=False)[2][:k].T
  return np.linalg.norm(v1 - v0 @ (v0.T @ v1)) / np.sqrt(k)


def np_spectral_means(w0, w1):
  """(mean ΔP, mean E) from the SVD of W0 (torch layout: the transposed Flax kernel).

  Also takes the singular values of ΔW, as ``spectral_summary`` does (its top-5 and effective
  rank), so both sides do the same two decompositions.
  """
  u, _, vh = np.linalg.svd(w0.T, full_matrices=False)
  dw = (w1 - w0).T
  np.linalg.svd(dw, compute_uv=False)
  dw_v = dw @ vh.T
  return np.mean(np.abs(np.sum(u * dw_v, axis=0))), np.mean(np.linalg.norm(dw_v, axis=0))


def np_csd_rel(h, w0, w1):
  upd = np.mean(np.sum((h @ (w1 - w0)) ** 2, axis=1))
  return upd / (np.mean(np.sum((h @ w0) ** 2, axis=1)) + 1e-12)


def _spectral(a, b):
  summary = geometry.spectral_summary(a, b)
  return summary.delta_P_diag_mean, summary.E_delta_mean


def main(argv):
  del argv
  load_before = bench_common.load_average()
  n, d, layers, repeats = _TOKENS.value, _WIDTH.value, _LAYERS.value, _REPEATS.value
  rng = np.random.default_rng(0)

  def activations(shape):
    x0 = rng.standard_normal(shape, dtype=np.float32)
    mix = np.eye(d, dtype=np.float32) + 0.1 * rng.standard_normal((d, d), np.float32) / np.sqrt(d)
    x1 = x0 @ mix + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    return x0, x1.astype(np.float32)

  def weights(shape):
    w0 = rng.standard_normal(shape, dtype=np.float32)
    low = rng.standard_normal(shape[:-1] + (8,), np.float32) @ rng.standard_normal(
      shape[:-2] + (8, shape[-1]), np.float32
    )
    return w0, (w0 + 0.01 * low).astype(np.float32)

  x0, x1 = activations((n, d))
  pair = min(n, 1024)
  w0, w1 = weights((d, 2 * d))
  x0_layers, x1_layers = activations((layers, n, d))
  w0_layers, w1_layers = weights((layers, d, 2 * d))

  streaming_batches = 4

  def stream(a, b):
    state = geometry.activation_stats_init(d, d)
    for i in range(streaming_batches):  # unrolled at trace time: a fixed, small batch count
      rows = slice(i * n // streaming_batches, (i + 1) * n // streaming_batches)
      state = geometry.activation_stats_update(state, a[rows], b[rows])
    return geometry.activation_stats_finalize(state)['cka']

  def per_layer(fn):
    return lambda a, b: np.array([fn(p, q) for p, q in zip(a, b)])

  # (name, jitted JAX fn, float32 args, NumPy fn of the same args)
  cases = [
    ('linear_cka', jax.jit(geometry.linear_cka), (x0, x1), np_cka),
    ('streaming_cka_4_batches', jax.jit(stream), (x0, x1), np_cka),
    ('procrustes_residual', jax.jit(geometry.procrustes_residual), (x0, x1), np_procrustes),
    ('gram_distortion_1024', jax.jit(geometry.gram_distortion), (x0[:pair], x1[:pair]), np_gram),
    (
      'pca_distance_k64',
      jax.jit(lambda a, b: geometry.pca_subspace_distance(a, b, 64)),
      (x0, x1),
      lambda a, b: np_pca(a, b, 64),
    ),
    ('spectral_means', jax.jit(_spectral), (w0, w1), np_spectral_means),
    ('csd_rel', jax.jit(lambda h, a, b: geometry.csd(h, a, b).rel), (x0, w0, w1), np_csd_rel),
    (
      f'linear_cka_{layers}_layers',
      jax.jit(jax.vmap(geometry.linear_cka)),
      (x0_layers, x1_layers),
      per_layer(np_cka),
    ),
    (
      f'procrustes_{layers}_layers',
      jax.jit(jax.vmap(geometry.procrustes_residual)),
      (x0_layers, x1_layers),
      per_layer(np_procrustes),
    ),
    (
      f'spectral_means_{layers}_layers',
      jax.jit(jax.vmap(_spectral)),
      (w0_layers, w1_layers),
      lambda a, b: np.array([np_spectral_means(p, q) for p, q in zip(a, b)]).T,
    ),
  ]
  print(
    f'devices: {jax.devices()[0].platform} x{len(jax.devices())}; tokens={n} width={d} '
    f'layers={layers}; median of {repeats}',
    flush=True,
  )
  header = (
    '| metric | jax f32 (ms) | numpy f32 (ms) | numpy f64 (ms) | f32 / jax | f64 / jax '
    '| jax compile (s) | max rel err (jax f32 vs f64) |'
  )
  lines = [header, '|---|---:|---:|---:|---:|---:|---:|---:|']
  print(header, flush=True)
  rows = []
  for name, jax_fn, args, np_fn in cases:
    device_args = [jnp.asarray(a) for a in args]
    args64 = [a.astype(np.float64) for a in args]
    start = time.perf_counter()
    result = jax.block_until_ready(jax_fn(*device_args))
    first_s = time.perf_counter() - start
    reference = np.asarray(np_fn(*args64), np.float64)
    jax_s, np32_s, np64_s = _paired_median_seconds(
      [lambda: jax_fn(*device_args), lambda: np_fn(*args), lambda: np_fn(*args64)], repeats
    )
    got = np.asarray(result, np.float64)
    rel_err = float(np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-30)))
    row = dict(
      metric=name,
      jax_s=jax_s,
      numpy_f32_s=np32_s,
      numpy_f64_s=np64_s,
      jax_compile_s=max(first_s - jax_s, 0.0),
      max_rel_err=rel_err,
    )
    rows.append(row)
    line = (
      f'| {name} | {1e3 * jax_s:.1f} | {1e3 * np32_s:.1f} | {1e3 * np64_s:.1f} '
      f'| {np32_s / jax_s:.2f} | {np64_s / jax_s:.2f} | {row["jax_compile_s"]:.2f} '
      f'| {rel_err:.1e} |'
    )
    lines.append(line)
    print(line, flush=True)
  report = dict(
    config=dict(tokens=n, width=d, layers=layers, repeats=repeats, gram_tokens=pair),
    rows=rows,
    table='\n'.join(lines),
    machine=dict(bench_common.machine(), load_average_before=load_before),
    versions=bench_common.versions(),
    date=bench_common.now_utc(),
    command=' '.join(sys.argv),
  )
  if _OUT.value:
    print(f'wrote {files.write_json(_OUT.value, report)}')


if __name__ == '__main__':
  app.run(main)
