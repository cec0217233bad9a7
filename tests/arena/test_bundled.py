"""The bundled tiny base: loads through the HF path, matches transformers, scores as recorded.

The subset sizes and thresholds here are the ones recorded in peft_jax/bundled/tiny/README.md.
"""

import json
import os

import helpers_hf
import numpy as np
import pytest

from configs.arena import quick as arena_presets
from peft_jax import hub
from peft_jax.arena import pipeline, world
from peft_jax.data.suite import layout
from peft_jax.evals import axes, load_task
from peft_jax.evals.generation import Generator

BUNDLED = 'bundled:tiny'
# A small fixed subset: the first examples of each test split (bbh: per subtask).
SUBSET = dict(ifeval=24, nq=24, bbh=4, gsm=24, cipher=16)


@pytest.fixture(scope='module')
def bundled(tmp_path_factory):
  model, params, tokenizer = hub.load_pretrained(BUNDLED)
  base_dir = str(hub.resolve_path(BUNDLED))
  with open(os.path.join(base_dir, 'suite.json')) as f:
    meta = json.load(f)
  suite_dir = str(tmp_path_factory.mktemp('suite') / 'suite')
  world.ensure_suite(suite_dir, meta['seed'], meta['sizes'])
  config = arena_presets.get_config()
  specs = layout.eval_task_specs(suite_dir, SUBSET, config.eval.max_new_tokens)
  tasks = [load_task(spec) for spec in specs]
  return model, params, tokenizer, base_dir, suite_dir, tasks


def test_bundled_matches_transformers(bundled):
  helpers_hf.assert_logits_match_transformers(bundled[3])


@pytest.fixture(scope='module')
def base_scores(bundled):
  model, params, tokenizer, _, _, tasks = bundled
  return axes.evaluate_scores(Generator(model, params, tokenizer).fn(), tasks, batch_size=64)


def test_bundled_scores_general_high_and_targets_low(base_scores):
  scores = base_scores
  assert scores['general'] >= 0.6, scores
  for target in ('gsm', 'cipher'):
    assert scores['tasks'][target] <= 0.25, scores


def test_full_finetuning_trades_general_for_target(bundled, base_scores, tmp_path):
  """Reduced budget of the arena's Full FT: the target rises and the general average falls."""
  model, params, tokenizer, base_dir, suite_dir, tasks = bundled
  config = arena_presets.get_config()
  config.train.total_steps = 40
  config.train.checkpoint.every_steps = 40
  config.progress_bar = False
  train_config = pipeline.method_train_config(
    config, 'full', base_dir, os.path.join(suite_dir, 'sft', 'gsm.jsonl')
  )
  from peft_jax.train import trainer  # pylint: disable=g-import-not-at-top

  tuned = trainer.train(train_config, str(tmp_path / 'full')).tree
  before = base_scores
  after = axes.evaluate_scores(Generator(model, tuned, tokenizer).fn(), tasks, 64)
  assert after['tasks']['gsm'] > before['tasks']['gsm'], (before, after)
  assert after['general'] < before['general'], (before, after)
