"""Capability-drift matrix: flags and sensitivity from the definitions, files, and the driver."""

import csv
import json

import jax
import matplotlib.image
import numpy as np
import pytest

from peft_jax.evals import drift, tasks
from peft_jax.report import write_drift_heatmap

BASE = {'ifeval': 0.313, 'numeric': 0.133, 'nq': 0.40}
ADAPTERS = [
  # The abstract's strongest case: instruction-tuned, but the gain lands on numeric match.
  drift.AdapterScores(
    'instr_s0',
    'instruction',
    'ifeval',
    {'ifeval': 0.271, 'numeric': 0.632, 'nq': 0.40},
    config_id='seed0',
  ),
  drift.AdapterScores(
    'instr_s1',
    'instruction',
    'ifeval',
    {'ifeval': 0.413, 'numeric': 0.183, 'nq': 0.37},
    config_id='seed1',
  ),
  drift.AdapterScores(
    'instr_s2',
    'instruction',
    'ifeval',
    {'ifeval': 0.363, 'numeric': 0.053, 'nq': 0.41},
    config_id='seed2',
  ),
  drift.AdapterScores(
    'math_s0',
    'numeric',
    'numeric',
    {'ifeval': 0.213, 'numeric': 0.333, 'nq': 0.35},
    config_id='seed0',
  ),
]


def _expected(adapter):
  """Flags and drift straight from the definitions, in float64."""
  deltas = {t: np.float64(adapter.scores[t]) - np.float64(BASE[t]) for t in BASE}
  nominal = deltas[adapter.nominal_task]
  off = [d for t, d in deltas.items() if t != adapter.nominal_task]
  flags = []
  if nominal <= 0:
    flags.append('nominal_not_improved')
  if any(abs(d) > nominal for d in off):
    flags.append('off_target_exceeds_nominal')
  return deltas, nominal, max(off) - nominal, flags


def test_drift_report_matches_definitions():
  report = drift.drift_report(BASE, ADAPTERS)
  assert report['tasks'] == ['ifeval', 'numeric', 'nq']
  for adapter, row in zip(ADAPTERS, report['adapters']):
    deltas, nominal, drift_score, flags = _expected(adapter)
    assert row['deltas'] == pytest.approx(deltas, abs=1e-12)
    assert row['nominal_gain'] == pytest.approx(nominal, abs=1e-12)
    assert row['drift'] == pytest.approx(drift_score, abs=1e-12)
    assert row['flags'] == flags
  by_name = {row['name']: row for row in report['adapters']}
  # The abstract's numbers: ΔNM = +0.499, ΔILA = -0.042, drift = 0.541.
  assert by_name['instr_s0']['nominal_gain'] == pytest.approx(-0.042, abs=1e-12)
  assert by_name['instr_s0']['drift'] == pytest.approx(0.541, abs=1e-12)
  assert by_name['instr_s0']['flags'] == ['nominal_not_improved', 'off_target_exceeds_nominal']
  assert by_name['instr_s0']['off_target_gains'] == pytest.approx({'numeric': 0.499})
  assert by_name['instr_s1']['flags'] == [] and not by_name['instr_s1']['flagged']
  assert by_name['instr_s1']['off_target_losses'] == pytest.approx({'nq': -0.03})
  assert by_name['instr_s2']['flags'] == ['off_target_exceeds_nominal']
  assert by_name['math_s0']['flags'] == []

  gains = np.array([-0.042, 0.1, 0.05], dtype=np.float64)
  instruction = report['by_label']['instruction']
  assert instruction['nominal_gain']['mean'] == pytest.approx(gains.mean(), abs=1e-12)
  assert instruction['nominal_gain']['std'] == pytest.approx(
    np.sqrt(np.mean((gains - gains.mean()) ** 2)), abs=1e-12
  )
  assert instruction['nominal_gain']['min'] == pytest.approx(-0.042)
  assert instruction['sign_change'] and instruction['num_flagged'] == 2
  assert instruction['num_nominal_gain_positive'] == 2
  assert not report['by_label']['numeric']['sign_change']


