"""Activation sharding constraints (``models.activation_sharding``) on 8 CPU devices.

The decoder's activations get the placement the rules table gives their logical names (checked
on the arrays a jitted forward returns), the constraints appear in the lowered program only
inside the context, and in the trainer's compiled FSDP step they make XLA gather weights instead
of moving activations. That they leave the numbers unchanged is tested by
``test_sharded_training.py`` and ``test_multiprocess.py``, whose sharded runs are constrained.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from peft_jax import models, parallel
from peft_jax.train import default_config
from peft_jax.train import plan as planner

CONFIG = models.ModelConfig(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
)


@pytest.fixture(scope='module')
def params():
  return models.init_params(CONFIG, jax.random.PRNGKey(0))


def _forward(mesh, rules):
  model = models.Decoder(CONFIG)

  def forward(p, tokens):
    with models.activation_sharding(mesh, parallel.normalize_rules(rules)):
      return model.apply({'params': p}, tokens, capture=('residual', 'q_proj', 'up_proj'))

  return forward


@pytest.mark.parametrize(
  'batch, residual, projection',
  [
    # batch divides data x fsdp: split over both; embed's fsdp is then taken, so replicated.
    (8, P(('data', 'fsdp'), None, None), P(('data', 'fsdp'), None, 'tensor')),
    # batch 2 divides only data: the rules' prefix fallback, and embed gets fsdp.
    (2, P('data', None, 'fsdp'), P('data', None, 'tensor')),
  ],
)
def test_activations_get_the_rules_placement(params, batch, residual, projection):
  mesh = parallel.make_mesh((2, 2, 2))
  tokens = jnp.zeros((batch, 16), jnp.int32)
  logits, captures = jax.jit(_forward(mesh, None))(params, tokens)
  same = lambda x, spec: x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim)
  for i in range(CONFIG.num_layers):
    assert same(captures[f'layers_{i}/residual'], residual)
    assert same(captures[f'layers_{i}/self_attn/q_proj/out'], projection)
    assert same(captures[f'layers_{i}/mlp/up_proj/out'], projection)
  assert same(logits, projection)  # vocab -> tensor


def test_custom_rules_move_the_activations(params):
  mesh = parallel.make_mesh((2, 2, 2))
  rules = [('batch', 'data'), ('length', 'fsdp'), ('heads', None), ('mlp', 'tensor')]
  _, captures = jax.jit(_forward(mesh, rules))(params, jnp.zeros((8, 16), jnp.int32))
  q = captures['layers_0/self_attn/q_proj/out']
  assert q.sharding.is_equivalent_to(NamedSharding(mesh, P('data', 'fsdp', None)), 3)


def test_constraints_only_inside_the_context(params):
  mesh = parallel.make_mesh((2, 2, 2))
  tokens = jnp.zeros((8, 16), jnp.int32)
  inside = jax.jit(_forward(mesh, None)).lower(params, tokens).as_text()
  model = models.Decoder(CONFIG)
  outside = jax.jit(lambda p, t: model.apply({'params': p}, t)).lower(params, tokens).as_text()
  # Per layer: q, k, v, attention output, o_proj, gate, up, hidden, down, layer output; plus the
  # embeddings and the logits.
  assert inside.count('sdy.sharding_constraint') == 10 * CONFIG.num_layers + 2
  assert outside.count('sdy.sharding_constraint') == 0
  assert '[{"data", "fsdp"}, {}, {}]' in inside


def test_fsdp_step_gathers_weights_not_activations():
  """On a (1, 8, 1) mesh the trainer's step all-gathers only whole parameters (and the token
  ids for the embedding lookup), and all-reduces only gradients: no collective carries the
  batch's B·T = 128 token rows of an activation."""
  config = default_config()
  config.mesh_shape = (1, 8, 1)
  config.model.hidden_size, config.model.intermediate_size = 64, 96
  config.batch_size, config.data.seq_len = 8, 16
  abstract = planner.build(config)
  text = abstract.plan.train_step.lower(*abstract.args).compile().as_text()
  param_shapes = set()
  for x in jax.tree.leaves(abstract.params_shape):
    param_shapes |= {tuple(x.shape), tuple(x.shape)[::-1]}
  gathers = re.findall(r'= \w+\[([\d,]*)\]\S* all-gather\(', text)
  assert gathers, 'an FSDP step must gather its weights'
  for dims in gathers:
    shape = tuple(int(d) for d in dims.split(','))
    assert shape in param_shapes or shape == (8, 16, 1), shape
  for line in re.findall(r'= .* all-reduce\(', text):
    shapes = re.findall(r'\[([\d,]*)\]', line)
    assert all('128' not in dims.split(',') for dims in shapes), line
