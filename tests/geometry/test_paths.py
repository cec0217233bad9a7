"""Interpolation paths, α-grid evaluation as one compiled program, Pareto selection, and the OFT
Cayley path against the additive path on the tiny decoder (closed forms in float64 NumPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import geometry, models
from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted, is_adapted

BLOCK = 4


@pytest.fixture(scope='module')
def tiny():
  config = models.ModelConfig(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    head_dim=8,
  )
  params = models.init_params(config, jax.random.key(0))
  tree = api.inject(
    params,
    api.OFT(block_size=BLOCK, use_cayley_neumann=False),
    targets=['q_proj', 'v_proj'],
    key=jax.random.key(1),
  )
  # A trained-looking generator: random skew blocks (zeros at init would make every path trivial).
  keys = iter(jax.random.split(jax.random.key(2), 8))

  def randomise(node):
    if not is_adapted(node):
      return node
    r = 0.4 * jax.random.normal(next(keys), node.params['oft_r'].shape)
    return Adapted(node.base, {'oft_r': r}, node.frozen, node.method)

  tree = jax.tree.map(randomise, tree, is_leaf=is_adapted)
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 32)
  return models.Decoder(config), params, tree, tokens


def test_interpolate_and_grid_match_numpy():
  rng = np.random.default_rng(0)
  theta0 = {
    'a': rng.standard_normal((3, 4)).astype(np.float32),
    'b': {'c': rng.standard_normal(5).astype(np.float32)},
  }
  theta1 = jax.tree.map(lambda x: x + rng.standard_normal(x.shape).astype(np.float32), theta0)
  alphas = geometry.linspace_alphas(11)
  grid = geometry.alpha_grid_params(theta0, theta1, alphas)
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(grid):
    l0 = jax.tree_util.tree_flatten_with_path(theta0)[0]
    ref0 = dict(l0)[key_path]
    ref1 = dict(jax.tree_util.tree_flatten_with_path(theta1)[0])[key_path]
    expected = ref0[None] + alphas.reshape((-1,) + (1,) * ref0.ndim) * (ref1 - ref0)[None]
    np.testing.assert_allclose(leaf, expected, rtol=1e-6, atol=1e-6)
  half = geometry.interpolate(theta0, theta1, 0.5)
  np.testing.assert_allclose(half['a'], (theta0['a'] + theta1['a']) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match='shape'):
    geometry.interpolate(theta0, {'a': theta0['a'][:2], 'b': theta0['b']}, 0.5)
  with pytest.raises(ValueError, match='1-D'):
    geometry.alpha_grid_params(theta0, theta1, np.zeros((2, 2)))


def test_eleven_alphas_run_as_one_compiled_program(tiny):
  model, params, tree, tokens = tiny
  merged = api.merge(tree)
  traces = []

  def eval_fn(p):
    traces.append(1)  # runs at trace time only
    logits = model.apply({'params': p}, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))
    return {'nll': nll, 'last_logits': logits[:, -1]}

  alphas = geometry.linspace_alphas(11)
  batched = geometry.evaluate_alpha_grid(eval_fn, params, merged, alphas)
  assert len(traces) == 1 and batched['nll'].shape == (11,)
  geometry.evaluate_alpha_grid(eval_fn, params, merged, alphas)  # cached: no retrace
  assert len(traces) == 1
  # The jaxpr of the whole grid holds one vmapped model, not 11 copies: as many dot_generals as
  # one evaluation.
  grid_jaxpr = str(
    jax.make_jaxpr(
      lambda a: jax.vmap(lambda x: eval_fn(geometry.interpolate(params, merged, x)))(a)
    )(alphas)
  )
  one_jaxpr = str(jax.make_jaxpr(eval_fn)(params))
  assert grid_jaxpr.count('dot_general') == one_jaxpr.count('dot_general')
  single = jax.jit(lambda p: eval_fn(p))
  for i, alpha in enumerate(alphas):
    expected = single(geometry.interpolate(params, merged, alpha))
    np.testing.assert_allclose(batched['nll'][i], expected['nll'], rtol=1e-5)
    np.testing.assert_allclose(
      batched['last_logits'][i], expected['last_logits'], rtol=1e-5, atol=1e-5
    )
  mapped = geometry.evaluate_alpha_grid(eval_fn, params, merged, alphas, mode='map')
  np.testing.assert_allclose(mapped['nll'], batched['nll'], rtol=1e-5)
  # Stacked-params form (used for method paths) agrees too.
  stacked = geometry.evaluate_stacked(eval_fn, geometry.alpha_grid_params(params, merged, alphas))
  np.testing.assert_allclose(stacked['nll'], batched['nll'], rtol=1e-5)
  with pytest.raises(ValueError, match="mode='scan'"):
    geometry.evaluate_alpha_grid(eval_fn, params, merged, alphas, mode='scan')


def _np_skew(packed, block):
  rows, cols = np.triu_indices(block, 1)
  q = np.zeros((packed.shape[0], block, block))
  q[:, rows, cols] = packed
  return q - np.swapaxes(q, 1, 2)


def _np_cayley_kernel(w0, packed, alpha, block):
  """Exact-Cayley OFT (PEFT convention R = (I - Q)(I + Q)^-1), generator scaled by α, float64."""
  q = alpha * _np_skew(np.asarray(packed, np.float64), block)
  eye = np.eye(block)
  rotation = np.zeros((w0.shape[0],) * 2)
  for j, qj in enumerate(q):
    rotation[j * block : (j + 1) * block, j * block : (j + 1) * block] = (eye - qj) @ np.linalg.inv(
      eye + qj
    )
  return rotation @ np.asarray(w0, np.float64)  # Flax layout: W(α) = R_bd(α) W0


def test_oft_cayley_path_vs_additive_path(tiny):
  """Cayley: W(α) = R(αQ)_bd W0 stays a rotation of W0 (singular values kept); additive:
  W0 + α(R(Q)_bd W0 - W0) leaves the orthogonal orbit and shrinks W (||(1-α)I + αR|| <= 1)."""
  _, params, tree, _ = tiny
  alphas = geometry.linspace_alphas(11)
  cayley = geometry.method_path_grid(tree, alphas, api.path)
  additive = geometry.alpha_grid_params(params, api.merge(tree), alphas)
  for layer in ('layers_0', 'layers_1'):
    for name in ('q_proj', 'v_proj'):
      node = tree[layer]['self_attn'][name]['kernel']
      w0 = np.asarray(node.base, np.float64)
      w_full = _np_cayley_kernel(w0, node.params['oft_r'], 1.0, BLOCK)
      sv0 = np.linalg.svd(w0, compute_uv=False)
      gaps = []
      for i, alpha in enumerate(np.float64(alphas)):
        w_cayley = _np_cayley_kernel(w0, node.params['oft_r'], alpha, BLOCK)
        w_additive = w0 + alpha * (w_full - w0)
        np.testing.assert_allclose(
          cayley[layer]['self_attn'][name]['kernel'][i], w_cayley, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
          additive[layer]['self_attn'][name]['kernel'][i], w_additive, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(np.linalg.svd(w_cayley, compute_uv=False), sv0, rtol=1e-9)
        assert np.linalg.norm(w_additive) <= np.linalg.norm(w0) * (1 + 1e-12)
        gaps.append(np.linalg.norm(w_cayley - w_additive))
      assert gaps[0] < 1e-12 and gaps[-1] < 1e-9  # the two paths share both end points
      assert min(gaps[1:-1]) > 1e-3 * np.linalg.norm(w0)  # and differ strictly in between
  # PEFT-Arena's sqrt(α) generator schedule: the kernel at α is the t = sqrt(α) Cayley kernel.
  sqrt_grid = geometry.method_path_grid(tree, alphas, api.path, schedule=jnp.sqrt)
  node = tree['layers_1']['self_attn']['q_proj']['kernel']
  for i in (2, 5):
    np.testing.assert_allclose(
      sqrt_grid['layers_1']['self_attn']['q_proj']['kernel'][i],
      _np_cayley_kernel(
        np.asarray(node.base, np.float64),
        node.params['oft_r'],
        np.sqrt(np.float64(alphas[i])),
        BLOCK,
      ),
      rtol=1e-5,
      atol=1e-5,
    )
  # Unadapted weights are the same on both paths.
  np.testing.assert_array_equal(
    cayley['layers_0']['mlp']['up_proj']['kernel'], additive['layers_0']['mlp']['up_proj']['kernel']
  )


def test_pareto_front_and_best_tradeoff():
  rng = np.random.default_rng(1)
  points = np.round(rng.random((30, 2)), 1)  # rounding makes ties and duplicates
  front = np.asarray(geometry.pareto_front(points))
  for i, p in enumerate(points):
    dominated = any(np.all(q >= p) and np.any(q > p) for q in points)
    assert front[i] == (not dominated)
  alphas = geometry.linspace_alphas(11)
  target, general = rng.random(11), rng.random(11)
  for weight in (0.0, 0.3, 1.0):
    alpha, index, score = geometry.best_tradeoff(alphas, target, general, weight)
    scores = weight * target + (1 - weight) * general
    assert int(index) == int(np.argmax(scores))
    assert float(alpha) == pytest.approx(alphas[np.argmax(scores)])
    assert float(score) == pytest.approx(scores.max(), rel=1e-6)
  with pytest.raises(ValueError, match='weight'):
    geometry.best_tradeoff(alphas, target, general, 1.5)
