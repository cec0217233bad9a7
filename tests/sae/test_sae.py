"""SAE forward, loss, gradients and training against float64 NumPy written from the definitions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peft_jax.sae as S
from peft_jax.sae import sae as sae_lib

D, M, N = 6, 10, 9


def _np_encode(p, x, activation, k=None):
  """f = σ((x - b_dec) W_enc + b_enc), float64."""
  z = (x - p['b_dec']) @ p['W_enc'] + p['b_enc']
  if activation == 'relu':
    return np.maximum(z, 0.0)
  if activation == 'topk':
    f = np.zeros_like(z)
    for t in range(z.shape[0]):
      top = np.argsort(-z[t])[:k]
      f[t, top] = np.maximum(z[t, top], 0.0)
    return f
  theta = np.exp(p['log_threshold'])
  return z * (z > theta)


def _np_loss(p, x, lam, activation, k=None):
  f = _np_encode(p, x, activation, k)
  x_hat = f @ p['W_dec'] + p['b_dec']
  n = x.shape[0]
  mse = np.sum((x - x_hat) ** 2) / n
  l1 = np.sum(np.abs(f) * np.linalg.norm(p['W_dec'], axis=1)) / n
  l0 = np.sum(f > 0) / n
  fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2)
  loss = mse + lam * (l0 if activation == 'jumprelu' else l1)
  return loss, dict(mse=mse, l1=l1, l0=l0, fvu=fvu, count=np.sum(f > 0, axis=0))


def _random_params(seed, activation='jumprelu'):
  rng = np.random.default_rng(seed)
  p = {
    'W_enc': rng.normal(size=(D, M)),
    'b_enc': 0.3 * rng.normal(size=M),
    'W_dec': rng.normal(size=(M, D)),  # deliberately not unit-norm: l1 weights by row norms
    'b_dec': 0.2 * rng.normal(size=D),
  }
  if activation == 'jumprelu':
    p['log_threshold'] = np.log(rng.uniform(0.2, 1.0, size=M))
  x = rng.normal(size=(N, D))
  return p, x


def _to_jax(p):
  return {name: jnp.asarray(v, jnp.float32) for name, v in p.items()}


@pytest.mark.parametrize('activation,k', [('relu', None), ('topk', 3), ('jumprelu', None)])
def test_encode_decode_loss_match_numpy(activation, k):
  p, x = _random_params(0, activation)
  pj, xj = _to_jax(p), jnp.asarray(x, jnp.float32)
  f = S.encode(pj, xj, activation, k=k)
  np.testing.assert_allclose(f, _np_encode(p, x, activation, k), rtol=1e-5, atol=1e-5)
  f_np = _np_encode(p, x, activation, k)
  np.testing.assert_allclose(
    S.decode(pj, jnp.asarray(f_np, jnp.float32)),
    f_np @ p['W_dec'] + p['b_dec'],
    rtol=1e-5,
    atol=1e-5,
  )
  loss, aux = jax.jit(S.sae_loss, static_argnames=('activation', 'k'))(
    pj, xj, 0.37, activation=activation, k=k
  )
  ref_loss, ref = _np_loss(p, x, 0.37, activation, k)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for name in ('mse', 'l1', 'l0', 'fvu'):
    np.testing.assert_allclose(aux[name], ref[name], rtol=1e-5, err_msg=name)
  np.testing.assert_array_equal(aux['feature_count'], ref['count'])
  np.testing.assert_array_equal(aux['feature_fired'], ref['count'] > 0)
  # Leading token dims are allowed: [2, 3, d] gives the same codes as [6, d].
  f3 = S.encode(pj, xj[:6].reshape(2, 3, D), activation, k=k)
  np.testing.assert_allclose(f3.reshape(6, M), f[:6], rtol=1e-6, atol=1e-6)


def test_vmap_over_stacked_saes():
  """One SAE per layer, stacked on a leading axis: vmap gives each layer's own codes and loss."""
  (p0, x0), (p1, x1) = _random_params(10, 'relu'), _random_params(11, 'relu')
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), _to_jax(p0), _to_jax(p1))
  xs = jnp.asarray(np.stack([x0, x1]), jnp.float32)
  codes = jax.vmap(lambda p, x: S.encode(p, x, 'topk', k=2))(stacked, xs)
  losses = jax.vmap(lambda p, x: S.sae_loss(p, x, 0.1, 'relu')[0])(stacked, xs)
  for i, (p, x) in enumerate([(p0, x0), (p1, x1)]):
    np.testing.assert_allclose(codes[i], _np_encode(p, x, 'topk', 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses[i], _np_loss(p, x, 0.1, 'relu')[0], rtol=1e-5)


def test_topk_keeps_exactly_k():
  p, x = _random_params(1, 'topk')
  p['b_enc'] = p['b_enc'] + 50.0  # every pre-activation positive: exactly k survive the ReLU
  for k in (1, 4, M):
    f = np.asarray(S.encode(_to_jax(p), jnp.asarray(x, jnp.float32), 'topk', k=k))
    np.testing.assert_array_equal(np.sum(f > 0, axis=1), np.full(N, k))
  p, x = _random_params(2, 'topk')  # with negative pre-activations: at most k
  f = np.asarray(S.encode(_to_jax(p), jnp.asarray(x, jnp.float32), 'topk', k=4))
  assert np.all(np.sum(f > 0, axis=1) <= 4)
  np.testing.assert_allclose(f, _np_encode(p, x, 'topk', 4), rtol=1e-5, atol=1e-6)


def test_jumprelu_straight_through_gradients():
  """∂L/∂log θ from the rectangle-kernel pseudo-derivatives (Rajamanoharan et al. 2024)."""
  p, x = _random_params(3, 'jumprelu')
  eps, lam = 0.6, 0.25  # wide kernel so that many z fall inside it
  grads = jax.jit(
    jax.grad(
      lambda q: S.sae_loss(q, jnp.asarray(x, jnp.float32), lam, 'jumprelu', bandwidth=eps)[0]
    )
  )(_to_jax(p))
  theta = np.exp(p['log_threshold'])
  z = (x - p['b_dec']) @ p['W_enc'] + p['b_enc']
  f = z * (z > theta)
  x_hat = f @ p['W_dec'] + p['b_dec']
  dmse_df = 2.0 / N * (x_hat - x) @ p['W_dec'].T  # [n, m]
  kernel = (np.abs((z - theta) / eps) < 0.5).astype(float)
  dtheta = np.sum(dmse_df * (-(theta / eps) * kernel), axis=0) + lam / N * np.sum(
    -(1.0 / eps) * kernel, axis=0
  )
  assert kernel.sum() > 5
  np.testing.assert_allclose(grads['log_threshold'], dtheta * theta, rtol=1e-4, atol=1e-6)
  # Through z, gradients flow only where the feature is active (and L0 adds none).
  dz = dmse_df * (z > theta)
  np.testing.assert_allclose(grads['b_enc'], dz.sum(0), rtol=1e-4, atol=1e-6)


def test_decoder_gradient_projection_and_renormalisation():
  p, _ = _random_params(4, 'relu')
  g = np.random.default_rng(5).normal(size=(M, D))
  pj = _to_jax(p)
  out = S.remove_parallel_decoder_grad(pj, {**pj, 'W_dec': jnp.asarray(g, jnp.float32)})
  w = p['W_dec'] / np.linalg.norm(p['W_dec'], axis=1, keepdims=True)
  ref = g - np.sum(g * w, axis=1, keepdims=True) * w
  np.testing.assert_allclose(out['W_dec'], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(np.asarray(out['W_dec']) * w, axis=1), 0.0, atol=1e-5)
  np.testing.assert_array_equal(out['W_enc'], pj['W_enc'])
  normed = S.normalize_decoder(pj)
  np.testing.assert_allclose(normed['W_dec'], w, rtol=1e-6)
  fresh = S.init_sae(jax.random.key(0), D, M, activation='jumprelu', init_threshold=0.05)
  np.testing.assert_allclose(np.linalg.norm(fresh['W_dec'], axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(fresh['W_enc'], np.asarray(fresh['W_dec']).T)
  np.testing.assert_allclose(np.exp(fresh['log_threshold']), 0.05, rtol=1e-6)


def test_uncentered_encoder_folding():
  p, x = _random_params(6, 'jumprelu')
  theta = np.exp(p['log_threshold'])
  params = S.from_uncentered_encoder(p['W_enc'], p['b_enc'], p['W_dec'], p['b_dec'], theta)
  z = x @ p['W_enc'] + p['b_enc']  # Gemma Scope's encoder: no b_dec subtraction
  np.testing.assert_allclose(
    S.encode(params, jnp.asarray(x), 'jumprelu'), z * (z > theta), rtol=1e-5, atol=1e-5
  )


def _sparse_data(seed, n, d, m_true, active):
  """Sparse non-negative combinations of a known unit-norm dictionary G [m_true, d]."""
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(m_true, d))
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  codes = np.zeros((n, m_true))
  idx = np.argsort(rng.random((n, m_true)), axis=1)[:, :active]
  np.put_along_axis(codes, idx, rng.uniform(0.5, 2.0, size=(n, active)), axis=1)
  return g, codes @ g


def test_train_topk_recovers_ground_truth_dictionary():
  # 64 true atoms in d=48 (n_atoms != d); shapes and step spec shared with tests/sae/test_compare.py
  # so that the compiled training chunk is reused when both files run in one session.
  g, x = _sparse_data(0, n=4096, d=48, m_true=64, active=4)
  config = S.SAEConfig(
    num_features=64,
    activation='topk',
    k=4,
    learning_rate=3e-3,
    num_steps=1500,
    batch_size=256,
    log_every=250,
    dead_after=250,
    resample_every=500,
    init_b_dec='zeros',
  )
  params, history = S.train_sae(jnp.asarray(x, jnp.float32), config, jax.random.key(0))
  w = np.asarray(params['W_dec'], np.float64)
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)  # unit rows after steps
  cos = np.abs(g @ w.T)  # [m_true, m]
  assert cos.max(axis=1).mean() > 0.95  # every true atom has a learned feature
  assert cos.max(axis=0).mean() > 0.9  # learned decoder rows sit on true atoms
  assert history['fvu'][-1] < 0.5 * history['fvu'][0] and history['fvu'][-1] < 0.1
  assert history['l0'][-1] == pytest.approx(4.0, abs=1e-4)
  assert history['step'] == [250, 500, 750, 1000, 1250, 1500]
  # The reported FVU is the definition's on the full data.
  x_hat = S.decode(params, S.encode(params, jnp.asarray(x, jnp.float32), 'topk', k=4))
  x_hat = np.asarray(x_hat, np.float64)
  ref = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2)
  np.testing.assert_allclose(
    S.fraction_of_variance_unexplained(jnp.asarray(x), jnp.asarray(x_hat)), ref, rtol=1e-4
  )
  assert ref < 0.1


