"""train(config, workdir) on the real tiny Decoder: compile once, metrics, trajectory snapshots,
config guard, NaN stop with an intact checkpoint, export, remat/accumulation/bf16, DISeL groups,
and an HF directory whose first loss matches transformers. (Preemption: test_preemption.py.)"""

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from peft_jax import hub, parallel
from peft_jax.adapters import api as adapters
from peft_jax.data import sft
from peft_jax.train import (
  ProgramCache,
  decay_mask,
  default_config,
  load_trajectory,
  lr_multipliers,
  read_metrics,
  train,
)
from peft_jax.train import optimizer as optimizer_lib
from peft_jax.train.trainer import build_model, make_method

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(data_path, **overrides):
  config = default_config()
  config.data.path = data_path
  config.mesh_shape = (2, 2, 2)
  config.total_steps = 8
  config.progress_bar = False
  config.checkpoint.every_steps = 4
  config.checkpoint.snapshot_every = 4
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def lora_run(data_path, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('lora_run'))
  config = _config(data_path, **{'export.adapter': True, 'export.merged': True})
  return config, workdir, train(config, workdir)


def _restore_checkpoint(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
  )
  manager.close()
  return {k: np.asarray(v) for k, v in restored['state'].items()}, dict(restored['data'])


def test_run_compiles_once_logs_and_snapshots(lora_run):
  config, workdir, result = lora_run
  assert result.num_compiles == 1
  assert [s for s, _ in result.losses] == list(range(8))
  rows = read_metrics(workdir)
  assert [r['step'] for r in rows] == list(range(1, 9))
  for key in (
    'loss',
    'grad_norm',
    'lr',
    'tokens_per_second',
    'mfu',
    'update_norm/layers_0',
    'update_norm/layers_1',
    'param_norm',
  ):
    assert all(np.isfinite(r[key]) for r in rows), key
  np.testing.assert_allclose([r['loss'] for r in rows], [l for _, l in result.losses], rtol=1e-7)
  assert rows[0]['lr'] == 0.0 and rows[1]['lr'] == pytest.approx(config.optimizer.peak_lr * 0.5)
  assert any(
    f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard'))
  )
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['optimizer']['peak_lr'] == config.optimizer.peak_lr
  # trajectory: the initial adapter and every 4 steps, all kept; the last equals the final state
  snapshots = load_trajectory(os.path.join(workdir, 'trajectory'), result.state.params)
  assert sorted(snapshots) == [0, 4, 8]
  for a, b in zip(jax.tree.leaves(snapshots[8]), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not all(
    np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(snapshots[0]), jax.tree.leaves(snapshots[4]))
  )
  # the checkpoint holds the iterator position: the state after 8 batches
  _, data_state = _restore_checkpoint(workdir, 8)
  arrays = sft.build_sft_arrays(
    sft.load_rows(config.data.path), sft.ByteTokenizer(64), config.data.seq_len
  )
  iterator = sft.SFTIterator(arrays, config.batch_size, seed=config.seed)
  for _ in range(8):
    next(iterator)
  assert data_state == iterator.get_state()


def test_export_adapter_and_merged(lora_run):
  _, workdir, result = lora_run
  assert os.path.exists(os.path.join(workdir, 'export', 'adapter', 'adapter_config.json'))
  model, merged, _ = hub.load_pretrained(os.path.join(workdir, 'export', 'merged'))
  tokens = np.arange(32, dtype=np.int32).reshape(2, 16) % 64
  expected = result.model.apply({'params': jax.device_get(result.tree)}, tokens)
  got = model.apply({'params': merged}, tokens)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_config_guard_and_noop_resume(lora_run, data_path):
  config, workdir, _ = lora_run
  changed = _config(data_path, **{'optimizer.peak_lr': 1e-2, 'adapter.kwargs': {'rank': 8}})
  with pytest.raises(ValueError, match=r'adapter\.kwargs\.rank.*optimizer\.peak_lr'):
    train(changed, workdir)
  harmless = _config(data_path, **{'log_every': 5, 'export.adapter': True, 'export.merged': False})
  result = train(harmless, workdir)
  assert result.start_step == 8 and result.losses == []