def test_drift_outputs_json_csv_png(tmp_path):
  report = drift.drift_report(BASE, ADAPTERS)
  paths = drift.write_drift_outputs(report, str(tmp_path))
  assert json.loads(open(paths['json']).read()) == json.loads(json.dumps(report))
  with open(paths['csv'], newline='', encoding='utf-8') as f:
    header, *body = list(csv.reader(f))
  tasks_ = report['tasks']
  assert header == (
    ['adapter', 'label', 'config_id', 'nominal_task']
    + [f'score/{t}' for t in tasks_]
    + [f'delta/{t}' for t in tasks_]
    + ['nominal_gain', 'drift', 'flags']
  )
  rows = [dict(zip(header, r)) for r in body]
  assert all(len(r) == len(header) for r in body)
  assert [r['adapter'] for r in rows] == ['base', 'instr_s0', 'instr_s1', 'instr_s2', 'math_s0']
  # The base row: its raw scores under score/<task>, deltas 0, no label, gain, drift or flags.
  base_row = rows[0]
  for t in tasks_:
    assert float(base_row[f'score/{t}']) == BASE[t]
    assert float(base_row[f'delta/{t}']) == 0.0
  assert [base_row[k] for k in ('label', 'nominal_task', 'nominal_gain', 'drift', 'flags')] == [
    ''
  ] * 5
  for row, entry in zip(rows[1:], report['adapters']):
    assert row['label'] == entry['label'] and row['config_id'] == entry['config_id']
    assert row['nominal_task'] == entry['nominal_task']
    for t in tasks_:
      assert float(row[f'score/{t}']) == entry['scores'][t]
      assert float(row[f'delta/{t}']) == entry['deltas'][t]
      assert float(row[f'score/{t}']) - BASE[t] == pytest.approx(entry['deltas'][t], abs=1e-15)
    assert float(row['nominal_gain']) == entry['nominal_gain']
    assert float(row['drift']) == entry['drift']
    assert row['flags'] == ';'.join(entry['flags'])
  assert float(rows[1]['delta/numeric']) == pytest.approx(0.499)
  assert rows[1]['flags'] == 'nominal_not_improved;off_target_exceeds_nominal'
  # The heatmap is the report's one figure (peft_jax.report.write_drift_heatmap).
  png = write_drift_heatmap(report, str(tmp_path / 'drift_heatmap.png'))
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    'drift.csv',
    'drift.json',
    'drift_heatmap.png',
  ]


def test_drift_input_errors():
  with pytest.raises(ValueError, match="scores for \\['ifeval'\\] but the base has"):
    drift.drift_report(BASE, [drift.AdapterScores('a', 'x', 'ifeval', {'ifeval': 0.1})])
  with pytest.raises(ValueError, match="nominal task 'gsm8k' is not a scored task"):
    drift.drift_report(BASE, [drift.AdapterScores('a', 'x', 'gsm8k', dict(BASE))])
  with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
    drift.drift_report(BASE, [drift.AdapterScores('a', 'x', 'nq', dict(BASE))] * 2)


def test_evaluate_adapters_driver(tmp_path):
  nq_path = tmp_path / 'nq.jsonl'
  nq_path.write_text(
    ''.join(json.dumps({'question': f'q{i}', 'answer': [f'a{i}']}) + '\n' for i in range(4))
  )
  gsm_path = tmp_path / 'gsm8k.jsonl'
  gsm_path.write_text(
    ''.join(json.dumps({'question': f'n{i}', 'answer': f'so\n#### {i}'}) + '\n' for i in range(4))
  )
  task_list = [
    tasks.load_task({'type': 'nq_open', 'path': str(nq_path), 'name': 'nq'}),
    tasks.load_task({'type': 'gsm8k', 'path': str(gsm_path)}),
  ]

  # A "model" is a dict saying how many questions of each task it answers right.
  def generate_fn_for(params):
    def generate_fn(prompts, **kwargs):
      del kwargs
      outputs = []
      for prompt in prompts:
        if 'Question: q' in prompt:
          i = int(prompt.split('Question: q')[1][0])
          outputs.append(f'a{i}' if i < params['nq'] else 'wrong')
        else:
          i = int(prompt.split('Question: n')[1][0])
          outputs.append(f'#### {i}' if i < params['gsm8k'] else '#### 99')
      return outputs

    return generate_fn

  specs = [
    drift.AdapterSpec('math', 'math', 'gsm8k', {'nq': 1, 'gsm8k': 4}),
    drift.AdapterSpec('chat', 'qa', 'nq', {'nq': 2, 'gsm8k': 2}),
  ]
  base_scores, adapter_scores, report = drift.evaluate_adapters(
    None,
    {'nq': 2, 'gsm8k': 1},
    None,
    task_list,
    specs,
    key=jax.random.key(0),
    batch_size=3,
    out_dir=str(tmp_path / 'out'),
    generate_fn_for=generate_fn_for,
  )
  assert base_scores == {'nq': 0.5, 'gsm8k': 0.25}
  assert adapter_scores[0].scores == {'nq': 0.25, 'gsm8k': 1.0}
  rows = {row['name']: row for row in report['adapters']}
  assert rows['math']['nominal_gain'] == 0.75 and rows['math']['flags'] == []
  # No nq gain (0.5 -> 0.5) while gsm8k moved +0.25.
  assert rows['chat']['flags'] == ['nominal_not_improved', 'off_target_exceeds_nominal']
  assert (tmp_path / 'out' / 'math' / 'summary.json').exists()
  assert (tmp_path / 'out' / 'drift.json').exists()