def test_train_jumprelu_learns_thresholds():
  g, x = _sparse_data(1, n=1024, d=12, m_true=16, active=2)
  config = S.SAEConfig(
    num_features=16,
    activation='jumprelu',
    k=None,
    l1_coeff=0.05,
    learning_rate=3e-3,
    num_steps=400,
    batch_size=128,
    log_every=200,
    bandwidth=0.05,
    init_threshold=0.1,
    init_b_dec='zeros',
  )
  params, history = S.train_sae(jnp.asarray(x, jnp.float32), config, jax.random.key(1))
  assert history['fvu'][-1] < history['fvu'][0]
  assert history['l0'][-1] < history['l0'][0]
  assert not np.allclose(np.exp(params['log_threshold']), 0.1)
  np.testing.assert_allclose(np.linalg.norm(params['W_dec'], axis=1), 1.0, atol=1e-5)
  # Learning rate, λ and step count are traced or loop-level: a new run does not recompile.
  compiled = sae_lib._train_chunk._cache_size()
  S.train_sae(
    jnp.asarray(x, jnp.float32),
    dataclasses.replace(config, learning_rate=1e-3, l1_coeff=0.1, num_steps=200),
    jax.random.key(2),
  )
  assert sae_lib._train_chunk._cache_size() == compiled


