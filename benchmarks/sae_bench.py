"""Speed of the jitted SAE code against NumPy implementations of the same definitions, same run.

  .venv/bin/python benchmarks/sae_bench.py --width=256 --features=2048 --tokens=8192 --batch=1024

Cases (float32 data, median wall time after one warm-up call that compiles):

* ``loss``: ReLU-SAE forward + loss (:func:`peft_jax.sae.sae_loss`) on one batch;
* ``train_step``: one Adam step with the decoder-gradient projection and renormalisation, measured
  as ``steps`` steps of :func:`peft_jax.sae.train_sae`'s jitted ``lax.scan`` chunk, against NumPy
  with hand-derived gradients (checked against ``jax.grad`` first: ``max_rel_err``);
* ``feature_stats``: :func:`peft_jax.sae.feature_statistics` (frequency, mean, top tokens) on all
  tokens, against NumPy encode + argsort;
* ``compare``: :func:`peft_jax.sae.compare_dictionaries` between two dictionaries.

The ratio is ``numpy / jax`` (> 1: JAX is faster). ``max_rel_err`` compares JAX with float64 NumPy.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from peft_jax import sae
from peft_jax.sae import sae as sae_lib

_WIDTH = flags.DEFINE_integer('width', 256, 'Activation width d.')
_FEATURES = flags.DEFINE_integer('features', 2048, 'SAE features m.')
_TOKENS = flags.DEFINE_integer('tokens', 8192, 'Tokens n for statistics.')
_BATCH = flags.DEFINE_integer('batch', 1024, 'Tokens per training batch.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Training steps per timed call.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (median reported).')
_L1 = 1e-3
_LR = 1e-3


def _median_seconds(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def np_loss(p, x, l1):
  """ReLU SAE loss alone (the forward that the ``loss`` case times)."""
  f = np.maximum((x - p['b_dec']) @ p['W_enc'] + p['b_enc'], 0)
  e = f @ p['W_dec'] + p['b_dec'] - x
  return (np.sum(e * e) + l1 * np.sum(f * np.linalg.norm(p['W_dec'], axis=1))) / x.shape[0]


def np_loss_and_grads(p, x, l1):
  """ReLU SAE: L = mean_t ||x̂_t - x_t||² + l1 · mean_t Σ_i f_ti ||W_dec[i]||, with gradients."""
  n = x.shape[0]
  xc = x - p['b_dec']
  z = xc @ p['W_enc'] + p['b_enc']
  f = np.maximum(z, 0)
  e = f @ p['W_dec'] + p['b_dec'] - x
  norms = np.linalg.norm(p['W_dec'], axis=1)
  loss = np.sum(e * e) / n + l1 * np.sum(f * norms) / n
  dxhat = 2 * e / n
  df = dxhat @ p['W_dec'].T + l1 * norms / n
  dz = df * (z > 0)
  grads = {
    'W_dec': f.T @ dxhat + (l1 / n) * f.sum(0)[:, None] * p['W_dec'] / norms[:, None],
    'W_enc': xc.T @ dz,
    'b_enc': dz.sum(0),
    'b_dec': dxhat.sum(0) - dz.sum(0) @ p['W_enc'].T,
  }
  return loss, grads


def np_train_steps(p, adam, data, idx_batches, l1, lr, b1=0.9, b2=0.999, eps=1e-8):
  for idx in idx_batches:
    _, g = np_loss_and_grads(p, data[idx], l1)
    w = p['W_dec'] / np.linalg.norm(p['W_dec'], axis=1, keepdims=True)
    g['W_dec'] = g['W_dec'] - np.sum(g['W_dec'] * w, axis=1, keepdims=True) * w
    adam['t'] += 1
    for name in g:
      adam['mu'][name] = b1 * adam['mu'][name] + (1 - b1) * g[name]
      adam['nu'][name] = b2 * adam['nu'][name] + (1 - b2) * g[name] ** 2
      mu_hat = adam['mu'][name] / (1 - b1 ** adam['t'])
      nu_hat = adam['nu'][name] / (1 - b2 ** adam['t'])
      p[name] = p[name] - lr * mu_hat / (np.sqrt(nu_hat) + eps)
    p['W_dec'] = p['W_dec'] / np.linalg.norm(p['W_dec'], axis=1, keepdims=True)
  return p


def np_feature_stats(p, x, top_n):
  f = np.maximum((x - p['b_dec']) @ p['W_enc'] + p['b_enc'], 0)
  top = np.argsort(-f, axis=0)[:top_n].T
  return (f > 0).mean(0), f.mean(0), top


def np_compare(a, b, thresholds):
  cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
    b / np.linalg.norm(b, axis=1, keepdims=True)
  ).T
  c = np.abs(cos).max(1)
  return np.abs(cos).argmax(1), c, [np.mean(c >= t) for t in thresholds]


def main(argv):
  del argv
  d, m, n, batch, steps, repeats = (
    _WIDTH.value,
    _FEATURES.value,
    _TOKENS.value,
    _BATCH.value,
    _STEPS.value,
    _REPEATS.value,
  )
  rng = np.random.default_rng(0)
  data = rng.normal(size=(n, d)).astype(np.float32)
  params = sae.init_sae(jax.random.key(0), d, m)
  params['b_enc'] = jnp.full((m,), -0.5, jnp.float32)
  p_np = {name: np.asarray(v) for name, v in params.items()}
  p64 = {name: v.astype(np.float64) for name, v in p_np.items()}
  x_batch = jnp.asarray(data[:batch])
  rows = []

  # --- loss ---
  loss_fn = jax.jit(lambda p, x: sae.sae_loss(p, x, _L1, 'relu')[0])
  jax.block_until_ready(loss_fn(params, x_batch))
  t_jax = _median_seconds(lambda: loss_fn(params, x_batch), repeats)
  t_np = _median_seconds(lambda: np_loss(p_np, data[:batch], _L1), repeats)
  ref_loss, ref_grads = np_loss_and_grads(p64, data[:batch].astype(np.float64), _L1)
  assert abs(np_loss(p64, data[:batch].astype(np.float64), _L1) - ref_loss) <= 1e-9 * ref_loss
  rows.append(('loss', t_jax, t_np, _rel_err(loss_fn(params, x_batch), ref_loss)))

  # --- train_step ---
  grads = jax.jit(jax.grad(lambda p, x: sae.sae_loss(p, x, _L1, 'relu')[0]))(params, x_batch)
  grad_err = max(_rel_err(grads[k], ref_grads[k]) for k in ref_grads)
  config = sae.SAEConfig(
    num_features=m,
    activation='relu',
    k=None,
    l1_coeff=_L1,
    learning_rate=_LR,
    batch_size=batch,
    num_steps=steps,
    log_every=steps,
  )
  spec = sae_lib._step_spec(config)  # pylint: disable=protected-access
  opt_state = sae_lib._ADAM.init(params)  # pylint: disable=protected-access
  since = jnp.zeros((m,), jnp.int32)
  acts = jnp.asarray(data)
  lr, l1 = jnp.float32(_LR), jnp.float32(_L1)
  chunk = lambda: sae_lib._train_chunk(  # pylint: disable=protected-access
    params, opt_state, since, acts, jax.random.key(1), lr, l1, spec=spec
  )
  jax.block_until_ready(chunk())
  t_jax = _median_seconds(chunk, repeats) / steps
  idx_batches = [rng.integers(0, n, size=batch) for _ in range(steps)]
  zeros = {k: np.zeros_like(v) for k, v in p_np.items()}
  t_np = (
    _median_seconds(
      lambda: np_train_steps(
        dict(p_np), {'t': 0, 'mu': dict(zeros), 'nu': dict(zeros)}, data, idx_batches, _L1, _LR
      ),
      repeats,
    )
    / steps
  )
  rows.append(('train_step', t_jax, t_np, grad_err))

  # --- feature_stats ---
  top_n = 8
  stats_fn = lambda: sae.feature_statistics(params, acts, 'relu', top_n=top_n, chunk_size=1024)
  stats = jax.block_until_ready(stats_fn())
  t_jax = _median_seconds(stats_fn, repeats)
  t_np = _median_seconds(lambda: np_feature_stats(p_np, data, top_n), repeats)
  freq, mean, _ = np_feature_stats(p64, data.astype(np.float64), top_n)
  err = max(_rel_err(stats.frequency, freq), _rel_err(stats.mean_activation, mean))
  rows.append(('feature_stats', t_jax, t_np, err))

  # --- compare ---
  other = rng.normal(size=(m, d)).astype(np.float32)
  thresholds = (0.5, 0.7, 0.9)
  cmp_fn = lambda: (
    sae.compare_dictionaries(
      params['W_dec'], jnp.asarray(other), thresholds=thresholds
    ).max_abs_cosine
  )
  jax.block_until_ready(cmp_fn())
  t_jax = _median_seconds(cmp_fn, repeats)
  t_np = _median_seconds(lambda: np_compare(p_np['W_dec'], other, thresholds), repeats)
  _, c_ref, _ = np_compare(p64['W_dec'], other.astype(np.float64), thresholds)
  rows.append(('compare', t_jax, t_np, _rel_err(cmp_fn(), c_ref)))

  print(f'backend={jax.default_backend()} d={d} m={m} tokens={n} batch={batch}')
  print(f'{"case":<14}{"jax_ms":>10}{"numpy_ms":>10}{"ratio":>8}{"max_rel_err":>13}')
  for name, t_jax, t_np, err in rows:
    print(f'{name:<14}{1e3 * t_jax:>10.2f}{1e3 * t_np:>10.2f}{t_np / t_jax:>8.2f}{err:>13.2e}')


if __name__ == '__main__':
  app.run(main)
