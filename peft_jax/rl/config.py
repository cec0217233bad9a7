"""The GRPO config: the training config (``train.config.default_config``) plus ``config.grpo``.

Everything the SFT trainer reads keeps its meaning (model, adapter, optimizer, mesh, checkpoint,
guard, logging, export, seed); ``config.data.tokenizer`` picks the tokenizer. ``total_steps``
counts generation batches; each gets ``grpo.num_iterations`` optimizer updates, so the learning
rate schedule spans ``total_steps * num_iterations`` updates. The SFT data keys
(``data.path``, ``batch_size``, ``data.seq_len``, packing) are not used: a step's batch is
``grpo.prompts_per_step * grpo.group_size`` completions of prompts from ``grpo.task``.
"""

from __future__ import annotations

import ml_collections

from peft_jax.adapters import api as adapter_api
from peft_jax.rl import objective
from peft_jax.train import config as train_config

TASK_KEYS = ('type', 'path', 'limit')


def default_config() -> ml_collections.ConfigDict:
  """The tiny random decoder of ``train.config.default_config`` with LoRA, trained by GRPO."""
  config = train_config.default_config()
  config.algorithm = 'grpo'
  config.total_steps = 10
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = 'constant'
  config.optimizer.peak_lr = 1e-3
  config.grpo = ml_collections.ConfigDict(
    dict(
      # Training prompts and their verifiable scorer: a task spec of peft_jax.evals.load_task
      # (type gsm8k / math500: numeric exact match; ifeval: the IFEval checkers; nq_open: alias
      # match; bbh). limit 0: every example.
      task=dict(type='gsm8k', path='', limit=0),
      # The per-sample score that is the reward ('' : the task's 0/1 correctness metric, e.g.
      # accuracy for gsm8k, prompt_strict for ifeval).
      reward_metric='',
      group_size=8,  # G completions per prompt
      prompts_per_step=4,  # prompts per generation batch
      max_new_tokens=16,  # completion budget N (also the dr_grpo denominator)
      max_prompt_length=0,  # keep the last L prompt tokens (0: whole prompts)
      prompt_bucket=32,  # prompts are left-padded to a multiple of this (one program each)
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      num_iterations=1,  # optimizer updates per generation batch (ratio vs sampling policy)
      epsilon_low=0.2,
      epsilon_high=0.2,  # DAPO's clip-higher: 0.28
      beta=0.04,  # k3 KL penalty to the reference (the adapter switched off); 0: none
      loss_type='grpo',  # 'grpo' | 'bnpo' | 'dapo' | 'dr_grpo' (peft_jax.rl.objective)
      scale_rewards='group',  # 'group' | 'batch' | 'none'
      advantage_eps=1e-4,
      # Skip the update of a batch whose advantages are all 0 (every group's rewards equal):
      # otherwise Adam turns the KL term's rounding noise into a full-size step (docs/RLVR.md).
      skip_no_signal=False,
      # Held-out pass@k: every eval_every steps (and before the first and after the last step)
      # when eval_task.path is set; eval_samples completions per prompt at eval_temperature.
      eval_task=dict(type='gsm8k', path='', limit=0),
      eval_every=0,
      eval_samples=8,
      eval_k=(1, 2, 4, 8),
      eval_temperature=1.0,
      eval_prompts_per_batch=8,
    )
  )
  return config


def task_spec(node: ml_collections.ConfigDict, where: str) -> dict:
  """The ``peft_jax.evals.load_task`` spec of a ``grpo.task``-like node (limit 0: all)."""
  spec = {k: v for k, v in node.to_dict().items() if v not in (None, '')}
  if not spec.get('path'):
    raise ValueError(f'config.{where}.path is empty; give the task file (e.g. a GSM8K JSONL)')
  if not spec.get('limit'):
    spec.pop('limit', None)
  return spec


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails early naming the bad ``config`` key and the valid values."""
  if config.adapter.method not in adapter_api.METHODS:
    raise ValueError(
      f'config.adapter.method={config.adapter.method!r}; valid: {adapter_api.method_names()}'
    )
  grpo = config.grpo
  positive = ('group_size', 'prompts_per_step', 'max_new_tokens', 'prompt_bucket')
  positive += ('num_iterations', 'eval_samples', 'eval_prompts_per_batch')
  for key in positive:
    value = grpo[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f'config.grpo.{key}={value!r} must be a positive integer')
  for key in ('total_steps', 'log_every'):
    if not isinstance(config[key], int) or config[key] <= 0:
      raise ValueError(f'config.{key}={config[key]!r} must be a positive integer')
  if grpo.group_size < 2:
    raise ValueError(f'config.grpo.group_size={grpo.group_size}: a group needs >= 2 completions')
  if grpo.loss_type not in objective.LOSS_TYPES:
    raise ValueError(f'config.grpo.loss_type={grpo.loss_type!r}; valid: {objective.LOSS_TYPES}')
  if grpo.scale_rewards not in objective.SCALE_REWARDS:
    raise ValueError(
      f'config.grpo.scale_rewards={grpo.scale_rewards!r}; valid: {objective.SCALE_REWARDS}'
    )
  if grpo.temperature <= 0 or grpo.eval_temperature <= 0:
    raise ValueError(
      f'config.grpo.temperature={grpo.temperature} and eval_temperature='
      f'{grpo.eval_temperature} must be > 0 (GRPO samples)'
    )
  if not 0.0 <= grpo.epsilon_low < 1.0 or grpo.epsilon_high < 0 or grpo.beta < 0:
    raise ValueError(
      f'config.grpo: need 0 <= epsilon_low < 1 (got {grpo.epsilon_low}), epsilon_high >= 0 '
      f'(got {grpo.epsilon_high}) and beta >= 0 (got {grpo.beta})'
    )
  bad_k = [k for k in grpo.eval_k if not 1 <= int(k) <= grpo.eval_samples]
  if bad_k:
    raise ValueError(
      f'config.grpo.eval_k {bad_k} must lie in [1, eval_samples={grpo.eval_samples}]'
    )
  if config.grad_accum_steps != 1:
    raise ValueError(
      'config.grad_accum_steps must be 1 for GRPO (the whole generation batch is one update)'
    )
  stop_step = config.get('stop_step', 0)
  if not isinstance(stop_step, int) or isinstance(stop_step, bool):
    raise ValueError(f'config.stop_step={stop_step!r} must be an integer')
  if not 0 <= stop_step <= config.total_steps:
    raise ValueError(
      f'config.stop_step={stop_step} must be in [0, total_steps={config.total_steps}] (0: the end)'
    )
  if config.checkpoint.every_steps <= 0:
    raise ValueError(f'config.checkpoint.every_steps={config.checkpoint.every_steps} must be > 0')
  task_spec(grpo.task, 'grpo.task')