def test_resampling_reinitialises_only_dead_features():
  rng = np.random.default_rng(8)
  d, m, n = 5, 6, 40
  acts = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  config = S.SAEConfig(
    num_features=m, activation='relu', k=None, log_every=1, dead_after=3, resample_pool=32
  )
  params = S.init_sae(jax.random.key(4), d, m)
  params['W_enc'] = params['W_enc'] * jnp.arange(1.0, m + 1.0)  # distinct encoder norms
  params['b_enc'] = jnp.full((m,), 0.25)
  opt_state = sae_lib.ADAM.init(params)
  opt_state = jax.tree.map(lambda leaf: jnp.ones_like(leaf) if leaf.ndim else leaf, opt_state)
  since = jnp.asarray([0, 5, 1, 3, 0, 2], jnp.int32)  # features 1 and 3 dead
  dead = np.asarray(since) >= 3
  new, new_opt, new_since, count = sae_lib.resample_dead(
    params,
    opt_state,
    since,
    acts,
    jax.random.key(5),
    spec=sae_lib.step_spec(config),
    num_features=m,
    pool=32,
  )
  assert int(count) == 2
  np.testing.assert_array_equal(new_since, np.where(dead, 0, since))
  for name in ('W_dec', 'W_enc', 'b_enc'):
    keep = ~dead if name != 'W_enc' else ~dead[None, :].repeat(d, 0)
    np.testing.assert_array_equal(np.asarray(new[name])[keep], np.asarray(params[name])[keep])
  np.testing.assert_array_equal(new['b_enc'][dead], 0.0)
  # A dead feature's decoder row is the unit residual direction of some token of acts ...
  x = np.asarray(acts, np.float64)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  residual = x - (
    np.maximum((x - p['b_dec']) @ p['W_enc'] + p['b_enc'], 0) @ p['W_dec'] + p['b_dec']
  )
  residual /= np.linalg.norm(residual, axis=1, keepdims=True)
  w_new = np.asarray(new['W_dec'], np.float64)[dead]
  np.testing.assert_allclose(np.max(w_new @ residual.T, axis=1), 1.0, rtol=1e-5)
  # ... and its encoder column that direction times 0.2 x the mean alive encoder norm.
  alive_norm = np.linalg.norm(p['W_enc'], axis=0)[~dead].mean()
  np.testing.assert_allclose(
    np.asarray(new['W_enc'])[:, dead], w_new.T * 0.2 * alive_norm, rtol=1e-5
  )
  # Adam moments of the dead entries are zeroed, the others untouched.
  mu = new_opt.mu
  np.testing.assert_array_equal(np.asarray(mu['W_dec'])[dead], 0.0)
  np.testing.assert_array_equal(np.asarray(mu['W_dec'])[~dead], 1.0)
  np.testing.assert_array_equal(np.asarray(new_opt.nu['W_enc'])[:, dead], 0.0)
  np.testing.assert_array_equal(np.asarray(new_opt.nu['b_dec']), 1.0)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='valid'):
    S.SAEConfig(num_features=8, activation='gelu')
  with pytest.raises(ValueError, match='k'):
    S.SAEConfig(num_features=8, activation='topk', k=9)
  with pytest.raises(ValueError, match='multiple'):
    S.SAEConfig(num_features=8, num_steps=150, log_every=100)
  p, x = _random_params(7, 'relu')
  with pytest.raises(ValueError, match='log_threshold'):
    S.encode(_to_jax(p), jnp.asarray(x), 'jumprelu')
  with pytest.raises(ValueError, match='d=6'):
    S.encode(_to_jax(p), jnp.ones((3, 5)), 'relu')
  with pytest.raises(ValueError, match='NaN'):
    S.train_sae(jnp.full((4, 3), jnp.nan), S.SAEConfig(num_features=4, k=2), jax.random.key(0))
