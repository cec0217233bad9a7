r"""GRPO with LoRA on a synthetic verifiable task: does RLVR raise reward and held-out pass@k?

The task: a prompt ``'<3 random letters> <digit>'``, the answer that digit, scored by GSM8K
numeric match (the last number of the completion). The model is the tiny random decoder of
``configs/train/grpo.py:lora,tiny`` (byte tokenizer, vocab 64), which starts above zero only by
chance (~5 %: a digit among 61 byte ids), so any rise is learnt. 200 training prompts, 48
held-out ones (other words) for pass@k; docs/RLVR.md records the numbers.

  python benchmarks/rlvr_copy_bench.py --workdir=/tmp/rlvr_copy [--steps=400] [--lr=3e-3]
"""

import json
import os
import random
import statistics
import time

from absl import app, flags

from configs.train import grpo as presets
from peft_jax.rl import grpo

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (task files are written here).')
_STEPS = flags.DEFINE_integer('steps', 400, 'Generation batches.')
_LR = flags.DEFINE_float('lr', 3e-3, 'Peak (constant) learning rate.')
_GROUP = flags.DEFINE_integer('group_size', 16, 'Completions per prompt.')
_BETA = flags.DEFINE_float('beta', 0.04, 'KL weight.')
flags.mark_flags_as_required(['workdir'])


def _write_task(path, count, rng):
  with open(path, 'w') as f:
    for _ in range(count):
      word = ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(3))
      digit = rng.randint(0, 9)
      f.write(json.dumps({'question': f'{word} {digit}', 'answer': f'#### {digit}'}) + '\n')


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rng = random.Random(0)
  train_path = os.path.join(_WORKDIR.value, 'copy_train.jsonl')
  heldout_path = os.path.join(_WORKDIR.value, 'copy_heldout.jsonl')
  _write_task(train_path, 200, rng)
  _write_task(heldout_path, 48, rng)
  steps = _STEPS.value
  config = presets.get_config('lora,tiny')
  config.adapter.target_regex = 'all-linear'
  config.adapter.kwargs = dict(rank=8, alpha=16.0)
  config.optimizer.peak_lr = _LR.value
  config.total_steps = steps
  config.checkpoint.every_steps = steps
  config.progress_bar = False
  grpo_config = config.grpo
  grpo_config.task.path, grpo_config.eval_task.path = train_path, heldout_path
  grpo_config.max_new_tokens, grpo_config.prompt_bucket = 4, 16
  grpo_config.group_size, grpo_config.prompts_per_step = _GROUP.value, 8
  grpo_config.beta = _BETA.value
  grpo_config.eval_samples, grpo_config.eval_k = 8, (1, 2, 4, 8)
  grpo_config.eval_prompts_per_batch, grpo_config.eval_every = 8, max(steps // 4, 1)
  start = time.time()
  result = grpo.train(config, os.path.join(_WORKDIR.value, 'run'))
  print(f'{steps} steps in {time.time() - start:.1f} s')
  window = max(steps // 4, 1)
  rows = [m for _, m in result.metrics]
  for first in range(0, len(rows), window):
    part = rows[first : first + window]
    means = {
      k: round(statistics.mean(r[k] for r in part), 4)
      for k in ('reward_mean', 'zero_variance_fraction', 'kl', 'entropy', 'completion_length')
    }
    print(f'steps {first + 1}-{first + len(part)}: {means}')
  for step, values in result.evals:
    print(f'held-out at step {step}: {json.dumps({k: round(v, 4) for k, v in values.items()})}')


if __name__ == '__main__':
  app.run(main)