def test_program_cache_compiles_the_step_once_for_every_rate(lora_run, data_path, tmp_path):
  config, workdir, reference = lora_run
  programs = ProgramCache()
  # Another peak learning rate and seed (a sweep's candidate): the step compiles once ...
  first = train(
    _config(data_path, **{'optimizer.peak_lr': 1e-2, 'seed': 1}),
    str(tmp_path / 'a'),
    programs=programs,
  )
  assert first.num_compiles == 1 and (programs.hits, programs.misses) == (0, 1)
  # ... and serves the reference's rate and seed unchanged: no compilation, and bit for bit the
  # losses, learning rates and final state of the uncached reference run.
  again = train(_config(data_path), str(tmp_path / 'b'), programs=programs)
  assert again.num_compiles == 0 and (programs.hits, programs.misses) == (1, 1)
  assert again.losses == reference.losses
  assert [r['lr'] for r in read_metrics(str(tmp_path / 'b'))] == [
    r['lr'] for r in read_metrics(workdir)
  ]
  for a, b in zip(jax.tree.leaves(again.state), jax.tree.leaves(reference.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r['lr'] for r in read_metrics(str(tmp_path / 'a'))][2] == pytest.approx(1e-2)
  # A finished run restores through the cache (its checkpoint carries its rate) and runs nothing.
  restored = train(_config(data_path), str(tmp_path / 'b'), programs=programs)
  assert restored.start_step == 8 and restored.losses == [] and restored.num_compiles == 0
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(reference.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(optimizer_lib.peak_lr_of(restored.state.opt_state)) == np.float32(
    config.optimizer.peak_lr
  )


def test_nan_stops_with_intact_checkpoint(data_path, tmp_path):
  config = _config(data_path, **{'checkpoint.every_steps': 2, 'checkpoint.snapshot_every': 0})

  def poison(step, batch):
    if step == 5:
      batch = dict(batch, loss_mask=batch['loss_mask'].astype(np.float32))
      batch['loss_mask'][0, 3] = np.nan
    return batch

  with pytest.raises(FloatingPointError, match=r'step 5: loss is nan.*checkpoint \(step 4\)'):
    train(config, str(tmp_path), batch_hook=poison)
  state, data_state = _restore_checkpoint(str(tmp_path), 4)
  assert data_state['index'] == 4
  assert all(np.isfinite(v).all() for v in state.values())
  assert int(state['step']) == 4
  # the run resumes from the intact checkpoint and finishes
  result = train(config, str(tmp_path))
  assert result.start_step == 4 and len(result.losses) == 4
  assert all(np.isfinite(l) for _, l in result.losses)


def test_remat_bf16_accumulation_and_disel_groups(data_path, tmp_path):
  """remat and grad accumulation leave the float32 losses unchanged; bfloat16 compute stays close
  and keeps float32 trainable params; DISeL gate params (and only they) get the gate lr."""
  base = {'total_steps': 3, 'checkpoint.snapshot_every': 0}
  runs = {}
  for name, extra in (
    ('f32', {}),
    ('remat', {'model.remat': True}),
    ('accum', {'grad_accum_steps': 2}),
    ('bf16', {'model.dtype': 'bfloat16'}),
  ):
    result = train(_config(data_path, **base, **extra), str(tmp_path / name))
    runs[name] = np.array([l for _, l in result.losses])
    assert result.num_compiles == 1
    if name == 'bf16':
      assert {x.dtype for x in jax.tree.leaves(result.state.params)} == {np.dtype('float32')}
  np.testing.assert_allclose(runs['remat'], runs['f32'], rtol=1e-6)
  np.testing.assert_allclose(runs['accum'], runs['f32'], rtol=1e-5)
  np.testing.assert_allclose(runs['bf16'], runs['f32'], rtol=2e-2)

  spec = importlib.util.spec_from_file_location('tiny', os.path.join(REPO, 'configs/train/tiny.py'))
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  config = tiny.get_config('disel')
  _, params, _, _ = build_model(config)
  tree = adapters.inject(
    params, make_method(config), list(config.adapter.targets), jax.random.PRNGKey(0)
  )
  trainable, _ = adapters.partition(tree)
  groups = adapters.param_groups(trainable)  # the method object's groups (DISeL's gates)
  mults = parallel.named_leaves(lr_multipliers(trainable, config.optimizer.lr_groups, groups))
  decay = parallel.named_leaves(decay_mask(trainable, config.optimizer.no_decay_patterns, groups))
  gates = sorted(n for n in mults if n.endswith(('gate_w', 'gate_b')))
  assert len(gates) == 2 * 2 * 2  # 2 layers x (q, v) x (w, b)
  assert all(mults[n] == 5.0 and not decay[n] for n in gates)
  assert all(mults[n] == 1.0 for n in mults if n not in gates)


def test_hf_directory_first_loss_matches_transformers(tmp_path):
  """From an HF directory (Qwen2: qkv bias, tied embeddings): the step-0 SFT loss equals
  transformers' loss with prompt and padding labels set to -100."""
  import torch  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.join(REPO, 'tests'))
  import helpers_hf  # pylint: disable=g-import-not-at-top

  hf_dir = helpers_hf.save_tiny_hf_model('qwen2', tmp_path / 'qwen2')
  data = tmp_path / 'train.jsonl'
  with open(data, 'w') as f:
    for i in range(16):
      f.write(json.dumps({'prompt': f'q{i}: ', 'completion': f'a{i * 3}'}) + '\n')
  config = _config(
    str(data),
    **{
      'model.path': str(hf_dir),
      'total_steps': 2,
      'data.packing': False,
      'data.seq_len': 16,
      'checkpoint.snapshot_every': 0,
      'adapter.target_regex': 'all-linear',
    },
  )
  result = train(config, str(tmp_path / 'run'))
  arrays = sft.build_sft_arrays(
    sft.load_rows(str(data)), sft.ByteTokenizer(helpers_hf.VOCAB_SIZE), 16, packing=False
  )
  batch = next(sft.SFTIterator(arrays, config.batch_size, seed=config.seed))
  labels = np.where(batch['loss_mask'] == 1, batch['tokens'], -100)
  hf_model = helpers_hf.tiny_hf_model('qwen2')
  with torch.no_grad():
    expected = hf_model(
      input_ids=torch.from_numpy(batch['tokens']).long(),
      attention_mask=torch.from_numpy(batch['segment_ids'] > 0).long(),
      labels=torch.from_numpy(labels).long(),
    ).loss.item()
  assert result.losses[0][1] == pytest.approx(expected, rel=1e-5)


def test_bad_config_errors_name_the_key(data_path, tmp_path):
  with pytest.raises(ValueError, match=r"config.adapter.method='lorax'; valid: \('full', 'lora'"):
    train(_config(data_path, **{'adapter.method': 'lorax'}), str(tmp_path / 'a'))
  with pytest.raises(
    ValueError,
    match=r"kwargs \['alpha', 'block_size'\] do not fit "
    r"config.adapter.method='lora'.*block_size",
  ):
    make_method(_config(data_path, **{'adapter.kwargs': {'alpha': 1.0, 'block_size': 4}}))
  with pytest.raises(ValueError, match='grad_accum_steps=3'):
    train(_config(data_path, grad_accum_steps=3), str(tmp_path / 'b'))
