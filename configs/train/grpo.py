"""GRPO (RL with verifiable rewards) for each adapter method.

  python -m launch.make_suite --out_dir=/tmp/suite --notrain_tokenizer
  python -m launch.train --config=configs/train/grpo.py:lora --workdir=/tmp/grpo_lora \
      --config.grpo.task.type=nq_open --config.grpo.task.path=/tmp/suite/general/nq_train.jsonl \
      --config.grpo.eval_task.type=nq_open \
      --config.grpo.eval_task.path=/tmp/suite/general/nq_test.jsonl

``arg`` is ``<method>`` (full, lora, dora, pissa, vera, oft, miss or disel; default lora): the
bundled tiny base (``bundled:tiny``) with every linear layer adapted, or ``<method>,tiny``: the
tiny random decoder of ``configs/train/tiny.py`` with the byte tokenizer (tests, smoke runs).
The prompts are a task file (``grpo.task``: type and path, as ``peft_jax.evals.load_task``); the
reward is the task's own scorer. docs/RLVR.md describes every ``config.grpo`` key.
"""

from configs.train import tiny
from peft_jax.adapters.api import method_names
from peft_jax.rl.config import default_config

# Method hyper-parameters and peak learning rates for the bundled base (d 192, 4 heads of 48;
# the arena's quick preset sizes).
BUNDLED = {
  'full': ({}, 1e-5),
  'lora': (dict(rank=8, alpha=16.0), 2e-4),
  'dora': (dict(rank=8, alpha=16.0), 2e-4),
  'pissa': (dict(rank=8, alpha=16.0), 1e-4),
  'vera': (dict(rank=64), 2e-3),
  'oft': (dict(block_size=16), 2e-4),
  'miss': (dict(rank=16), 2e-4),
  'disel': (dict(rank=8, alpha=16.0, gate_bias_init=-3.0, gate_lr_mult=5.0), 2e-4),
}


def get_config(arg=None):
  parts = (arg or 'lora').split(',')
  method, variant = parts[0], parts[1] if len(parts) > 1 else 'bundled'
  if method not in method_names() or variant not in ('bundled', 'tiny') or len(parts) > 2:
    raise ValueError(
      f'configs/train/grpo.py:{arg}: expected <method>[,tiny] with method one of {method_names()}'
    )
  config = default_config()
  config.adapter.method = method
  if variant == 'tiny':
    config.adapter.kwargs = tiny.METHOD_KWARGS[method]
    return config
  kwargs, peak_lr = BUNDLED[method]
  config.model.path = 'bundled:tiny'
  config.data.tokenizer = 'model'
  config.adapter.target_regex = 'all-linear'
  config.adapter.kwargs = kwargs
  config.optimizer.peak_lr = peak_lr
  config.grpo.max_new_tokens = 24
  return config
