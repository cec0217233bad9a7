"""Every GRPO preset builds a valid config whose adapter kwargs fit the method; bad GRPO keys are
refused naming the key and the valid values."""

import pytest

from configs.train import grpo as presets
from peft_jax.adapters import api as adapters
from peft_jax.rl import config as rl_config
from peft_jax.train import trainer


@pytest.mark.parametrize('method', adapters.method_names())
def test_presets_validate(method):
  for arg in (method, f'{method},tiny'):
    config = presets.get_config(arg)
    config.grpo.task.path = 'prompts.jsonl'
    rl_config.validate(config)
    trainer.make_method(config)
    assert config.algorithm == 'grpo'
  with pytest.raises(ValueError, match='expected <method>'):
    presets.get_config(f'{method},huge')


@pytest.mark.parametrize(
  'key, value, match',
  [
    ('loss_type', 'ppo', "loss_type='ppo'; valid"),
    ('scale_rewards', 'std', 'scale_rewards'),
    ('group_size', 1, 'group needs >= 2'),
    ('eval_k', (1, 16), r'eval_k \[16\]'),
    ('temperature', 0.0, 'must be > 0'),
  ],
)
def test_bad_keys_are_named(key, value, match):
  config = presets.get_config('lora,tiny')
  config.grpo.task.path = 'prompts.jsonl'
  config.grpo[key] = value
  with pytest.raises(ValueError, match=match):
    rl_config.validate(config)


def test_task_path_is_required():
  with pytest.raises(ValueError, match=r'config.grpo.task.path is empty'):
    rl_config.validate(presets.get_config('lora'))
