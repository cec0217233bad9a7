"""The harness and launch path on a tiny random decoder with a real (trained) tokenizer."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from peft_jax import hub
from peft_jax.adapters.core import Adapted, is_adapted
from peft_jax.adapters.inject import inject
from peft_jax.adapters.lora import LoRA
from peft_jax.data import tokenizer_train
from peft_jax.evals import harness, runner, scorers
from peft_jax.evals.generation import generate_text
from peft_jax.hub import peft_format
from peft_jax.models import ModelConfig, init_params

MAX_NEW_TOKENS = 6


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('tiny_eval')
  texts = [
    'Question: how many apples are there?\nAnswer: 12 apples. #### 12',
    'Answer the question with a short answer. Paris is the capital of France.',
  ] * 20
  tokenizer_train.train_tokenizer(texts, str(root / 'tok'), vocab_size=300)
  tokenizer = hub.load_tokenizer(str(root / 'tok'))
  config = ModelConfig(
    vocab_size=len(tokenizer),
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    eos_token_id=tokenizer.eos_token_id,
    bos_token_id=tokenizer.bos_token_id,
    pad_token_id=tokenizer.pad_token_id,
  )
  params = init_params(config, jax.random.key(0))
  hub.save_pretrained(config, params, str(root / 'model'), tokenizer=tokenizer)
  # A LoRA adapter with non-zero B, so that it changes the model.
  tree = inject(params, LoRA(rank=4, alpha=8.0), ['q_proj', 'v_proj'], key=jax.random.key(1))

  def randomize(node):
    if not is_adapted(node):
      return node
    b = node.params['lora_b']
    return Adapted(
      node.base,
      {**node.params, 'lora_b': 0.5 * jax.random.normal(jax.random.key(b.shape[1]), b.shape)},
      node.frozen,
      node.method,
    )

  tree = jax.tree.map(randomize, tree, is_leaf=is_adapted)
  peft_format.save_adapter(tree, str(root / 'adapter'))
  with open(root / 'gsm8k.jsonl', 'w') as f:
    for question, answer in [
      ('how many apples?', '#### 12'),
      ('two plus two?', '#### 4'),
      ('ten minus one?', '#### 9'),
    ]:
      f.write(json.dumps({'question': question, 'answer': 'steps\n' + answer}) + '\n')
  with open(root / 'nq.jsonl', 'w') as f:
    f.write(json.dumps({'question': 'capital of france', 'answer': ['Paris']}) + '\n')
    f.write(json.dumps({'question': 'largest planet', 'answer': ['Jupiter']}) + '\n')
  specs = {
    'gsm8k': {'type': 'gsm8k', 'path': str(root / 'gsm8k.jsonl'), 'max_new_tokens': MAX_NEW_TOKENS},
    'nq': {'type': 'nq_open', 'path': str(root / 'nq.jsonl'), 'max_new_tokens': MAX_NEW_TOKENS},
  }
  return root, specs


def _rows(directory, name):
  with open(os.path.join(directory, f'{name}.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_harness_on_tiny_model_is_deterministic_and_wired(setup, tmp_path):
  root, specs = setup
  model, params, tokenizer = hub.load_pretrained(str(root / 'model'))
  task_list = runner.load_tasks(specs)
  first = harness.evaluate(
    model,
    params,
    tokenizer,
    task_list,
    key=jax.random.key(3),
    batch_size=2,
    out_dir=str(tmp_path / 'a'),
  )
  second = harness.evaluate(
    model,
    params,
    tokenizer,
    task_list,
    key=jax.random.key(3),
    batch_size=2,
    out_dir=str(tmp_path / 'b'),
  )
  assert first == second
  for name in ('gsm8k', 'nq'):
    assert _rows(tmp_path / 'a', name) == _rows(tmp_path / 'b', name)
  # The harness passes each task's prompts and chat setting through: greedy generate_text on the
  # same prompts in one batch gives the same texts.
  nq_task = task_list[1]
  assert nq_task.chat
  direct = generate_text(
    model,
    params,
    tokenizer,
    [e.prompt for e in nq_task.examples],
    chat=True,
    max_new_tokens=MAX_NEW_TOKENS,
    temperature=0.0,
  )
  assert [row['generations'][0] for row in _rows(tmp_path / 'a', 'nq')] == direct
  # Scores are recomputed from the generations by the scorers.
  for row in _rows(tmp_path / 'a', 'gsm8k'):
    assert row['scores']['accuracy'] == scorers.score_numeric(
      row['generations'][0], row['reference']
    )


def test_runner_adapter_merged_equals_unmerged(setup, tmp_path):
  root, specs = setup
  summaries, generations = {}, {}
  for variant, adapter_dir, merge in [
    ('base', '', False),
    ('lora', str(root / 'adapter'), False),
    ('merged', str(root / 'adapter'), True),
  ]:
    config = runner.default_config()
    config.model_dir = str(root / 'model')
    config.adapter_dir = adapter_dir
    config.merge_adapter = merge
    config.batch_size = 4
    for name, spec in specs.items():
      config.tasks[name] = spec
    if variant != 'base':
      config.baseline_summary = str(tmp_path / 'base' / 'summary.json')
    summaries[variant] = runner.run_evaluation(config, str(tmp_path / variant))
    generations[variant] = [
      r['generations'] for r in _rows(tmp_path / variant, 'gsm8k') + _rows(tmp_path / variant, 'nq')
    ]
    assert os.path.isfile(tmp_path / variant / 'eval_config.json')
  assert generations['merged'] == generations['lora']
  assert generations['lora'] != generations['base']  # the adapter really changes the model
  assert summaries['merged']['tasks'] == summaries['lora']['tasks']
  assert summaries['lora']['forget'] == pytest.approx(
    summaries['base']['general'] - summaries['lora']['general']
  )
  saved = json.loads((tmp_path / 'lora' / 'summary.json').read_text())
  assert saved['forget'] == summaries['lora']['forget']
  assert np.isfinite(saved['target_gain'])


def test_launch_evaluate_cli(setup, tmp_path):
  """``python -m launch.evaluate --config=FILE:arg --workdir=DIR --config.x=...`` end to end."""
  root, specs = setup
  config_file = tmp_path / 'tiny_eval.py'
  config_file.write_text(
    'from peft_jax.evals.runner import default_config\n\n\n'
    'def get_config(arg=None):\n'
    '  config = default_config()\n'
    '  config.batch_size = int(arg)\n'
    f'  config.tasks.nq = {specs["nq"]!r}\n'
    "  config.tasks.nq['limit'] = 0\n"
    '  return config\n'
  )
  workdir = tmp_path / 'cli'
  repo_root = os.path.join(os.path.dirname(__file__), '..', '..')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  completed = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.evaluate',
      f'--config={config_file}:2',
      f'--workdir={workdir}',
      f'--config.model_dir={root / "model"}',
      '--config.tasks.nq.limit=1',
    ],
    cwd=repo_root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['tasks']['nq']['num_examples'] == 1
  assert summary['target'] is None and summary['general'] is not None
  saved_config = json.loads((workdir / 'eval_config.json').read_text())
  assert saved_config['batch_size'] == 2 and saved_config['tasks']['nq']['limit'] == 1


def test_runner_drift_matrix(setup, tmp_path):
  root, specs = setup
  config = runner.default_config()
  config.model_dir = str(root / 'model')
  config.batch_size = 4
  config.merge_adapter = True
  for name, spec in specs.items():
    config.tasks[name] = spec
  config.drift_adapters.qa_lora = dict(
    adapter_dir=str(root / 'adapter'), label='qa', nominal_task='nq', config_id='seed0'
  )
  # The command-line way: entries from a JSON file, adapter_dir relative to the file.
  (root / 'drift.json').write_text(
    json.dumps(
      {'math_lora': dict(adapter_dir='adapter', label='math', nominal_task='gsm8k', config_id='s0')}
    )
  )
  config.drift_adapters_file = str(root / 'drift.json')
  assert runner.drift_entries(config)['math_lora']['adapter_dir'] == str(root / 'adapter')
  report = runner.run_drift(config, str(tmp_path))
  assert [row['name'] for row in report['adapters']] == ['math_lora', 'qa_lora']
  base = json.loads((tmp_path / 'base' / 'summary.json').read_text())
  for row in report['adapters']:
    adapter = json.loads((tmp_path / row['name'] / 'summary.json').read_text())
    for task in ('gsm8k', 'nq'):
      assert row['deltas'][task] == pytest.approx(
        adapter['tasks'][task]['score'] - base['tasks'][task]['score'], abs=1e-12
      )
    assert row['flagged'] == (
      row['nominal_gain'] <= 0
      or any(
        abs(d) > row['nominal_gain'] for t, d in row['deltas'].items() if t != row['nominal_task']
      )
    )
  for file_name in ('drift.json', 'drift.csv'):
    assert (tmp_path / file_name).stat().st_size > 0
  config.drift_adapters.bad = dict(adapter_dir='x', label='x', nominal_task='mmlu')
  with pytest.raises(KeyError, match="nominal_task 'mmlu' is not a configured task"):
    runner.run_drift(config, str(tmp_path / 'bad'))
