"""Mesh construction, rules on the real Decoder tree, batch placement and distributed start-up
arguments (single process)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from peft_jax import models, parallel
from peft_jax.adapters import api as adapters


def test_make_mesh_fills_and_validates():
  mesh = parallel.make_mesh((2, -1, 2))
  assert mesh.shape == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert list(mesh.devices.flat) == jax.devices()
  with pytest.raises(ValueError, match='product 12 .* 8 devices'):
    parallel.make_mesh((2, 2, 3))
  with pytest.raises(ValueError, match='at most one'):
    parallel.make_mesh((-1, -1, 2))
  with pytest.raises(ValueError, match='one size per axis'):
    parallel.make_mesh((8,))


def test_rules_on_decoder_with_dora_and_overrides():
  config = models.ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
  )
  params = jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))
  params = adapters.inject(
    jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params),
    adapters.DoRA(rank=4, alpha=8.0),
    ['v_proj'],
    jax.random.PRNGKey(1),
  )
  axes = models.param_logical_axes(params, config)
  mesh = parallel.make_mesh((1, 2, 4))
  shardings = parallel.logical_to_sharding(axes, mesh, shapes=params)
  v = shardings['layers_0']['self_attn']['v_proj']['kernel']
  # v_proj [32, 16] ('embed', 'kv'); DoRA magnitude follows the output axis
  assert v.base.spec == P('fsdp', 'tensor')
  assert v.params['lora_a'].spec == P('fsdp', None)
  assert v.params['lora_b'].spec == P(None, 'tensor')
  assert v.params['magnitude'].spec == P('tensor')
  # a rules override from config: shard the vocabulary over fsdp instead, embed replicated
  rules = [('vocab', 'fsdp'), ('embed', None)]
  custom = parallel.logical_to_sharding(axes, mesh, rules, shapes=params)
  assert custom['embed_tokens']['embedding'].spec == P('fsdp', None)
  # a (1,1,8) mesh: k_proj [32, 16] ('embed', 'kv'), 16 % 8 == 0 -> sharded over tensor
  mesh8 = parallel.make_mesh((1, 1, 8))
  k = parallel.logical_to_sharding(axes, mesh8, shapes=params)['layers_0']['self_attn']['k_proj']
  assert k['kernel'].spec == P('fsdp', 'tensor')
  # ... while a rank-4 dim that a rule maps to 'tensor' falls back to replication
  assert parallel.logical_to_spec(
    ('rank', 'kv'), (4, 16), mesh8, [('rank', 'tensor'), ('kv', 'tensor')]
  ) == P(None, 'tensor')


def test_global_batch_and_process_slices():
  mesh = parallel.make_mesh((2, 2, 2))
  tokens = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
  batch = parallel.global_batch({'tokens': tokens}, mesh, 8)
  assert batch['tokens'].sharding.spec == P(('data', 'fsdp'), None)
  np.testing.assert_array_equal(np.asarray(batch['tokens']), tokens)
  assert batch['tokens'].addressable_shards[0].data.shape == (2, 5)
  assert parallel.process_batch_slice(8, 1, 2) == slice(4, 8)
  with pytest.raises(ValueError, match='not divisible'):
    parallel.process_batch_slice(7, 0, 2)


def test_initialize_distributed_arguments(monkeypatch):
  for name in ('PEFT_JAX_COORDINATOR_ADDRESS', 'PEFT_JAX_NUM_PROCESSES', 'PEFT_JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize_distributed() is False  # single process: nothing to start
  with pytest.raises(ValueError, match=r"missing: \['process_id'\]"):
    parallel.initialize_distributed('127.0.0.1:1234', 2)
  monkeypatch.setenv('PEFT_JAX_COORDINATOR_ADDRESS', '127.0.0.1:1234')
  monkeypatch.setenv('PEFT_JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('PEFT_JAX_PROCESS_ID', '5')
  with pytest.raises(ValueError, match=r'process_id=5 must be in \[0, num_processes=2\)'):
    parallel.initialize_distributed()
