"""Every preset of every shipped config file builds, and the training configs it implies are
valid: a key typo in an override or a schedule that cannot run fails here, not in a user's run."""

import json
import math
import os
import types

import pytest

from configs.analyze import default as analyze_default
from configs.arena import encoder as arena_encoder
from configs.arena import quick as arena_quick
from configs.arena import real as arena_real
from configs.eval import arena as eval_arena
from configs.eval import suite as eval_suite
from configs.pretrain import tiny as pretrain_tiny
from configs.train import hf as train_hf
from configs.train import tiny as train_tiny
from peft_jax import hub
from peft_jax.adapters import api as adapters
from peft_jax.arena import encoder_study, pipeline, rlvr_stage, sae_stage
from peft_jax.sae import study as sae_study
from peft_jax.train import optimizer as optimizer_lib
from peft_jax.train import trainer
from peft_jax.train.config import default_config, validate_config, with_overrides


def _check_train_config(config):
  config.data.path = config.data.path or 'train.jsonl'
  validate_config(config)
  trainer.make_method(config)  # the kwargs fit the method
  optimizer_lib.lr_schedule(
    config.optimizer.peak_lr,
    config.total_steps,
    config.optimizer.warmup_steps,
    config.optimizer.decay,
  )


@pytest.mark.parametrize('method', adapters.method_names())
def test_train_presets(method):
  _check_train_config(train_tiny.get_config(method))
  _check_train_config(train_hf.get_config(f'method={method}'))
  _check_train_config(train_hf.get_config(f'method={method},runlocal'))


@pytest.mark.parametrize('preset', ['quick', 'full', 'custom', 'smoke'])
def test_arena_presets_imply_valid_train_configs(preset):
  config = arena_quick.get_config(preset)
  assert tuple(config.method_order) == adapters.method_names()
  if pipeline.needs_budget(config):  # custom: steps, batch and warmup come from the data size
    config, _ = pipeline.derive_budget(config, num_sequences=100, num_devices=8)
  for method in config.method_order:
    _check_train_config(pipeline.method_train_config(config, method, 'base_dir', 'train.jsonl'))


@pytest.mark.parametrize(
  'module,preset',
  [('quick', 'quick'), ('quick', 'full'), ('quick', 'smoke'), ('real', 'real'), ('real', 'full')],
)
def test_arena_sae_blocks_imply_valid_study_configs(module, preset):
  # Every preset's config.sae gives a study config whose SAE settings and per-rank train
  # configs are valid (the real ones cannot be run here), and errors name a bad key.
  config = {'quick': arena_quick, 'real': arena_real}[module].get_config(preset)
  plan = types.SimpleNamespace(base_dir='base_dir', target_train_path='train.jsonl')
  cfg = sae_study._plain(sae_stage.study_config(config, plan))
  sae_study._sae_config(cfg, 576)  # SAEConfig validates steps, logging and resampling
  for _, rank in sae_study.adapter_names(cfg):
    _check_train_config(
      with_overrides(default_config(), sae_study.adapter_train_overrides(cfg, rank, 'b', 'd'))
    )
  assert 'progress' not in sae_stage.fingerprint(config, plan, {})['study']
  config.sae.unknown = 1
  with pytest.raises(KeyError, match=r"config.sae: unknown keys \['unknown'\]"):
    sae_stage.study_config(config, plan)


