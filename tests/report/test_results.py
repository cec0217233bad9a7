"""assemble_results from stage dicts: intervals and paired differences from per-example
statistics, optional sweep / trajectory entries, and stage results older than intervals."""

import copy
import json
import types

import numpy as np
import pytest

from peft_jax import report
from peft_jax.evals import axes, drift, intervals

TASKS = [
  types.SimpleNamespace(name='gsm8k', kind='target'),
  types.SimpleNamespace(name='ifeval', kind='general'),
  types.SimpleNamespace(name='bbh', kind='general'),
]
EPS = np.finfo(np.float64).eps


def _eval_result(rng, p_target, p_general):
  """An evaluate_scores-shaped result built from per-example outcomes (through JSON, as the
  arena stores it)."""
  followed_total = np.array([1, 2, 3] * 20)
  per_example = {
    'gsm8k': dict(intervals.unit_stats(rng.random(90) < p_target), kind='target'),
    'ifeval': dict(
      intervals.unit_stats(rng.binomial(followed_total, p_general), followed_total),
      kind='general',
    ),
    'bbh': dict(
      intervals.unit_stats(rng.random(48) < p_general, strata=['a'] * 20 + ['b'] * 28),
      kind='general',
    ),
  }
  scores = {t: intervals.point_estimate(s) for t, s in per_example.items()}
  result = {
    'tasks': scores,
    **axes.axes_from_scores(TASKS, scores),
    'per_example': per_example,
    'n': {t: len(s['numerator']) for t, s in per_example.items()},
    'intervals': intervals.score_intervals(per_example),
    'bootstrap': {'resamples': 1000, 'seed': 0, 'confidence': 0.95},
  }
  return json.loads(json.dumps(result))


def _stage(ev, **extra):
  module = 'layers_0/mlp/down_proj'
  return {
    'eval': ev,
    'train': {
      'trainable_params': 100,
      'total_params': 1000,
      'train_time_s': 1.0,
      'peak_memory_mb': 10.0,
      'train_loss': [2.0, 1.0],
    },
    'geometry': {
      'csd': [{'module': module, 'general/rel': 0.1, 'target/rel': 0.2, 'rel_ratio': 0.5}],
      'chosen_module': module,
      'retention': [0.1, 0.2],
      'energy': [0.3, 0.4],
      'spectral': {module: {'effective_rank': 1.5}},
      'activation': {
        'layers': [0, 1],
        'cka': [0.9, 0.8],
        'procrustes': [0.1, 0.2],
        'gram': [0.1, 0.3],
      },
    },
    'paths': {
      'alpha': [0.0, 1.0],
      'interpolation': {'target': [0.1, 0.5], 'general': [0.5, 0.4]},
      'rewind': {'target': [0.1, 0.5], 'general': [0.5, 0.4], 'kind': 'additive'},
    },
    **extra,
  }


def _assemble(base, per_method):
  return report.assemble_results(
    title='t',
    target='gsm8k',
    tasks=TASKS,
    base=base,
    per_method=per_method,
    drift_result=drift.drift_report(
      base['tasks'],
      [drift.AdapterScores(m, 'math', 'gsm8k', r['eval']['tasks']) for m, r in per_method.items()],
    ),
    gates=None,
    config={},
    timing={'total_s': 1.0, 'stages': {}},
  )


@pytest.fixture(scope='module')
def stages():
  rng = np.random.default_rng(0)
  base = _eval_result(rng, 0.2, 0.5)
  tuned = _eval_result(rng, 0.6, 0.47)
  sweep = {
    'lr': [1e-4, 3e-4],
    'target': [0.3, 0.4],
    'general': [0.5, 0.45],
    'chosen_lr': 3e-4,
    'split': 'validation',
    'steps': 20,
  }
  trajectory = {
    'step': [0, 10],
    'distance': [0.0, 0.1],
    'cka': [1.0, 0.9],
    'target': [0.2, 0.6],
    'general': [0.5, 0.47],
  }
  per_method = {
    'lora': _stage(tuned, sweep=sweep, trajectory=trajectory),
    'same': _stage(copy.deepcopy(base)),  # the base itself: every difference exactly 0
  }
  return base, tuned, per_method


def test_entries_carry_intervals_and_paired_differences(stages):
  base, tuned, per_method = stages
  results = _assemble(base, per_method)
  report.validate_results(results)
  assert results['base']['intervals']['target'] == base['intervals']['tasks']['gsm8k']
  assert results['base']['intervals']['general'] == base['intervals']['general']
  assert results['base']['n'] == {'gsm8k': 90, 'ifeval': 60, 'bbh': 48}
  assert results['bootstrap'] == base['bootstrap']
  lora = results['methods']['lora']
  assert lora['intervals'] == {
    'target': tuned['intervals']['tasks']['gsm8k'],
    'general': tuned['intervals']['general'],
    'tasks': tuned['intervals']['tasks'],
  }
  paired = lora['paired']
  assert paired['target_gain']['delta'] == pytest.approx(
    lora['target'] - base['tasks']['gsm8k'], abs=4 * EPS
  )
  assert paired['forget']['delta'] == pytest.approx(lora['forget'], abs=4 * EPS)
  for task in tuned['tasks']:
    assert paired['tasks'][task]['delta'] == pytest.approx(
      tuned['tasks'][task] - base['tasks'][task], abs=4 * EPS
    )
  for entry in [paired['target_gain'], paired['forget'], *paired['tasks'].values()]:
    lo, hi = entry['interval']
    assert lo <= entry['delta'] <= hi
    assert entry['within_noise'] == (lo <= 0 <= hi)
  assert paired['target_gain']['within_noise'] is False  # 0.2 -> 0.6 on 90 examples
  same = results['methods']['same']['paired']
  for entry in [same['target_gain'], same['forget'], *same['tasks'].values()]:
    assert entry['interval'] == [0.0, 0.0] and entry['within_noise'] is True
  # Optional stage results are passed through as the report reads them.
  assert lora['sweep'] == per_method['lora']['sweep']
  assert lora['trajectory'] == per_method['lora']['trajectory']
  assert 'sweep' not in results['methods']['same']


def test_old_stage_results_assemble_without_intervals(stages, tmp_path):
  """Stage results written before per-example statistics existed (no 'per_example', 'n',
  'intervals'): the report assembles and renders with no intervals."""
  base, tuned, per_method = stages
  old = ('per_example', 'n', 'intervals', 'bootstrap')
  base_old = {k: v for k, v in base.items() if k not in old}
  lora_old = dict(per_method['lora'], eval={k: v for k, v in tuned.items() if k not in old})
  results = _assemble(base_old, {'lora': lora_old})
  assert results['base']['intervals'] is None and results['base']['n'] is None
  entry = results['methods']['lora']
  assert entry['intervals'] is None and entry['paired'] is None
  # A new method beside an old base still gets its own intervals, but no paired ones.
  mixed = _assemble(base_old, {'lora': per_method['lora']})
  assert mixed['methods']['lora']['intervals'] is not None
  assert mixed['methods']['lora']['paired'] is None
  report.validate_results(results)
  table = report.print_summary_table(results)
  assert '[—]' in table.splitlines()[3]
