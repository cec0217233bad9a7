"""The planner (``peft_jax.train.plan``) against a real sharded run on 8 CPU devices.

A tiny decoder is trained (one step) for real by ``train.train`` on a (data 2, fsdp 2, tensor 2) mesh; the
planner, given the same config and no weights, must report exactly the per-device bytes XLA's
``memory_analysis`` gives the real run's compiled step, and per-device parameter and optimizer
bytes equal to what each device really holds (its shards of the live arrays).
"""

import json

import jax
import numpy as np
import pytest

from peft_jax.parallel import plan as accounting
from peft_jax.train import default_config, train
from peft_jax.train import plan as planner


def _config(data_path):
  config = default_config()
  config.data.path = data_path
  config.model.dtype = 'bfloat16'
  config.adapter.targets = ('q_proj', 'v_proj', 'up_proj')
  config.mesh_shape = (2, 2, 2)
  config.total_steps = 1
  config.optimizer.warmup_steps = 0
  config.checkpoint.every_steps = 1
  config.progress_bar = False
  return config


@pytest.fixture(scope='module')
def real_and_planned(data_path, tmp_path_factory):
  config = _config(data_path)
  result = train(config, str(tmp_path_factory.mktemp('run')))
  real_memory = accounting.memory_stats(result.lower_step().compile())
  report = planner.plan(config)
  return config, result, real_memory, report


def _shard_bytes(tree):
  """Bytes of the shard device 0 really holds, over every array of ``tree``."""
  device = jax.devices()[0]
  total = 0
  for x in jax.tree.leaves(tree):
    (shard,) = [s for s in x.addressable_shards if s.device == device]
    total += shard.data.nbytes
  return total


def test_planned_memory_equals_real_compiled_step(real_and_planned):
  _, _, real_memory, report = real_and_planned
  assert report['devices'] == 8
  assert report['memory_per_device'] == real_memory
  assert real_memory['argument_size_in_bytes'] > 0 and real_memory['temp_size_in_bytes'] > 0


def test_parameter_bytes_per_device_equal_real_shards(real_and_planned):
  _, result, real_memory, report = real_and_planned
  analytic = report['analytic_per_device']
  assert analytic['frozen_params'] == _shard_bytes(result.frozen)
  assert analytic['trainable_params'] == _shard_bytes(result.state.params)
  assert analytic['optimizer_state'] == _shard_bytes(result.state.opt_state)
  # The step's arguments are exactly the state, the frozen base and the batch.
  arguments = sum(
    analytic[k]
    for k in ('frozen_params', 'trainable_params', 'optimizer_state', 'step_and_rng', 'batch')
  )
  assert arguments == real_memory['argument_size_in_bytes']
  # Batch [8, 32] int32 x 3 + float32 loss mask split 4 ways (data x fsdp).
  assert analytic['batch'] == 4 * (8 // 4) * 32 * 4


def test_sharding_table_and_replication(real_and_planned):
  _, result, _, report = real_and_planned
  frozen = {row['group']: row for row in report['sharding_groups']['frozen']}
  q = frozen['layers_*/self_attn/q_proj/kernel/base']
  assert q['shape'] == [32, 32] and q['spec'] == ['fsdp', 'tensor'] and q['count'] == 2
  assert q['shard_shape'] == [16, 16]
  assert frozen['layers_*/input_layernorm/scale']['spec'] == [None]
  # Replicated fraction from the real arrays: elements of fully replicated leaves.
  leaves = jax.tree.leaves((result.state.params, result.frozen))
  replicated = sum(x.size for x in leaves if x.sharding.is_fully_replicated)
  np.testing.assert_allclose(
    report['params']['replicated_fraction'], replicated / sum(x.size for x in leaves), rtol=1e-12
  )
  assert report['params']['total'] == sum(x.size for x in leaves)
  json.dumps(report)  # JSON-ready


def test_abstract_build_allocates_nothing_and_checks_devices():
  config = planner.planner_config('llama2-7b', 'data:32,fsdp:8', batch_size=256, seq_len=2048)
  assert tuple(config.mesh_shape) == (32, 8, 1) and config.model.dtype == 'bfloat16'
  with pytest.raises(ValueError, match='xla_force_host_platform_device_count=256'):
    planner.build(config)


def test_parse_mesh_errors():
  assert accounting.parse_mesh('fsdp:4,tensor:2') == (1, 4, 2)
  for bad, message in (
    ('data:2,data:4', 'given twice'),
    ('pipe:2', 'AXIS:SIZE'),
    ('data:0', 'positive integer'),
    ('', 'names no axis'),
  ):
    with pytest.raises(ValueError, match=message):
      accounting.parse_mesh(bad)
