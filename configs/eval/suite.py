"""Evaluation on the offline capability suite (``python -m launch.make_suite --out_dir=DIR``).

  python -m launch.evaluate --config=configs/eval/suite.py:/tmp/suite --workdir=/tmp/eval \
      --config.model_dir=/tmp/run/export --config.tasks.gsm.limit=20

``arg`` is the suite directory. Prompts match the suite's training formats (plain text for
GSM-style targets and BBH, chat for IFEval and NQ), decoding is greedy as in PEFT-Arena.
"""

import os

from peft_jax.evals.runner import default_config


def get_config(arg=None):
  suite_dir = arg or '/tmp/suite'
  config = default_config()
  # Every task spec carries limit=0 (= all examples) so that --config.tasks.<name>.limit=N works
  # on the locked config.
  config.batch_size = 16
  # Target tasks: the fine-tuning domains. Budgets fit the tiny models' short answers.
  config.tasks.gsm = dict(
    type='gsm8k',
    limit=0,
    kind='target',
    max_new_tokens=128,
    path=os.path.join(suite_dir, 'targets', 'gsm_test.jsonl'),
  )
  config.tasks.cipher = dict(
    type='gsm8k',
    limit=0,
    kind='target',
    max_new_tokens=64,
    path=os.path.join(suite_dir, 'targets', 'cipher_test.jsonl'),
  )
  # General tasks: PEFT-Arena's General = mean(IFEval inst-level strict, BBH avg, NQ).
  config.tasks.ifeval = dict(
    type='ifeval',
    limit=0,
    max_new_tokens=128,
    path=os.path.join(suite_dir, 'general', 'ifeval_test.jsonl'),
  )
  config.tasks.bbh = dict(
    type='bbh', limit=0, max_new_tokens=128, path=os.path.join(suite_dir, 'general', 'bbh', 'test')
  )
  config.tasks.nq = dict(
    type='nq_open',
    limit=0,
    max_new_tokens=32,
    path=os.path.join(suite_dir, 'general', 'nq_test.jsonl'),
  )
  return config
