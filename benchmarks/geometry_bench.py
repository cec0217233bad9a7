"""Speed of the jitted geometry metrics against NumPy/SciPy, measured in the same run.

  .venv/bin/python benchmarks/geometry_bench.py --tokens=4096 --width=512 --layers=8

For every metric: median wall time of the jitted JAX function (after one warm-up call that
compiles) and of a NumPy/SciPy implementation of the same definition on the same float32 data;
the two are timed alternately (the machine may be shared); the ratio is ``reference / jax``
(> 1: JAX is faster); ``max_rel_err`` compares the JAX float32 result with a float64 NumPy
evaluation. Sizes follow PEFT-Arena (<= 4096 tokens, 1024 pair tokens).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from absl import app, flags

from peft_jax import geometry

_TOKENS = flags.DEFINE_integer('tokens', 4096, 'Tokens n per activation matrix.')
_WIDTH = flags.DEFINE_integer('width', 512, 'Feature width d (weights are [d, 2d]).')
_LAYERS = flags.DEFINE_integer('layers', 8, 'Layers in the batched (vmap) cases.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (median reported).')


def _paired_median_seconds(jax_fn, reference_fn, repeats):
  """Median times of both, measured alternately so a busy shared machine slows both alike."""
  jax_times, reference_times = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(jax_fn())
    jax_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    reference_fn()
    reference_times.append(time.perf_counter() - start)
  return float(np.median(jax_times)), float(np.median(reference_times))


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
  """(mean ΔP, mean E) from the SVD of W0 (torch layout: the transposed Flax kernel)."""
  u, _, vh = np.linalg.svd(w0.T, full_matrices=False)
  dw_v = (w1 - w0).T @ vh.T
  return np.mean(np.abs(np.sum(u * dw_v, axis=0))), np.mean(np.linalg.norm(dw_v, axis=0))


def np_csd_rel(h, w0, w1):
  upd = np.mean(np.sum((h @ (w1 - w0)) ** 2, axis=1))
  return upd / (np.mean(np.sum((h @ w0) ** 2, axis=1)) + 1e-12)


def main(argv):
  del argv
  n, d, layers, repeats = _TOKENS.value, _WIDTH.value, _LAYERS.value, _REPEATS.value
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((n, d)).astype(np.float32)
  x1 = (
    x0 @ (np.eye(d) + 0.1 * rng.standard_normal((d, d)) / np.sqrt(d))
    + 0.1 * rng.standard_normal((n, d))
  ).astype(np.float32)
  pair = min(n, 1024)
  w0 = rng.standard_normal((d, 2 * d)).astype(np.float32)
  w1 = (w0 + 0.01 * rng.standard_normal((d, 8)) @ rng.standard_normal((8, 2 * d))).astype(
    np.float32
  )
  x0_layers = rng.standard_normal((layers, n // 4, d // 2)).astype(np.float32)
  x1_layers = (x0_layers + 0.3 * rng.standard_normal(x0_layers.shape)).astype(np.float32)
  x64 = (x0.astype(np.float64), x1.astype(np.float64))

  streaming_batches = 4

  def stream(a, b):
    state = geometry.activation_stats_init(d, d)
    for i in range(streaming_batches):  # unrolled at trace time: a fixed, small batch count
      rows = slice(i * n // streaming_batches, (i + 1) * n // streaming_batches)
      state = geometry.activation_stats_update(state, a[rows], b[rows])
    return geometry.activation_stats_finalize(state)['cka']

  cases = [
    ('linear_cka', jax.jit(geometry.linear_cka), (x0, x1), np_cka, lambda: np_cka(*x64)),
    ('streaming_cka_4_batches', jax.jit(stream), (x0, x1), np_cka, lambda: np_cka(*x64)),
    (
      'procrustes_residual',
      jax.jit(geometry.procrustes_residual),
      (x0, x1),
      np_procrustes,
      lambda: np_procrustes(*x64),
    ),
    (
      'gram_distortion_1024',
      jax.jit(geometry.gram_distortion),
      (x0[:pair], x1[:pair]),
      np_gram,
      lambda: np_gram(x64[0][:pair], x64[1][:pair]),
    ),
    (
      'pca_distance_k64',
      jax.jit(lambda a, b: geometry.pca_subspace_distance(a, b, 64)),
      (x0, x1),
      lambda a, b: np_pca(a, b, 64),
      lambda: np_pca(*x64, 64),
    ),
    (
      'spectral_means',
      jax.jit(
        lambda a, b: (lambda s: (s.delta_P_diag_mean, s.E_delta_mean))(
          geometry.spectral_summary(a, b)
        )
      ),
      (w0, w1),
      np_spectral_means,
      lambda: np_spectral_means(w0.astype(np.float64), w1.astype(np.float64)),
    ),
    (
      'csd_rel',
      jax.jit(lambda h, a, b: geometry.csd(h, a, b).rel),
      (x0, w0, w1),
      np_csd_rel,
      lambda: np_csd_rel(x0.astype(np.float64), w0.astype(np.float64), w1.astype(np.float64)),
    ),
    (
      f'linear_cka_vmap_{layers}_layers',
      jax.jit(jax.vmap(geometry.linear_cka)),
      (x0_layers, x1_layers),
      lambda a, b: np.array([np_cka(p, q) for p, q in zip(a, b)]),
      lambda: np.array(
        [np_cka(p.astype(np.float64), q.astype(np.float64)) for p, q in zip(x0_layers, x1_layers)]
      ),
    ),
  ]
  print(
    f'devices: {jax.devices()[0].platform} x{len(jax.devices())}; tokens={n} width={d} '
    f'layers={layers}; median of {repeats}'
  )
  print(f'{"metric":32s} {"jax_ms":>9s} {"numpy_ms":>9s} {"ratio":>7s} {"max_rel_err":>12s}')
  for name, jax_fn, args, np_fn, np64_fn in cases:
    device_args = [jnp.asarray(a) for a in args]
    result = jax.block_until_ready(jax_fn(*device_args))  # compile
    jax_s, np_s = _paired_median_seconds(
      lambda: jax_fn(*device_args), lambda: np_fn(*args), repeats
    )
    reference = np.asarray(np64_fn(), np.float64)
    got = np.asarray(jax.tree.leaves(result) if isinstance(result, tuple) else result, np.float64)
    rel_err = np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-30))
    print(f'{name:32s} {1e3 * jax_s:9.2f} {1e3 * np_s:9.2f} {np_s / jax_s:7.2f} {rel_err:12.2e}')


if __name__ == '__main__':
  app.run(main)
