"""configs/eval/suite.py against the generated capability suite: every task loads, and the
suite's own reference completions score as correct under our scorers."""

import json
import os
import sys

import jax
import pytest

from peft_jax.data import suite
from peft_jax.evals import harness, runner, tasks

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from configs.eval import suite as suite_config  # noqa: E402  pylint: disable=g-import-not-at-top

SIZES = {
  'people': 12,
  'cities': 6,
  'animals': 6,
  'fact_docs_per_entity': 1,
  'ifeval_train': 60,
  'ifeval_test': 10,
  'bbh_train': 4,
  'bbh_test': 3,
  'gsm_train': 10,
  'gsm_test': 5,
  'cipher_train': 10,
  'cipher_test': 5,
}


@pytest.fixture(scope='module')
def suite_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('suite')
  suite.generate_suite(str(root), seed=0, sizes=SIZES)
  return root


def test_suite_config_tasks_load(suite_dir):
  config = suite_config.get_config(str(suite_dir))
  loaded = runner.load_tasks(config.tasks)
  kinds = {t.name: t.kind for t in loaded}
  assert kinds == {
    'gsm': 'target',
    'cipher': 'target',
    'ifeval': 'general',
    'bbh': 'general',
    'nq': 'general',
  }
  by_name = {t.name: t for t in loaded}
  assert len(by_name['gsm'].examples) == 5 and len(by_name['ifeval'].examples) == 10
  assert by_name['ifeval'].chat and by_name['nq'].chat and not by_name['bbh'].chat
  # The locked config (as launch/evaluate holds it) takes per-task overrides.
  config.lock()
  config.tasks.gsm.limit = 2
  assert len({t.name: t for t in runner.load_tasks(config.tasks)}['gsm'].examples) == 2


def _completion_generate(completions):
  def generate_fn(prompts, **kwargs):
    del kwargs
    return [completions[p] for p in prompts]

  return generate_fn


def test_reference_completions_score_perfectly(suite_dir):
  """The suite's training completions are compliant answers: our checkers must agree."""
  general = suite_dir / 'general'
  with open(general / 'ifeval_train.jsonl') as f:
    ifeval_rows = [json.loads(line) for line in f]
  ifeval_task = tasks.load_task({'type': 'ifeval', 'path': str(general / 'ifeval_train.jsonl')})
  ids_seen = {i for row in ifeval_rows for i in row['instruction_id_list']}
  completions = {row['prompt']: row['completion'] for row in ifeval_rows}
  bbh_dir = general / 'bbh' / 'train'
  bbh_task = tasks.load_task({'type': 'bbh', 'path': str(bbh_dir)})
  for example in bbh_task.examples:
    with open(bbh_dir / f'{example.meta["subtask"]}.json') as f:
      row = json.load(f)['examples'][example.meta['index']]
    completions[example.prompt] = row['completion']
  gsm_path = suite_dir / 'targets' / 'gsm_train.jsonl'
  gsm_task = tasks.load_task({'type': 'gsm8k', 'path': str(gsm_path)})
  with open(gsm_path) as f:
    for example, line in zip(gsm_task.examples, f):
      completions[example.prompt] = json.loads(line)['answer']
  summary = harness.evaluate(
    None,
    None,
    None,
    [ifeval_task, bbh_task, gsm_task],
    key=jax.random.key(0),
    batch_size=64,
    generate_fn=_completion_generate(completions),
  )
  assert len(ids_seen) >= 10
  assert summary['tasks']['ifeval']['metrics']['prompt_level_strict_acc'] == 1.0
  assert summary['tasks']['bbh']['score'] == 1.0
  assert summary['tasks']['gsm8k']['score'] == 1.0
