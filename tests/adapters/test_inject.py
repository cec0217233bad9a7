"""Injection rules (PEFT target semantics), partition/combine, merge/delta/path over trees,
count_params and logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted, is_adapted, matmul


def _params():
  keys = iter(jax.random.split(jax.random.key(0), 32))

  def w(*shape):
    return jax.random.normal(next(keys), shape) / 4

  layers = {}
  for i in range(3):
    layers[f'layers_{i}'] = {
      'input_layernorm': {'scale': jnp.ones(16)},
      'self_attn': {
        'q_proj': {'kernel': w(16, 16), 'bias': jnp.zeros(16)},
        'k_proj': {'kernel': w(16, 8)},
        'v_proj': {'kernel': w(16, 8)},
        'o_proj': {'kernel': w(16, 16)},
      },
      'mlp': {
        'gate_proj': {'kernel': w(16, 24)},
        'up_proj': {'kernel': w(16, 24)},
        'down_proj': {'kernel': w(24, 16)},
      },
    }
  return {
    'embed_tokens': {'embedding': w(32, 16)},
    **layers,
    'norm': {'scale': jnp.ones(16)},
    'lm_head': {'kernel': w(16, 32)},
  }


@pytest.fixture(scope='module')
def params():
  return _params()


def _targets(tree):
  return sorted(p for p in api.adapted_nodes(tree))


def test_module_names_follow_hf(params):
  names = api.linear_modules(params)
  assert names['model.layers.2.self_attn.q_proj'] == 'layers_2/self_attn/q_proj/kernel'
  assert names['lm_head'] == 'lm_head/kernel'
  assert len(names) == 3 * 7 + 1  # embeddings and norms are not linear layers
  assert api.default_module_name('layers_10/mlp/down_proj') == 'model.layers.10.mlp.down_proj'


def test_list_targets_are_exact_or_dot_suffix(params):
  key = jax.random.key(1)
  tree = api.inject(params, api.LoRA(rank=2), ['q_proj', 'mlp.down_proj'], key)
  assert _targets(tree) == sorted(
    [f'layers_{i}/self_attn/q_proj/kernel' for i in range(3)]
    + [f'layers_{i}/mlp/down_proj/kernel' for i in range(3)]
  )
  tree = api.inject(params, api.LoRA(rank=2), ['model.layers.1.self_attn.v_proj'], key)
  assert _targets(tree) == ['layers_1/self_attn/v_proj/kernel']
  with pytest.raises(
    ValueError,
    match=r"\['proj'\].*matched no linear weight; available module "
    r'names are: lm_head, model\.layers\.0\.mlp\.down_proj',
  ):
    api.inject(params, api.LoRA(rank=2), ['proj'], key)


def test_regex_all_linear_layers_and_exclude(params):
  key = jax.random.key(1)
  tree = api.inject(params, api.LoRA(rank=2), r'.*\.layers\.[01]\.self_attn\.(q|v)_proj', key)
  assert len(_targets(tree)) == 4
  with pytest.raises(ValueError, match='matched no linear weight'):
    api.inject(params, api.LoRA(rank=2), 'q_proj', key)  # a string must match the whole name
  tree = api.inject(params, api.LoRA(rank=2), 'all-linear', key)
  assert len(_targets(tree)) == 21 and 'lm_head/kernel' not in _targets(tree)
  tree = api.inject(
    params,
    api.LoRA(rank=2),
    ['q_proj', 'v_proj'],
    key,
    layers_to_transform=[0, 2],
    exclude_modules=['model.layers.2.self_attn.v_proj'],
  )
  assert _targets(tree) == [
    'layers_0/self_attn/q_proj/kernel',
    'layers_0/self_attn/v_proj/kernel',
    'layers_2/self_attn/q_proj/kernel',
  ]
  tree = api.inject(params, api.LoRA(rank=2), ['o_proj'], key, layers_to_transform=1)
  assert _targets(tree) == ['layers_1/self_attn/o_proj/kernel']


def test_multi_rule_first_match_wins(params):
  rules = [
    (api.LoRA(rank=2), ['q_proj', 'v_proj']),
    (api.OFT(block_size=8), ['down_proj']),
    (api.VeRA(rank=4), ['up_proj']),
  ]
  tree = api.inject(params, rules, key=jax.random.key(3))
  nodes = api.adapted_nodes(tree)
  assert {type(n.method).__name__ for n in nodes.values()} == {'LoRA', 'OFT', 'VeRA'}
  assert isinstance(nodes['layers_1/mlp/down_proj/kernel'].method, api.OFT)
  tree = api.inject(
    params,
    [(api.LoRA(rank=4), ['q_proj']), (api.DoRA(rank=2), 'all-linear')],
    key=jax.random.key(3),
  )
  nodes = api.adapted_nodes(tree)
  assert len(nodes) == 21
  assert nodes['layers_2/self_attn/q_proj/kernel'].method == api.LoRA(rank=4)
  assert nodes['layers_2/self_attn/k_proj/kernel'].method == api.DoRA(rank=2)
  with pytest.raises(ValueError, match=r'block_size=5 does not divide d_in=16'):
    api.inject(params, api.OFT(block_size=5), ['q_proj'], jax.random.key(3))
  with pytest.raises(ValueError, match=r'rank=9 is invalid for a kernel of shape \(16, 8\)'):
    api.inject(params, api.LoRA(rank=9), ['v_proj'], jax.random.key(3))


TRAINABLE = {
  'lora': (api.LoRA(rank=2), {'lora_a', 'lora_b'}, set()),
  'dora': (api.DoRA(rank=2), {'lora_a', 'lora_b', 'magnitude'}, set()),
  'pissa': (api.PiSSA(rank=2), {'lora_a', 'lora_b'}, {'lora_a0', 'lora_b0'}),
  'vera': (api.VeRA(rank=4), {'lambda_d', 'lambda_b'}, {'vera_a', 'vera_b'}),
  'oft': (api.OFT(block_size=8), {'oft_r'}, set()),
  'miss': (api.MiSS(rank=4), {'miss_block'}, set()),
  'disel': (api.DISeL(rank=2), {'lora_a', 'lora_b', 'gate_w', 'gate_b'}, set()),
  'full': (api.Full(scope='linear'), {'weight'}, set()),
}


@pytest.mark.parametrize('name', sorted(TRAINABLE))
def test_partition_combine_and_train_step(name, params):
  method, trainable_names, frozen_names = TRAINABLE[name]
  tree = api.inject(params, method, ['q_proj', 'down_proj'], jax.random.key(2))
  trainable, frozen = api.partition(tree)
  node_t = trainable['layers_0']['self_attn']['q_proj']['kernel']
  node_f = frozen['layers_0']['self_attn']['q_proj']['kernel']
  assert set(node_t.params) == trainable_names and node_t.base is None
  assert set(node_f.frozen) == frozen_names and all(v is None for v in node_f.params.values())
  assert trainable['layers_0']['input_layernorm']['scale'] is None
  # Only adapter params are trainable leaves.
  n_leaves = len(jax.tree.leaves(trainable))
  assert n_leaves == 6 * len(trainable_names)
  rebuilt = api.combine(trainable, frozen)
  assert jax.tree.structure(rebuilt) == jax.tree.structure(tree)
  for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(tree)):
    assert a is b
  # A jitted optax step over the trainable half changes only adapter params.
  x = jax.random.normal(jax.random.key(5), (4, 16))
  opt = optax.sgd(0.1)

  @jax.jit
  def step(trainable, opt_state):
    def loss(t):
      full = api.combine(t, frozen)
      h = matmul(x, full['layers_0']['self_attn']['q_proj']['kernel'])
      return jnp.sum(jnp.sin(h))

    grads = jax.grad(loss)(trainable)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(trainable, updates), opt_state

  new_trainable, opt_state = step(trainable, opt.init(trainable))
  assert jax.tree.structure(new_trainable) == jax.tree.structure(trainable)
  step(new_trainable, opt_state)
  assert step._cache_size() == 1  # pylint: disable=protected-access  # the second step reuses it


def test_merge_delta_path_over_tree(params):
  tree = api.inject(
    params,
    [
      (api.LoRA(rank=2, alpha=4), ['q_proj']),
      (api.OFT(block_size=8, use_cayley_neumann=False), ['down_proj']),
    ],
    key=jax.random.key(4),
  )

  def bump(node):
    if not is_adapted(node):
      return node
    return Adapted(
      node.base, jax.tree.map(lambda v: v + 0.1, node.params), node.frozen, node.method
    )

  tree = jax.tree.map(bump, tree, is_leaf=is_adapted)
  merged = api.merge(tree)
  assert not any(is_adapted(v) for v in jax.tree.leaves(merged, is_leaf=is_adapted))
  deltas = api.delta(tree)
  assert sorted(deltas) == _targets(tree)
  for p, d in deltas.items():
    parts = p.split('/')
    w0 = params[parts[0]][parts[1]][parts[2]]['kernel']
    got = merged[parts[0]][parts[1]][parts[2]]['kernel']
    np.testing.assert_allclose(got, w0 + d, atol=1e-6)
  p0, p1 = api.path(tree, 0.0), api.path(tree, 1.0)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(merged)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Per-layer scale hook: rewind layer 0's q_proj while the rest stays at t=1.
  scaled = api.path(tree, 1.0, layer_scales={'layers_0/self_attn/q_proj/kernel': 0.0})
  np.testing.assert_allclose(
    scaled['layers_0']['self_attn']['q_proj']['kernel'],
    params['layers_0']['self_attn']['q_proj']['kernel'],
    atol=1e-6,
  )
  np.testing.assert_allclose(
    scaled['layers_1']['self_attn']['q_proj']['kernel'],
    merged['layers_1']['self_attn']['q_proj']['kernel'],
    atol=1e-6,
  )
  with pytest.raises(ValueError, match='layer_scales keys'):
    api.path(tree, 1.0, layer_scales={'layers_0/mlp/up_proj/kernel': 0.5})
  # The whole tree path is vmap-able over t.
  grid = jax.jit(jax.vmap(lambda t: api.path(tree, t)))(jnp.linspace(0, 1, 3))
  assert grid['layers_0']['mlp']['down_proj']['kernel'].shape == (3, 24, 16)
  dense = api.path(tree, 0.5, method_fn='dense_path')
  np.testing.assert_allclose(
    dense['layers_0']['mlp']['down_proj']['kernel'],
    (
      params['layers_0']['mlp']['down_proj']['kernel']
      + merged['layers_0']['mlp']['down_proj']['kernel']
    )
    / 2,
    atol=1e-6,
  )


def test_count_params_and_logical_axes(params):
  tree = api.inject(params, api.LoRA(rank=2), ['q_proj', 'down_proj'], jax.random.key(0))
  counts = api.count_params(tree)
  base_total = sum(x.size for x in jax.tree.leaves(params))
  trainable = 3 * (16 * 2 + 2 * 16) + 3 * (24 * 2 + 2 * 16)
  assert counts == {'trainable': trainable, 'total': base_total + trainable}
  node = tree['layers_0']['mlp']['down_proj']['kernel']
  axes = api.adapter_logical_axes(node, ('mlp', 'embed'))
  assert axes.base == ('mlp', 'embed')
  assert axes.params == {'lora_a': ('mlp', 'rank'), 'lora_b': ('rank', 'embed')}
  dora = api.DoRA(rank=2).init(jax.random.key(0), node.base)
  assert api.adapter_logical_axes(dora, ('mlp', 'embed')).params['magnitude'] == ('embed',)
  oft = api.OFT(block_size=8).init(None, node.base)
  assert api.adapter_logical_axes(oft, ('mlp', 'embed')).params == {'oft_r': ('blocks', None)}
  vera = api.VeRA(rank=4).init(jax.random.key(0), node.base)
  assert api.adapter_logical_axes(vera, ('mlp', 'embed')).params == {
    'lambda_d': ('rank',),
    'lambda_b': ('embed',),
  }
  # Every array of every method has one axis name per dimension.
  for method, _, _ in TRAINABLE.values():
    n = method.init(jax.random.key(0), node.base)
    ax = api.adapter_logical_axes(n, ('mlp', 'embed'))
    for group, group_axes in ((n.params, ax.params), (n.frozen, ax.frozen)):
      assert set(group) == set(group_axes)
      for k, v in group.items():
        assert len(group_axes[k]) == v.ndim, (method, k)


def test_make_method_by_name():
  assert api.make_method('lora', rank=8, alpha=16) == api.LoRA(rank=8, alpha=16)
  assert api.make_method('oft', block_size=4, use_cayley_neumann=False) == api.OFT(
    block_size=4, use_cayley_neumann=False
  )
  with pytest.raises(ValueError, match=r"unknown adapter method 'lorra'; valid: \['disel'"):
    api.make_method('lorra')
  with pytest.raises(ValueError, match=r"lora: unknown hyper-parameters \['r'\]; valid: \['alpha'"):
    api.make_method('lora', r=8)
