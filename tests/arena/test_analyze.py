"""launch.analyze on a real (tiny) LoRA run with trajectory snapshots, checked against NumPy."""

import json
import os

import jax
import numpy as np
import pytest

from configs.analyze import default as analyze_presets
from peft_jax.adapters import api
from peft_jax.arena import analyze
from peft_jax.evals.generation import prompt_activations
from peft_jax.train import trainer
from peft_jax.train.config import default_config


def _linear_cka_reference(x0, x1):
  """Kornblith et al.'s linear CKA in float64 from the definition (centered Gram form)."""
  x0 = np.asarray(x0, np.float64)
  x1 = np.asarray(x1, np.float64)
  x0 = x0 - x0.mean(0)
  x1 = x1 - x1.mean(0)
  cross = np.linalg.norm(x1.T @ x0) ** 2
  return cross / (np.linalg.norm(x0.T @ x0) * np.linalg.norm(x1.T @ x1))


@pytest.fixture(scope='module')
def lora_run(tmp_path_factory, smoke_world):
  run_dir = str(tmp_path_factory.mktemp('lora_run'))
  config = default_config()
  config.model.path = smoke_world['hf_dir']
  config.adapter.method = 'lora'
  config.adapter.target_regex = 'all-linear'
  config.adapter.kwargs = dict(rank=4, alpha=8.0)
  config.data.path = os.path.join(smoke_world['suite_dir'], 'sft', 'gsm.jsonl')
  config.data.tokenizer = 'model'
  config.data.seq_len = 64
  config.total_steps = 4
  config.optimizer.peak_lr = 3e-2
  config.checkpoint.every_steps = 2
  config.checkpoint.snapshot_every = 2
  config.progress_bar = False
  trainer.train(config, run_dir)
  analysis_config = analyze_presets.get_config()
  analysis_config.general_data = os.path.join(smoke_world['suite_dir'], 'sft', 'general.jsonl')
  analysis_config.geometry.num_prompts = 6
  analysis_config.paths.alphas = (0.0, 0.5, 1.0)
  analysis_config.tasks = [
    dict(
      type='gsm8k',
      name='gsm',
      kind='target',
      limit=2,
      max_new_tokens=4,
      path=os.path.join(smoke_world['suite_dir'], 'targets', 'gsm_test.jsonl'),
    )
  ]
  analysis = analyze.analyze_run(analysis_config, run_dir)
  return run_dir, analysis_config, analysis


def test_outputs_written(lora_run):
  run_dir, _, analysis = lora_run
  on_disk = json.load(open(os.path.join(run_dir, 'analysis', 'analysis.json')))
  assert on_disk['method'] == 'lora'
  assert set(analysis) == {'run', 'method', 'geometry', 'paths', 'trajectory'}
  arrays = np.load(os.path.join(run_dir, 'analysis', 'arrays.npz'))
  modules = analysis['geometry']['modules']
  assert len(modules) == 2 * 7  # all-linear on 2 layers
  for m in modules:
    assert arrays[f'retention/{m}'].shape == arrays[f'energy/{m}'].shape
  assert analysis['trajectory']['steps'] == [0, 2, 4]
  assert len(analysis['paths']['interpolation']['target']) == 3


def test_cka_and_distance_match_numpy(lora_run, smoke_world):
  run_dir, analysis_config, analysis = lora_run
  train_config, result, base = analyze.load_run(run_dir)
  merged = api.merge(jax.device_get(result.tree))
  prompts = analyze.sft_prompts(analysis_config.general_data, 6)
  caps0, mask = prompt_activations(
    result.model, base, analyze_tokenizer(train_config), prompts, ['residual']
  )
  caps1, _ = prompt_activations(
    result.model, merged, analyze_tokenizer(train_config), prompts, ['residual']
  )
  real = mask.astype(bool)
  for layer in range(2):
    expected = _linear_cka_reference(
      caps0[f'layers_{layer}/residual'][real], caps1[f'layers_{layer}/residual'][real]
    )
    got = analysis['geometry']['activation']['cka'][layer]
    assert got == pytest.approx(expected, rel=1e-4)
    assert analysis['trajectory']['cka_to_base_per_layer'][-1][layer] == pytest.approx(
      got, rel=1e-5
    )
  base_leaves = jax.tree.leaves(base)
  distance = np.sqrt(
    sum(
      np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
      for a, b in zip(jax.tree.leaves(merged), base_leaves)
    )
  )
  assert analysis['trajectory']['distance_from_base'][-1] == pytest.approx(distance, rel=1e-4)
  assert analysis['trajectory']['distance_from_base'][0] == pytest.approx(0.0, abs=1e-6)


def analyze_tokenizer(train_config):
  from peft_jax import hub  # pylint: disable=g-import-not-at-top

  return hub.load_tokenizer(train_config.model.path)


def test_unfinished_run_is_refused(tmp_path, lora_run):
  run_dir, _, _ = lora_run
  config = json.load(open(os.path.join(run_dir, 'config.json')))
  config['total_steps'] = 10
  os.makedirs(tmp_path / 'run')
  json.dump(config, open(tmp_path / 'run' / 'config.json', 'w'))
  with pytest.raises(ValueError, match='finish it'):
    analyze.load_run(str(tmp_path / 'run'))
  with pytest.raises(FileNotFoundError, match='not a launch.train run directory'):
    analyze.load_run(str(tmp_path))
