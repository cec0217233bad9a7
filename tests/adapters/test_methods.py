"""Per-method checks: identity at init, init statistics vs PEFT's defaults, merge == forward,
path endpoints, OFT orthogonality along the generator path, DISeL vs a float64 NumPy reference,
DoRA's detached norm, PiSSA -> LoRA conversion, and that LoRA's training step never forms ΔW."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from peft_jax.adapters import api
from peft_jax.adapters import oft as oft_lib
from peft_jax.adapters.core import Adapted, matmul

D_IN, D_OUT = 16, 24

METHODS = {
  'lora': api.LoRA(rank=4, alpha=8),
  'rslora': api.LoRA(rank=4, alpha=8, use_rslora=True),
  'lora_gaussian': api.LoRA(rank=4, alpha=8, init_weights='gaussian'),
  'dora': api.DoRA(rank=4, alpha=8),
  'pissa': api.PiSSA(rank=4, alpha=8),
  'vera': api.VeRA(rank=6),
  'oft_neumann': api.OFT(block_size=4),
  'oft_exact': api.OFT(block_size=8, use_cayley_neumann=False),
  'oft_share_coft': api.OFT(block_size=4, block_share=True, coft=True, eps=1e-1),
  'miss': api.MiSS(rank=5),
  'miss_bat': api.MiSS(rank=4, mode='bat'),
  'miss_mini': api.MiSS(rank=4, mode='mini', mini_r=6),
  'disel': api.DISeL(rank=4, alpha=8),
  'full': api.Full(),
}


@pytest.fixture(scope='module')
def w0():
  return jax.random.normal(jax.random.key(0), (D_IN, D_OUT)) / 4


@pytest.fixture(scope='module')
def x():
  return jax.random.normal(jax.random.key(1), (2, 5, D_IN))


def _perturbed(node, scale=0.1, seed=3):
  keys = jax.random.split(jax.random.key(seed), len(node.params))
  params = {
    k: v + scale * jax.random.normal(kk, v.shape)
    for kk, (k, v) in zip(keys, sorted(node.params.items()))
  }
  return Adapted(node.base, params, node.frozen, node.method)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize('name', sorted(METHODS))
def test_identity_at_init_and_merge_and_path(name, w0, x):
  method = METHODS[name]
  node = method.init(jax.random.key(2), w0)
  ref = np.asarray(x, np.float64) @ np.asarray(w0, np.float64)
  assert _rel(matmul(x, node), ref) < 1e-5
  assert _rel(method.path(node, 0.0), w0) < 1e-6
  node = _perturbed(node)
  merged = method.merge(node)
  if method.exact_merge:  # DISeL's update is input dependent: no exact merge
    assert _rel(matmul(x, node), np.asarray(x) @ np.asarray(merged)) < 1e-5
  assert _rel(method.path(node, 0.0), w0) < 1e-6
  assert _rel(method.path(node, 1.0), merged) < 1e-6
  assert _rel(method.delta(node), np.asarray(merged) - np.asarray(w0)) < 1e-5
  # Path and forward are jit/vmap-able over t.
  ts = jnp.linspace(0.0, 1.0, 3)
  kernels = jax.jit(jax.vmap(lambda t: method.path(node, t)))(ts)
  assert kernels.shape == (3, D_IN, D_OUT)


def _ks_uniform(sample, bound):
  return stats.kstest(np.asarray(sample).ravel(), stats.uniform(-bound, 2 * bound).cdf).pvalue


def test_lora_and_dora_init_statistics():
  w = jax.random.normal(jax.random.key(0), (256, 64))
  node = api.LoRA(rank=16, alpha=16).init(jax.random.key(5), w)
  a = np.asarray(node.params['lora_a'])
  bound = 1 / np.sqrt(256)  # kaiming_uniform(a=sqrt(5)) over fan_in = d_in
  assert np.abs(a).max() <= bound and _ks_uniform(a, bound) > 0.01
  assert not np.any(np.asarray(node.params['lora_b']))
  gauss = np.asarray(
    api.LoRA(rank=16, init_weights='gaussian').init(jax.random.key(5), w).params['lora_a']
  )
  assert stats.kstest(gauss.ravel(), stats.norm(0, 1 / 16).cdf).pvalue > 0.01
  dora = api.DoRA(rank=16).init(jax.random.key(5), w)
  np.testing.assert_allclose(
    dora.params['magnitude'], np.linalg.norm(np.asarray(w, np.float64), axis=0), rtol=1e-6
  )
  gate = np.asarray(api.DISeL(rank=16).init(jax.random.key(5), w).params['gate_w'])
  assert _ks_uniform(gate, bound) > 0.01


def test_vera_init_statistics_and_shared_projections():
  params = {
    'layers_0': {
      'self_attn': {
        'q_proj': {'kernel': jnp.ones((64, 64))},
        'v_proj': {'kernel': jnp.ones((64, 32))},
      },
      'mlp': {'down_proj': {'kernel': jnp.ones((128, 64))}},
    }
  }
  tree = api.inject(params, api.VeRA(rank=32, d_initial=0.1), 'all-linear', jax.random.key(0))
  nodes = list(api.adapted_nodes(tree).values())
  first = nodes[0].frozen
  assert all(
    n.frozen['vera_a'] is first['vera_a'] and n.frozen['vera_b'] is first['vera_b'] for n in nodes
  )
  assert first['vera_a'].shape == (128, 32) and first['vera_b'].shape == (32, 64)
  assert _ks_uniform(first['vera_a'], np.sqrt(6 / 128)) > 0.01  # PEFT: U(±sqrt(6/max_in))
  assert _ks_uniform(first['vera_b'], np.sqrt(6 / 32)) > 0.01  # PEFT: U(±sqrt(6/r))
  for n in nodes:
    np.testing.assert_array_equal(n.params['lambda_d'], np.full(32, 0.1, np.float32))
    assert not np.any(np.asarray(n.params['lambda_b']))
  counts = api.count_params(tree)
  assert counts['trainable'] == 3 * 32 + 64 + 32 + 64
  base = 64 * 64 + 64 * 32 + 128 * 64
  assert counts['total'] == base + counts['trainable'] + 128 * 32 + 32 * 64  # projections once
  copied = jax.jit(lambda t: t)(tree)  # separate output buffers: still counted once
  assert api.count_params(copied) == counts


def test_oft_generator_path_stays_orthogonal(w0):
  method = api.OFT(block_size=8, use_cayley_neumann=False)
  node = _perturbed(method.init(None, w0), scale=0.3)
  for t in np.linspace(0.0, 1.0, 6):
    r = np.asarray(method.rotation(node, t), np.float64)
    gram = np.einsum('nij,nkj->nik', r, r)
    assert np.abs(gram - np.eye(8)).max() < 1e-5, t
    # The kernel along the path is an exact rotation of W0: column norms of blocks preserved.
    wt = np.asarray(method.path(node, t), np.float64).reshape(2, 8, D_OUT)
    np.testing.assert_allclose(
      np.linalg.norm(wt, axis=1),
      np.linalg.norm(np.asarray(w0).reshape(2, 8, D_OUT), axis=1),
      rtol=1e-5,
    )
  dense_mid = method.dense_path(node, 0.5)
  np.testing.assert_allclose(dense_mid, (np.asarray(w0) + method.merge(node)) / 2, atol=1e-6)


def test_oft_rotations_match_float64_formulas():
  rng = np.random.RandomState(0)
  packed = 0.1 * rng.randn(3, 6)
  rows, cols = np.triu_indices(4, 1)
  q = np.zeros((3, 4, 4))
  q[:, rows, cols] = packed
  q = q - np.transpose(q, (0, 2, 1))
  eye = np.eye(4)
  exact = np.stack([(eye - qi) @ np.linalg.inv(eye + qi) for qi in q])  # PEFT's exact branch
  neumann5 = np.stack(
    [eye + 2 * qi + 2 * qi @ qi + 2 * qi @ qi @ qi + qi @ qi @ qi @ qi for qi in q]
  )
  q32 = oft_lib.skew_from_packed(jnp.asarray(packed, jnp.float32), 4)
  np.testing.assert_allclose(q32, q, atol=1e-7)
  np.testing.assert_allclose(oft_lib.packed_from_skew(q32), packed, atol=1e-7)
  np.testing.assert_allclose(oft_lib.cayley_exact(q32), exact, atol=1e-6)
  np.testing.assert_allclose(oft_lib.cayley_neumann(q32, 5), neumann5, atol=1e-6)
  # Neumann approximates (I+Q)(I-Q)^{-1}, the transpose of the exact branch (PEFT's convention);
  # the truncation error is O(||Q||^5), so compare on a small generator.
  small = 0.1 * q
  target = np.stack([(eye + qi) @ np.linalg.inv(eye - qi) for qi in small])
  # (I+Q)(I-Q)^{-1} - (I+Q)(I+Q+Q^2+Q^3) = (I+Q) Q^4 (I-Q)^{-1}: bounded by
  # ||Q||^4 (1+||Q||)/(1-||Q||) in spectral norm.
  qn = np.linalg.norm(small, ord=2, axis=(1, 2)).max()
  trunc = np.abs(np.asarray(oft_lib.cayley_neumann(jnp.asarray(small, jnp.float32), 5)) - target)
  assert trunc.max() <= qn**4 * (1 + qn) / (1 - qn) + 1e-6, (trunc.max(), qn)
  np.testing.assert_allclose(
    oft_lib.cayley_exact(jnp.asarray(small, jnp.float32)),
    np.transpose(target, (0, 2, 1)),
    atol=1e-6,
  )
  # COFT: every block's ||Q||_F is clipped to eps / sqrt(n_blocks).
  projected = np.asarray(oft_lib.coft_project(jnp.asarray(packed, jnp.float32), 4, 1e-2))
  norms = np.sqrt(2) * np.linalg.norm(projected, axis=1)
  np.testing.assert_allclose(norms, 1e-2 / np.sqrt(3), rtol=1e-5)


def test_disel_against_float64_reference(w0, x):
  method = api.DISeL(rank=4, alpha=8, gate_bias_init=-1.0)
  node = _perturbed(method.init(jax.random.key(4), w0), scale=0.3)
  p = {k: np.asarray(v, np.float64) for k, v in node.params.items()}
  x64 = np.asarray(x, np.float64)
  gates = 1 / (1 + np.exp(-(x64 @ p['gate_w'] + p['gate_b'])))
  ref = x64 @ np.asarray(w0, np.float64) + 2.0 * ((x64 @ p['lora_a']) * gates) @ p['lora_b']
  assert _rel(method.apply(node, x), ref) < 1e-5
  assert _rel(method.gate_values(node, x), gates) < 1e-6
  expected = 2.0 * (p['lora_a'] * gates.reshape(-1, 4).mean(0)) @ p['lora_b']
  assert _rel(method.expected_delta(node, x), expected) < 1e-5
  assert _rel(method.delta(node), 2.0 * p['lora_a'] @ p['lora_b']) < 1e-5
  assert api.DISeL.gate_param_names == ('gate_w', 'gate_b')
  import re

  assert re.fullmatch(api.DISeL.gate_param_regex, 'layers_0/mlp/gate_proj/kernel/params/gate_w')
  assert not re.fullmatch(api.DISeL.gate_param_regex, 'layers_0/mlp/gate_proj/kernel/params/lora_a')
  init = method.init(jax.random.key(4), w0)
  np.testing.assert_array_equal(init.params['gate_b'], np.full(4, -1.0, np.float32))
  normalized = api.DISeL(rank=4, alpha=8, gate_normalize=True)
  gates_n = 1 / (1 + np.exp(-(x64 @ p['gate_w'] / 4.0 + p['gate_b'])))
  assert (
    _rel(normalized.gate_values(Adapted(node.base, node.params, {}, normalized), x), gates_n) < 1e-6
  )


def test_dora_norm_is_detached(w0, x):
  method = api.DoRA(rank=4, alpha=8)
  node = _perturbed(method.init(jax.random.key(2), w0))
  cot = np.asarray(jax.random.normal(jax.random.key(9), (2, 5, D_OUT)), np.float64)

  def loss(params):
    return jnp.sum(method.apply(Adapted(node.base, params, {}, method), x) * cot)

  grads = jax.grad(loss)(node.params)
  p = {k: np.asarray(v, np.float64) for k, v in node.params.items()}
  w = np.asarray(w0, np.float64)
  x2 = np.asarray(x, np.float64).reshape(-1, D_IN)
  c2 = cot.reshape(-1, D_OUT)
  ratio = p['magnitude'] / np.linalg.norm(w + 2.0 * p['lora_a'] @ p['lora_b'], axis=0)
  # With the norm a constant: y = ratio ⊙ (x W0 + s (x a) b).
  grad_b = 2.0 * (x2 @ p['lora_a']).T @ (c2 * ratio)
  grad_a = 2.0 * x2.T @ ((c2 * ratio) @ p['lora_b'].T)
  grad_m = (
    np.sum(c2 * (x2 @ w + 2.0 * x2 @ p['lora_a'] @ p['lora_b']), axis=0)
    / (1.0)
    / np.linalg.norm(w + 2.0 * p['lora_a'] @ p['lora_b'], axis=0)
  )
  assert _rel(grads['lora_b'], grad_b) < 1e-5
  assert _rel(grads['lora_a'], grad_a) < 1e-5
  assert _rel(grads['magnitude'], grad_m) < 1e-5


def test_dora_dropout_formula(w0, x):
  method = api.DoRA(rank=4, alpha=8, dropout=0.5)
  node = _perturbed(method.init(jax.random.key(2), w0))
  rng = jax.random.key(11)
  keep = np.asarray(jax.random.bernoulli(rng, 0.5, x.shape))
  p = {k: np.asarray(v, np.float64) for k, v in node.params.items()}
  w = np.asarray(w0, np.float64)
  x64 = np.asarray(x, np.float64)
  xd = np.where(keep, x64 / 0.5, 0.0)
  ratio = p['magnitude'] / np.linalg.norm(w + 2.0 * p['lora_a'] @ p['lora_b'], axis=0)
  ref = x64 @ w + (ratio - 1) * (xd @ w) + ratio * (2.0 * (xd @ p['lora_a']) @ p['lora_b'])
  assert _rel(method.apply(node, x, dropout_rng=rng), ref) < 1e-5


def test_pissa_converts_to_plain_lora(w0, x):
  method = api.PiSSA(rank=3, alpha=6, use_rslora=True)
  node = _perturbed(method.init(None, w0))
  a, b = method.to_lora_factors(node)
  lora = api.LoRA(rank=6, alpha=6 * np.sqrt(2), use_rslora=True)
  assert abs(lora.scale - method.scale) < 1e-12
  converted = Adapted(w0, {'lora_a': a, 'lora_b': b}, {}, lora)
  assert _rel(matmul(x, converted), matmul(x, node)) < 1e-5
  assert _rel(method.original_weight(node), w0) < 1e-5


def test_lora_train_step_never_forms_dense_delta():
  d_in, d_out, rank, tokens = 12, 20, 3, 7
  w = jax.random.normal(jax.random.key(0), (d_in, d_out))
  node = _perturbed(api.LoRA(rank=rank, alpha=6).init(jax.random.key(1), w))
  xs = jax.random.normal(jax.random.key(2), (tokens, d_in))

  def loss(params):
    return jnp.sum(matmul(xs, Adapted(node.base, params, {}, node.method)) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss))(node.params)

  def shapes(jx):
    for eqn in jx.eqns:
      for var in eqn.outvars:
        yield tuple(getattr(var.aval, 'shape', ()))
      for param in eqn.params.values():
        inner = getattr(param, 'jaxpr', None)
        if inner is not None:
          yield from shapes(getattr(inner, 'jaxpr', inner))

  produced = set(shapes(jaxpr.jaxpr))
  assert (d_in, d_out) not in produced and (d_out, d_in) not in produced, produced
  assert (rank, d_out) in produced  # the grad of b is there: the walk sees the step


def test_rank_and_block_errors(w0):
  with pytest.raises(ValueError, match=r'rank=17 is invalid .*valid ranks are 1\.\.16'):
    api.LoRA(rank=17).init(jax.random.key(0), w0)
  with pytest.raises(ValueError, match=r'block_size=5 does not divide d_in=16; valid block sizes'):
    api.OFT(block_size=5).init(None, w0)
  with pytest.raises(ValueError, match=r"'bat'.*rank=5 must divide"):
    api.MiSS(rank=5, mode='bat').init(None, w0)
  with pytest.raises(ValueError, match=r"init='orthogonal' is not supported"):
    api.LoRA(rank=2, init_weights='orthogonal').init(jax.random.key(0), w0)


def test_lora_dropout_on_adapter_input_only(w0, x):
  method = api.LoRA(rank=4, alpha=8, dropout=0.25)
  node = _perturbed(method.init(jax.random.key(2), w0))
  rng = jax.random.key(12)
  keep = np.asarray(jax.random.bernoulli(rng, 0.75, x.shape))
  p = {k: np.asarray(v, np.float64) for k, v in node.params.items()}
  x64 = np.asarray(x, np.float64)
  xd = np.where(keep, x64 / 0.75, 0.0)
  ref = x64 @ np.asarray(w0, np.float64) + 2.0 * (xd @ p['lora_a']) @ p['lora_b']
  assert _rel(method.apply(node, x, dropout_rng=rng), ref) < 1e-5
  assert _rel(method.apply(node, x), x64 @ np.asarray(method.merge(node), np.float64)) < 1e-5


@pytest.mark.parametrize('name', sorted(METHODS))
def test_bfloat16_compute_tracks_float32(name, w0, x):
  method = METHODS[name]
  node = _perturbed(method.init(jax.random.key(2), w0))
  y16 = jax.jit(lambda n, v: matmul(v, n, dtype=jnp.bfloat16))(node, x)
  assert y16.dtype == jnp.bfloat16
  # bf16 has an 8-bit mantissa: ~4e-3 relative per rounding, a few roundings per output.
  assert _rel(y16.astype(jnp.float32), matmul(x, node)) < 3e-2
