"""PEFT-Arena-style evaluation on local copies of the real benchmarks (docs/METRICS.md, "Target, General, Forget").

  python -m launch.evaluate --config=configs/eval/arena.py:/data/benchmarks --workdir=/tmp/eval \
      --config.model_dir=/models/qwen2.5-1.5b-instruct [--config.adapter_dir=/runs/lora/adapter]

``arg`` is a directory holding, in the benchmarks' own formats (docs/CONVENTIONS.md):
``gsm8k/test.jsonl``, ``math500/test.jsonl``, ``ifeval/input_data.jsonl``, ``bbh/<task>.json``
(+ ``bbh/cot-prompts/<task>.txt``, the 3-shot chain-of-thought exemplars) and
``nq_open/test.jsonl``. Decoding is greedy with the paper's 1024-token budget; IFEval and NQ use
the chat template. (The paper's math Target averages AIME24/AMC23/MATH-500 with avg@16 at
temperature 0.6; set ``--config.tasks.math500.num_samples=16
--config.tasks.math500.temperature=0.6`` to match that for MATH-500.)
"""

import os

from peft_jax.evals.runner import default_config


def get_config(arg=None):
  data_dir = arg or '/data/benchmarks'
  config = default_config()
  # Every task spec carries limit=0 (= all examples) so that --config.tasks.<name>.limit=N works
  # on the locked config.
  config.batch_size = 32
  config.tasks.gsm8k = dict(
    type='gsm8k', limit=0, max_new_tokens=1024, path=os.path.join(data_dir, 'gsm8k', 'test.jsonl')
  )
  config.tasks.math500 = dict(
    type='math500',
    limit=0,
    max_new_tokens=1024,
    num_samples=1,
    temperature=0.0,
    path=os.path.join(data_dir, 'math500', 'test.jsonl'),
  )
  config.tasks.ifeval = dict(
    type='ifeval',
    limit=0,
    max_new_tokens=1025,
    path=os.path.join(data_dir, 'ifeval', 'input_data.jsonl'),
  )
  config.tasks.bbh = dict(
    type='bbh',
    limit=0,
    max_new_tokens=1024,
    path=os.path.join(data_dir, 'bbh'),
    fewshot_dir=os.path.join(data_dir, 'bbh', 'cot-prompts'),
  )
  config.tasks.nq_open = dict(
    type='nq_open',
    limit=0,
    max_new_tokens=1024,
    path=os.path.join(data_dir, 'nq_open', 'test.jsonl'),
  )
  return config
