"""The arena's real world (peft_jax.arena.real_world) end to end on a 2-layer truncation of
SmolLM2-135M-Instruct, at the `real` preset's smoke size: every stage runs, the report holds the
real tasks, the base's perplexity score matches transformers, and a rerun reuses every stage."""

import json
import math
import os

import numpy as np
import pytest
import torch
import transformers

from configs.arena import real as real_presets
from peft_jax import hub
from peft_jax.arena import drift_study, pipeline, progress, real_world
from peft_jax.arena import stages as stages_lib
from peft_jax.data import real_suite
from peft_jax.evals import axes
from peft_jax.evals import tasks as tasks_lib

# countryinfo is in the test extra (`make test` installs it): a missing package is a broken
# install, and real_suite says how to install it.


@pytest.fixture(scope='module')
def truncated_smollm(tmp_path_factory):
  """The first 2 layers of SmolLM2 (with its tokenizer and chat template) as an HF directory."""
  model, params, tokenizer = hub.load_pretrained('smollm2-135m-instruct')
  config = model.config.replace(num_layers=2, layer_types=model.config.layer_types[:2])
  params = {
    k: v for k, v in params.items() if not k.startswith('layers_') or k in ('layers_0', 'layers_1')
  }
  return str(hub.save_pretrained(config, params, tmp_path_factory.mktemp('smollm2l'), tokenizer))


@pytest.fixture(scope='module')
def real_run(truncated_smollm, tmp_path_factory):
  config = real_presets.get_config('smoke')
  config.base = truncated_smollm
  workdir = str(tmp_path_factory.mktemp('real_arena'))
  lines = []

  def log(line):
    lines.append(line)
    print(line)

  results = pipeline.run_arena(config, workdir, log=log)
  return dict(config=config, workdir=workdir, results=results, lines=lines)