@pytest.mark.parametrize(
  'module,preset',
  [('quick', 'quick'), ('quick', 'full'), ('quick', 'smoke'), ('real', 'real'), ('real', 'full')],
)
def test_arena_rlvr_blocks_imply_valid_grpo_configs(module, preset):
  # Every preset's config.rlvr gives, per method, a GRPO config that rl.config.validate accepts
  # (grpo_config validates it) with the method's adapter, and errors name a bad key.
  config = {'quick': arena_quick, 'real': arena_real}[module].get_config(preset)
  config.rlvr.enabled = True
  spec = dict(type='gsm8k', name=config.target, path='test.jsonl', kind='target', limit=64)
  plan = types.SimpleNamespace(base_dir='base_dir', task_specs=[spec], suite_dir='suite')
  for method in rlvr_stage.methods(config):
    c = rlvr_stage.grpo_config(config, plan, '/w', method, pipeline.method_train_config)
    assert c.adapter.method == method and c.grpo.task.path == '/w/splits/gsm_rlvr_prompts.jsonl'
    assert 'limit' not in c.grpo.task and c.grpo.task.type == 'gsm8k'
    trainer.make_method(c)
    centre = pipeline.method_train_config(config, method, '', '').optimizer.peak_lr
    assert c.optimizer.peak_lr == centre * config.rlvr.lr_factor
    assert 1 <= rlvr_stage.early_step(config, c.total_steps) < c.total_steps
  held = rlvr_stage.held_out_spec(config, plan)
  assert held['limit'] == config.rlvr.passk.num_prompts and held['path'] == 'test.jsonl'
  config.rlvr.passk.ks = (1, config.rlvr.passk.num_samples + 1)
  with pytest.raises(ValueError, match=r'config.rlvr.passk.ks=.*increasing k in \[1, num_samples'):
    rlvr_stage.checked(config)
  config.rlvr.unknown = 1
  with pytest.raises(KeyError, match=r"config.rlvr: unknown keys \['unknown'\]"):
    rlvr_stage.checked(config)


def test_other_presets_build():
  analyze_default.get_config()
  eval_arena.get_config()
  eval_suite.get_config('/tmp/suite')
  pretrain_tiny.get_config()
  pretrain_tiny.get_config('smoke')
  with pytest.raises(ValueError, match='unknown preset'):
    arena_quick.get_config('quik')


def test_overrides_name_an_unknown_key():
  with pytest.raises(
    KeyError,
    match=r"config.methods.lora: 'optimizer.peak_lrr' is not a train "
    r'config key',
  ):
    with_overrides(default_config(), {'optimizer': {'peak_lrr': 1.0}}, where='config.methods.lora')
  replaced = with_overrides(default_config(), {'adapter': {'kwargs': {'block_size': 4}}})
  assert dict(replaced.adapter.kwargs) == {'block_size': 4}  # kwargs are replaced whole


def test_hf_runlocal_trains(tmp_path):
  """The CPU smoke preset of configs/train/hf.py runs for real (on the bundled HF checkpoint)."""
  config = train_hf.get_config('method=lora,rank=4,runlocal')
  config.model.path = str(hub.resolve_path('bundled:tiny'))
  data = tmp_path / 'train.jsonl'
  data.write_text(
    ''.join(
      json.dumps({'prompt': f'What is {i} plus {i % 7}? ', 'completion': f' {i + i % 7}.'}) + '\n'
      for i in range(32)
    )
  )
  config.data.path = str(data)
  config.progress_bar = False
  result = trainer.train(config, str(tmp_path / 'run'))
  losses = [loss for _, loss in result.losses]
  assert len(losses) == config.total_steps == 10 and all(map(math.isfinite, losses))
  assert sorted(os.listdir(tmp_path / 'run' / 'trajectory')) == ['0', '10', '5']


@pytest.mark.parametrize('preset', ['encoder', 'smoke'])
def test_encoder_arena_presets(preset):
  config = arena_encoder.get_config(preset)
  assert config.study == 'encoder'
  assert set(config.method_order) <= set(adapters.method_names())
  for method in config.method_order:
    settings = encoder_study.method_settings(config, method)
    adapters.make_method(method, **settings['kwargs'])  # the kwargs fit the method
    optimizer_lib.lr_schedule(
      settings['peak_lr'],
      config.train.steps,
      config.train.optimizer.warmup_steps,
      config.train.optimizer.decay,
    )
  if preset == 'encoder':  # the named base resolves (no model loaded); every method applies
    plan = encoder_study.resolve(config)
    assert plan.methods == adapters.method_names() and not plan.excluded
  with pytest.raises(ValueError, match='unknown preset'):
    arena_encoder.get_config('encodr')
