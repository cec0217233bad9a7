"""The real tiny Decoder trained 20 steps (LoRA and full FT) on meshes (1,1,8), (1,2,4), (2,2,2)
and (8,1,1) of 8 CPU devices gives the single-device losses, with params, adapters and optimizer
state placed as the logical-axis rules say, activations constrained by the same rules (the
trainer's loss), and the step compiled once."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from peft_jax import models, parallel
from peft_jax.adapters import api as adapters
from peft_jax.data import sft
from peft_jax.train.setup import setup_training
from peft_jax.train.trainer import make_loss_fn

STEPS = 20
CONFIG = models.ModelConfig(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
)
OPT = dict(peak_lr=3e-3, total_steps=STEPS, warmup_steps=2, weight_decay=0.01, clip_norm=1.0)


def _batches():
  rows = [
    {'prompt': f'What is {i} plus {i % 7}? ', 'completion': f'{i + i % 7}.'} for i in range(48)
  ]
  arrays = sft.build_sft_arrays(rows, sft.ByteTokenizer(64), seq_len=32, packing=True)
  iterator = sft.SFTIterator(arrays, 8, seed=0)
  out = []
  for _ in range(STEPS):
    batch = next(iterator)
    out.append(dict(batch, loss_mask=batch['loss_mask'].astype(np.float32)))
  return out


BATCHES = _batches()


def _run(method, mesh, config=CONFIG, steps=STEPS):
  model = models.Decoder(config)
  params = models.init_params(config, jax.random.PRNGKey(0))
  if method == 'lora':
    adapter = adapters.LoRA(rank=4, alpha=8.0)
    params = adapters.inject(
      params, adapter, ['q_proj', 'k_proj', 'v_proj', 'up_proj'], jax.random.PRNGKey(1)
    )
  else:  # full fine-tuning of every parameter, through Full like every method
    adapter = adapters.Full()
    params = adapters.inject(params, adapter, None)
  training = setup_training(
    params,
    models.param_logical_axes(params, config),
    # the trainer's loss: activations constrained by the same rules as the params
    loss_fn=make_loss_fn(model, adapter, mesh),
    partition_fn=adapters.partition,
    mesh=mesh,
    optimizer_kwargs=OPT,
  )
  state, losses = training.state, []
  for batch in BATCHES[:steps]:
    state, metrics = training.train_step(
      state, training.frozen, parallel.global_batch(batch, mesh, 8)
    )
    losses.append(float(metrics['loss']))
  return training, state, np.array(losses)


@pytest.fixture(scope='module')
def single_device():
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  return {m: _run(m, mesh)[2] for m in ('lora', 'full')}


def _adam_mu(opt_state):
  (adam,) = [s for s in opt_state if isinstance(s, optax.ScaleByAdamState)]
  return adam.mu


@pytest.mark.parametrize('method', ['lora', 'full'])
@pytest.mark.parametrize('mesh_shape', [(1, 1, 8), (1, 2, 4), (2, 2, 2), (8, 1, 1)])
def test_sharded_losses_and_placement(single_device, method, mesh_shape):
  mesh = parallel.make_mesh(mesh_shape)
  training, state, losses = _run(method, mesh)
  np.testing.assert_allclose(losses, single_device[method], rtol=1e-5)
  assert losses[-5:].mean() < losses[:5].mean()  # it learns
  assert training.train_step._cache_size() == 1  # one compilation for 20 steps
  data, fsdp, tensor = mesh_shape
  # Expected specs from the default rules: embed -> fsdp, heads/kv/mlp/vocab -> tensor,
  # rank/norm replicated; on this model every such dim divides every mesh above.
  q_spec = P('fsdp', 'tensor')
  mu = _adam_mu(state.opt_state)
  layer = state.params['layers_0']
  if method == 'full':
    w = lambda node: node.params['weight']  # Full's trained weight
    for tree in (layer, mu['layers_0']):
      assert w(tree['self_attn']['q_proj']['kernel']).sharding.spec == q_spec
      assert w(tree['self_attn']['o_proj']['kernel']).sharding.spec == P('tensor', 'fsdp')
      assert w(tree['mlp']['down_proj']['kernel']).sharding.spec == P('tensor', 'fsdp')
      assert w(tree['input_layernorm']['scale']).sharding.spec == P(None)
    assert w(state.params['embed_tokens']['embedding']).sharding.spec == P('tensor', 'fsdp')
    # a sharded array really is split: each device holds 1/(fsdp*tensor) of q_proj
    q = w(layer['self_attn']['q_proj']['kernel'])
    assert q.addressable_shards[0].data.size == q.size // (fsdp * tensor)
  else:
    node, mu_node = (
      layer['self_attn']['q_proj']['kernel'],
      mu['layers_0']['self_attn']['q_proj']['kernel'],
    )
    for tree in (node.params, mu_node.params):
      assert tree['lora_a'].sharding.spec == P('fsdp', None)
      assert tree['lora_b'].sharding.spec == P(None, 'tensor')
    frozen_q = training.frozen['layers_0']['self_attn']['q_proj']['kernel'].base
    assert frozen_q.sharding.spec == q_spec
    assert training.frozen['embed_tokens']['embedding'].sharding.spec == P('tensor', 'fsdp')
    # frozen weights get no optimizer state: Adam's moments hold exactly the LoRA factors
    names = sorted(parallel.named_leaves(mu))
    assert names == sorted(parallel.named_leaves(state.params))
    assert len(names) == 2 * 2 * 4 and all(n.endswith(('lora_a', 'lora_b')) for n in names)
  assert state.step.sharding.spec == P()


def test_scanned_layers_train_as_unrolled(single_device):
  """Layers scanned over params stacked on a 'layers' axis (replicated by the rules), remat inside
  the scan body: the first 5 LoRA losses on a (2, 2, 2) mesh equal the unrolled single-device
  run's (no remat)."""
  mesh = parallel.make_mesh((2, 2, 2))
  config = CONFIG.replace(scan_layers=True, remat=True)
  training, state, losses = _run('lora', mesh, config, steps=5)
  np.testing.assert_allclose(losses, single_device['lora'][:5], rtol=1e-5)
  assert training.train_step._cache_size() == 1
  block = state.params['layers']['block_0']
  node = block['self_attn']['q_proj']['kernel']
  assert node.params['lora_a'].shape == (2, 32, 4)
  assert node.params['lora_a'].sharding.spec == P(None, 'fsdp', None)
  assert node.params['lora_b'].sharding.spec == P(None, None, 'tensor')
  frozen = training.frozen['layers']['block_0']
  assert frozen['self_attn']['q_proj']['kernel'].base.sharding.spec == P(None, 'fsdp', 'tensor')
  assert frozen['mlp']['down_proj']['kernel'].sharding.spec == P(None, 'tensor', 'fsdp')