def _inv_perplexity_torch(model_dir: str, texts) -> float:
  """mean_i exp(-NLL_i / n_i) of ``texts`` under transformers' Llama, one text at a time."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
  values = []
  with torch.no_grad():
    for text in texts:
      ids = torch.tensor([tokenizer(text, add_special_tokens=True)['input_ids'][:256]])
      logits = model(ids).logits[0, :-1]
      nll = -torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum()
      values.append(math.exp(-float(nll) / (ids.shape[1] - 1)))
  return float(np.mean(values))


def test_real_arena_end_to_end(real_run, truncated_smollm):
  results, workdir = real_run['results'], real_run['workdir']
  base = json.load(open(os.path.join(workdir, 'stages', 'base_eval', 'result.json')))
  chosen = base['real']
  names = [s['name'] for s in chosen['task_specs']]
  assert {'facts', 'ifeval', 'pydoc_ppl', 'gsm'} <= set(names)
  retention_path = os.path.join(workdir, 'stages', 'base_eval', real_world.RETENTION_FILE)
  facts_rows = [
    json.loads(line)
    for line in open(os.path.join(workdir, 'stages', 'base_eval', 'selection', 'facts.jsonl'))
  ]
  correct = [r['meta']['id'] for r in facts_rows if r['scores']['accuracy'] > 0.5]
  assert chosen['retention']['num_items'] == len(correct)
  if correct:  # the retention set: exactly the items the base answered, scored 1 by the base
    kept = [json.loads(line)['id'] for line in open(retention_path)]
    assert kept == [r['meta']['id'] for r in facts_rows if r['meta']['id'] in set(correct)]
    assert 'facts_retention' in names and base['tasks']['facts_retention'] == 1.0
  else:  # left out, with a message saying why
    assert 'facts_retention' not in names and not os.path.exists(retention_path)
    assert any('retention set empty' in line for line in real_run['lines'])
    assert any('retention set empty' in note for note in results['notes'])
  # The base's perplexity score against transformers in float64 (our run: float32).
  ppl_spec = next(s for s in chosen['task_specs'] if s['name'] == 'pydoc_ppl')
  texts = [json.loads(line)['text'] for line in open(ppl_spec['path'])][: ppl_spec['limit']]
  reference = _inv_perplexity_torch(truncated_smollm, texts)
  np.testing.assert_allclose(base['tasks']['pydoc_ppl'], reference, rtol=2e-4)
  # Every method was evaluated on the selected tasks, with finite scores, also along its α-grid.
  for method in real_run['config'].method_order:
    scores = json.load(open(os.path.join(workdir, 'stages', f'eval_{method}', 'result.json')))
    assert sorted(scores['tasks']) == sorted(names)
    assert all(math.isfinite(v) for v in scores['tasks'].values())
    paths = json.load(open(os.path.join(workdir, 'stages', f'paths_{method}', 'result.json')))
    assert all('pydoc_ppl' in t for t in paths['interpolation']['tasks'])
    record = json.load(open(os.path.join(workdir, 'stages', f'eval_{method}', 'stage.json')))
    assert 'base_eval' in record['inputs']  # a changed selection recomputes the evaluations
  sweep = json.load(open(os.path.join(workdir, 'stages', 'sweep_lora', 'result.json')))
  assert sweep['validation_tasks'] == {'gsm': 4, 'pydoc_ppl': 2}
  report = open(os.path.join(workdir, 'report', 'index.md')).read()
  for name in names:
    assert name in report
  assert any(line.startswith('[') and 'ETA' in line for line in real_run['lines'])
  # The rerun reuses every stage (and loads no model).
  again = pipeline.run_arena(real_run['config'], workdir, log=None)
  assert again['timing']['ran'] == []
  assert len(again['timing']['reused']) == len(results['timing']['ran'])


def test_drift_study(real_run):
  """Labelled LoRA adapters at two learning rates: the matrix is adapters x tasks of the stored
  evaluations, and its flags follow the stated rule from the stored gains."""
  config, workdir, results = real_run['config'], real_run['workdir'], real_run['results']
  runner = stages_lib.StageRunner(workdir, readonly=True)
  specs = drift_study.adapters(config)
  assert [(s['label'], s['config_id']) for s in specs] == [
    (label, cfg) for label in ('arithmetic', 'facts', 'instruction') for cfg in ('lr1', 'lr3')
  ]  # ConfigDict keys in sorted order
  base = runner.result('base_eval')
  tasks = list(base['tasks'])
  entry = results['drift_study']
  delta = np.asarray(entry['delta'])
  assert entry['tasks'] == tasks and delta.shape == (len(specs), len(tasks))
  stored = runner.result('drift_study')['adapters']
  compiles = 0
  for i, spec in enumerate(specs):
    scores = runner.result(f'eval_drift_{spec["name"]}')['tasks']
    gains = [scores[t] - base['tasks'][t] for t in tasks]
    np.testing.assert_array_equal(delta[i], gains)
    nominal = gains[tasks.index(spec['task'])]
    flags = ['nominal_not_improved'] if nominal <= 0 else []
    if any(abs(g) > nominal for t, g in zip(tasks, gains) if t != spec['task']):
      flags.append('off_target_exceeds_nominal')
    assert stored[i]['flags'] == flags and entry['flagged'].get(spec['name'], []) == flags
    train = runner.result(f'train_drift_{spec["name"]}')
    # The suite's SFT split of the label's task; the target's without the validation rows.
    data = 'splits/gsm_sft.jsonl' if spec['task'] == 'gsm' else f'suite/sft/{spec["task"]}.jsonl'
    assert train['data'] == data
    centre = config.methods.lora.optimizer.peak_lr
    assert train['peak_lr'] == pytest.approx(centre * spec['lr_factor'], rel=1e-12)
    assert len(train['train_loss']) == config.drift_study.train.total_steps == 1
    compiles += train['num_compiles']
    record = json.load(open(os.path.join(runner.path(f'eval_drift_{spec["name"]}'), 'stage.json')))
    assert set(record['inputs']) == {f'train_drift_{spec["name"]}', 'base_eval'}
  assert compiles <= 1  # one compiled step for the six runs (at most; the disk cache may hold it)
  # The configuration-sensitivity view: per label, both configurations, in the report.
  sensitivity = entry['sensitivity']
  assert set(sensitivity) == {'instruction', 'arithmetic', 'facts'}
  report = open(os.path.join(workdir, 'report', 'index.md')).read()
  assert (
    'Configuration sensitivity' in report and '![Drift-study heatmap](drift_study.png)' in report
  )
  for label, view in sensitivity.items():
    assert [r['config_id'] for r in view['configs']] == ['lr1', 'lr3']
    tops = {r['top_task'] for r in view['configs']}
    assert view['capability_differs'] == (len(tops) > 1)
    for row in view['configs']:
      assert f'| {label} | {row["config_id"]} | {row["nominal_task"]} |' in report


def test_select_tasks_from_rows(tmp_path):
  """The retention set and BBH selection from given per-example rows."""
  suite = str(tmp_path / 'suite')
  real_suite.write_real_suite(suite, sizes=dict(num_countries=5, bbh_test=4, gsm_train=4))
  items = [json.loads(line) for line in open(os.path.join(suite, 'general', 'facts_test.jsonl'))]
  rows = {
    'facts': [
      {'meta': {'id': it['id']}, 'scores': {'accuracy': float(i % 3 == 0)}}
      for i, it in enumerate(items)
    ]
  }
  chance = real_suite.read_manifest(suite)['bbh_chance']
  rows['bbh'] = [
    {'meta': {'subtask': s}, 'scores': {'accuracy': 1.0 if s == 'navigate' else 0.0}}
    for s in chance
    for _ in range(4)
  ]
  config = real_presets.get_config('smoke')
  chosen = real_world.select_tasks(
    config, suite, rows, str(tmp_path / 'tmp'), str(tmp_path / 'final')
  )
  expected = [it['id'] for i, it in enumerate(items) if i % 3 == 0]
  kept = [json.loads(line)['id'] for line in open(tmp_path / 'tmp' / real_world.RETENTION_FILE)]
  assert kept == expected and chosen['retention']['num_items'] == len(expected)
  retention = next(s for s in chosen['task_specs'] if s['name'] == 'facts_retention')
  assert retention['path'] == str(tmp_path / 'final' / real_world.RETENTION_FILE)
  assert chosen['bbh_kept'] == ['navigate']  # 4/4 correct: the interval's lower end is 1
  bbh = next(s for s in chosen['task_specs'] if s['name'] == 'bbh')
  assert bbh['subtasks'] == ['navigate']
  # The stage's second pass writes each task's per-example rows to <out_dir>/<task>.jsonl; the
  # retention set's file must survive it, and the later stages load it from the final folder.
  # (Regression: a retention file named facts_retention.jsonl was overwritten by those rows.)
  answers = {it['question']: it['answer'][0] for it in items}
  picked = [s for s in chosen['task_specs'] if s['name'] in ('facts', 'facts_retention')]
  second = [real_world._load(s, str(tmp_path / 'final'), str(tmp_path / 'tmp')) for s in picked]

  def generate_fn(prompts, *, max_new_tokens, chat, temperature, key):
    del max_new_tokens, chat, temperature, key
    return [f'It is {answers.get(p, "unknown")}.' for p in prompts]

  scores = axes.evaluate_scores(generate_fn, second, 4, str(tmp_path / 'tmp'), resamples=10)
  assert scores['tasks']['facts_retention'] == 1.0
  os.rename(tmp_path / 'tmp', tmp_path / 'final')
  loaded = tasks_lib.load_task(retention)
  assert [e.meta['id'] for e in loaded.examples] == expected
  # Nothing answered: no retention task, no BBH, and messages saying so.
  for row in rows['facts'] + rows['bbh']:
    row['scores']['accuracy'] = 0.0
  chosen = real_world.select_tasks(config, suite, rows, str(tmp_path / 't2'), str(tmp_path / 'f2'))
  names = [s['name'] for s in chosen['task_specs']]
  assert 'facts_retention' not in names and 'bbh' not in names
  assert any('retention set empty' in m for m in chosen['messages'])
  assert any('BBH left out' in m for m in chosen['messages'])


def test_eta_estimate():
  measured = {'sweep_lora': 100.0, 'eval_lora': 30.0, 'eval_dora': 50.0}
  # sweep_full: the sweep mean; eval_full: the eval mean; drift: the mean of all measured.
  assert progress.estimate(['sweep_full', 'eval_full', 'drift'], measured) == 100 + 40 + 60
  assert progress.estimate(['x'], {}) is None
  assert progress.format_seconds(3725) == '1h02m' and progress.format_seconds(75) == '1m15s'
