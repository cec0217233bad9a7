"""Where the offline suite keeps each file (the one declaration of its layout).

::

  <suite>/general/ifeval_{train,test}.jsonl   IFEval format
  <suite>/general/nq_{train,test}.jsonl       NQ-open format
  <suite>/general/bbh/{train,test}/<task>.json BBH format, one file per task
  <suite>/targets/<target>_{train,test}.jsonl GSM8K format (gsm, cipher)
  <suite>/sft/<name>.jsonl                    SFT rows {"prompt", "completion"} (targets, general)
  <suite>/pretrain/...                        pretraining corpus
  <suite>/manifest.json                       seed, sizes, counts
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from peft_jax.data.suite.generate import GENERAL_TASKS, TARGET_TASKS

# Evaluation task type (peft_jax.evals.load_task) of each suite task.
EVAL_TYPES = {'ifeval': 'ifeval', 'nq': 'nq_open', 'bbh': 'bbh', 'gsm': 'gsm8k', 'cipher': 'gsm8k'}
GENERAL_KIND, TARGET_KIND = 'general', 'target'


def split_path(suite_dir: str, task: str, split: str = 'test') -> str:
  """The evaluation file (or BBH directory) of ``task`` in ``split`` ('train' or 'test')."""
  if task == 'bbh':
    return os.path.join(suite_dir, 'general', 'bbh', split)
  if task in GENERAL_TASKS:
    return os.path.join(suite_dir, 'general', f'{task}_{split}.jsonl')
  if task in TARGET_TASKS:
    return os.path.join(suite_dir, 'targets', f'{task}_{split}.jsonl')
  raise ValueError(f'unknown suite task {task!r}; valid: {GENERAL_TASKS + TARGET_TASKS}')


def sft_path(suite_dir: str, name: str) -> str:
  """The SFT JSONL of a target (or of 'general')."""
  return os.path.join(suite_dir, 'sft', f'{name}.jsonl')


def eval_task_specs(
  suite_dir: str,
  limits: Optional[Mapping[str, int]] = None,
  max_new_tokens: Optional[Mapping[str, int]] = None,
  split: str = 'test',
) -> list[dict]:
  """Task specs (``peft_jax.evals.load_task``) of every suite task: general then targets.

  The suite writes its SFT prompts with the evaluation's default templates and chat settings
  (IFEval and NQ chat-formatted, BBH and the targets plain), so the specs keep those defaults.
  ``limits`` / ``max_new_tokens``: per task name (absent: all examples / the loader's default).
  """
  specs = []
  for task in GENERAL_TASKS + TARGET_TASKS:
    spec = dict(
      type=EVAL_TYPES[task],
      name=task,
      path=split_path(suite_dir, task, split),
      kind=TARGET_KIND if task in TARGET_TASKS else GENERAL_KIND,
    )
    if limits is not None and task in limits:
      spec['limit'] = int(limits[task])
    if max_new_tokens is not None and task in max_new_tokens:
      spec['max_new_tokens'] = int(max_new_tokens[task])
    specs.append(spec)
  return specs
