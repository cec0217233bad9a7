"""The Claims section (peft_jax.report.claims) on hand-built stage outputs: verdicts by the
stated rules, Spearman statistics against SciPy in float64."""

import json
import math
import types

import numpy as np
import pytest
from scipy import stats

from peft_jax import report
from peft_jax.evals import axes, drift, intervals
from peft_jax.report import claims

TARGET = 'gsm'
GENERAL = ('ifeval', 'nq')
TASKS = [types.SimpleNamespace(name=TARGET, kind='target')] + [
  types.SimpleNamespace(name=t, kind='general') for t in GENERAL
]
N = 400  # examples per task: effects of 5 points are significant

# (Target, General) accuracy per model, in PEFT-Arena's pattern: full gains and forgets most,
# PiSSA gains and forgets more than LoRA, VeRA barely moves, OFT dominates LoRA.
BASE = (0.2, 0.6)
ARENA = {
  'full': (0.8, 0.3),
  'lora': (0.5, 0.45),
  'dora': (0.5, 0.45),
  'pissa': (0.65, 0.35),
  'vera': (0.3, 0.6),
  'oft': (0.6, 0.55),
  'miss': (0.4, 0.5),
  'disel': (0.45, 0.5),
}


def _outcomes(p: float, n: int = N) -> list:
  """Nested outcomes: the first round(p n) examples right (so models differ on few examples)."""
  return [bool(v) for v in np.arange(n) < round(p * n)]


def _eval(target: float, general: float, n: int = N) -> dict:
  """An evaluate_scores-shaped stage result (through JSON, as the arena stores it)."""
  per_example = {TARGET: dict(intervals.unit_stats(_outcomes(target, n)), kind='target')}
  for task in GENERAL:
    per_example[task] = dict(intervals.unit_stats(_outcomes(general, n)), kind='general')
  scores = {t: intervals.point_estimate(s) for t, s in per_example.items()}
  result = {
    'tasks': scores,
    **axes.axes_from_scores(TASKS, scores),
    'per_example': per_example,
    'n': {t: n for t in per_example},
    'intervals': intervals.score_intervals(per_example),
    'bootstrap': {'resamples': 1000, 'seed': 0, 'confidence': 0.95},
  }
  return json.loads(json.dumps(result))


def _paths(scores, keep: float, n: int = N) -> dict:
  """An α-grid (0, 0.5, 1) whose middle point keeps ``keep`` of the gain and restores ``keep``
  of the general loss."""
  (t0, g0), (t1, g1) = BASE, scores
  points = [(t0, g0), (t0 + keep * (t1 - t0), g1 + keep * (g0 - g1)), (t1, g1)]
  evals = [_eval(t, g, n) for t, g in points]
  curve = {
    'target': [e['tasks'][TARGET] for e in evals],
    'general': [e['general'] for e in evals],
    'tasks': [e['tasks'] for e in evals],
    'per_example': [e['per_example'] for e in evals],
  }
  return {
    'alpha': [0.0, 0.5, 1.0],
    'interpolation': dict(curve, kind='linear'),
    'rewind': dict(curve, kind='additive', same_as_interpolation=True),
  }


def _geometry(forget: float, gain: float, i: int, *, sign: float = 1.0) -> dict:
  """Geometry whose CSD (general), Procrustes and Gram rise with ``forget`` (``sign=-1``: fall)
  and CKA falls; the target CSD follows the gain."""
  tie = 1e-3 * i  # breaks the ties of equal forgetting
  value = sign * forget
  return {
    'csd': [
      {
        'module': m,
        'general/rel': 0.5 + value + tie + k,
        'target/rel': 0.1 + gain + k,
        'rel_ratio': 1.0,
      }
      for k, m in enumerate(['layers_0/q_proj', 'layers_1/q_proj'])
    ],
    'activation': {
      'layers': [0, 1],
      'cka': [1.0 - 0.5 * (0.5 + value) - tie, 0.9 - 0.5 * (0.5 + value)],
      'procrustes': [0.5 + value + tie, 0.6 + value],
      'gram': [0.2 + 2 * value, 0.3 + 2 * value + tie],
    },
  }


def _stages(models, *, keep=0.8, sign=1.0, n=N):
  base = _eval(*BASE, n)
  per_method = {}
  for i, (m, (t, g)) in enumerate(models.items()):
    per_method[m] = {
      'eval': _eval(t, g, n),
      'geometry': _geometry(BASE[1] - g, t - BASE[0], i, sign=sign),
      'paths': _paths((t, g), keep, n),
    }
  return base, per_method


@pytest.fixture(scope='module')
def arena_like():
  base, per_method = _stages(ARENA)
  return base, per_method, claims.compute_claims(base, per_method, TARGET)


def _verdicts(found):
  return {c['id']: c['verdict'] for c in found['claims']}


def _rank_statistic(x, y):
  """Spearman's ρ of each row of ``x`` with ``y``, from scipy's average ranks (vectorised)."""

  def statistic(values, axis=-1):
    rx = stats.rankdata(values, axis=axis)
    ry = stats.rankdata(y)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean()
    return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum())

  return statistic


def scipy_spearman_test(x, y):
  """(ρ, exact two-sided permutation p) from scipy (also test_sae_report's reference)."""
  rho = stats.spearmanr(x, y).statistic
  result = stats.permutation_test(
    (np.asarray(x, np.float64),),
    _rank_statistic(x, np.asarray(y, np.float64)),
    permutation_type='pairings',
    n_resamples=np.inf,
    alternative='two-sided',
    vectorized=True,
  )
  return float(rho), float(result.pvalue)


def test_arena_pattern_agrees(arena_like):
  _, _, found = arena_like
  verdicts = _verdicts(found)
  # Claims 1-6 and 8 hold in the built data, each by a significant margin.
  assert {k: v for k, v in verdicts.items() if k != 7} == {
    k: 'agrees' for k in (1, 2, 3, 4, 5, 6, 8)
  }
  # Claim 7's second part ("target CSD does not predict the gain") can only agree with a
  # bootstrap interval inside ±0.5, which 8 methods cannot give: here target CSD follows the
  # gain exactly, a significant correlation, so the claim disagrees.
  assert verdicts[7] == 'disagrees' and 'CSD target' in found['claims'][6]['reason']
  oft = found['claims'][4]['numbers']
  assert sorted(oft['dominates']) == ['disel', 'dora', 'lora', 'miss'] and not oft['dominated_by']
  # VeRA does not forget: its α-grid has no loss to restore, so claim 6 leaves it out.
  paths = found['claims'][5]
  assert set(paths['numbers']['methods']) == set(ARENA) - {'vera'}
  assert 'vera (gain' in paths['evidence']
  # The paired differences between methods are the differences of their scores (points).
  assert 'pissa − lora: gain +15.0 [' in found['claims'][2]['evidence']
  assert 'Forget +10.0 [' in found['claims'][2]['evidence'].split('pissa − lora')[1]


def test_spearman_values_against_scipy(arena_like):
  base, per_method, found = arena_like
  forget = {m: BASE[1] - ARENA[m][1] for m in ARENA}
  gain = {m: ARENA[m][0] - BASE[0] for m in ARENA}
  by_pair = {t['pair']: t for t in found['correlations']}
  assert set(by_pair) == {
    'CSD general vs Forget',
    'CSD target vs Target gain',
    'Procrustes vs Forget',
    'Gram vs Forget',
    'CKA vs Forget',
  }
  reads = {
    'CSD general vs Forget': (lambda g: [r['general/rel'] for r in g['csd']], forget),
    'CSD target vs Target gain': (lambda g: [r['target/rel'] for r in g['csd']], gain),
    'Procrustes vs Forget': (lambda g: g['activation']['procrustes'], forget),
    'Gram vs Forget': (lambda g: g['activation']['gram'], forget),
    'CKA vs Forget': (lambda g: g['activation']['cka'], forget),
  }
  for pair, (read, ys) in reads.items():
    methods = list(ARENA)
    x = [float(np.mean(read(per_method[m]['geometry']))) for m in methods]
    y = [ys[m] for m in methods]
    rho, p = scipy_spearman_test(x, y)
    test = by_pair[pair]
    assert test['n'] == 8 and test['methods'] == methods and test['p_method'] == 'exact'
    np.testing.assert_allclose(test['rho'], rho, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(test['p'], p, rtol=1e-12)
    assert test['interval'][0] <= test['interval'][1]


@pytest.mark.parametrize('n', [5, 7])
def test_spearman_test_with_ties_against_scipy(n):
  rng = np.random.default_rng(n)
  x = rng.integers(0, 4, n).astype(np.float64)  # ties
  y = x + rng.normal(0.0, 1.0, n)
  test = claims.spearman_test(x, y, resamples=200, seed=3)
  rho, p = scipy_spearman_test(x, y)
  np.testing.assert_allclose(test['rho'], rho, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(test['p'], p, rtol=1e-12)
  assert test['min_p'] == pytest.approx(2 / math.factorial(n))
  # The bootstrap interval: scipy's ρ on the same draws, finite ones, percentile quantiles.
  draws = claims.bootstrap_indices(n, 200, 3)
  with np.errstate(invalid='ignore', divide='ignore'):
    replicates = []
    for row in draws:
      if np.ptp(x[row]) == 0 or np.ptp(y[row]) == 0:
        continue  # a constant side: no correlation (scipy warns and returns NaN)
      replicates.append(stats.spearmanr(x[row], y[row]).statistic)
  np.testing.assert_allclose(
    test['interval'], np.quantile(replicates, [0.025, 0.975]), rtol=1e-12, atol=1e-15
  )
  small = claims.spearman_test(x[:2], y[:2])
  assert small['n'] == 2 and small['rho'] is None and small['p'] is None


def test_reversed_pattern_disagrees():
  reversed_models = dict(ARENA, full=(0.3, 0.55), vera=(0.7, 0.5), oft=(0.35, 0.3))
  base, per_method = _stages(reversed_models, keep=0.0, sign=-1.0)
  found = claims.compute_claims(base, per_method, TARGET)
  verdicts = _verdicts(found)
  # 1: other methods gain more than full; 2: LoRA forgets more than full; 4: VeRA gains more
  # than LoRA; 5: OFT is dominated (LoRA gains more and forgets less); 6: the middle point is
  # the base on the target and the end on General; 8: Procrustes falls with forgetting.
  for claim in (1, 2, 4, 5, 6, 8):
    assert verdicts[claim] == 'disagrees', (claim, found['claims'][claim - 1]['reason'])
  assert 'lora' in found['claims'][4]['numbers']['dominated_by']
  assert verdicts[3] == 'agrees'  # PiSSA against LoRA is unchanged


def test_too_little_evidence_is_inconclusive():
  # 4 examples per task and 2 methods: no interval excludes 0 and no correlation can be tested.
  base, per_method = _stages({'lora': (0.5, 0.25), 'vera': (0.25, 0.5)}, n=4)
  found = claims.compute_claims(base, per_method, TARGET)
  assert set(_verdicts(found).values()) == {'inconclusive'}
  texts = {c['id']: c['evidence'] for c in found['claims']}
  assert texts[1] == 'needs full (not in this run)'
  assert texts[5] == 'needs oft (not in this run)'
  assert all(t['rho'] is None and t['n'] == 2 for t in found['correlations'])
  assert 'too few methods' in texts[8]


def test_claims_render_in_the_report(arena_like):
  base, per_method, found = arena_like
  stage_outputs = {}
  for m, stage in per_method.items():
    module = stage['geometry']['csd'][0]['module']
    stage_outputs[m] = dict(
      stage,
      train={
        'trainable_params': 10,
        'total_params': 100,
        'train_time_s': 1.0,
        'peak_memory_mb': 1.0,
        'train_loss': [1.0, 0.5],
      },
      geometry=dict(
        stage['geometry'],
        chosen_module=module,
        retention=[0.1],
        energy=[0.2],
        spectral={module: {'effective_rank': 1.0}},
      ),
    )
  results = report.assemble_results(
    title='t',
    target=TARGET,
    tasks=TASKS,
    base=base,
    per_method=stage_outputs,
    drift_result=drift.drift_report(
      base['tasks'],
      [drift.AdapterScores(m, 'math', TARGET, s['eval']['tasks']) for m, s in per_method.items()],
    ),
    gates=None,
    config={},
    timing={'total_s': 1.0, 'stages': {}},
  )
  report.validate_results(results)
  assert results['claims'] == json.loads(json.dumps(found))  # JSON-able, the same table
  document = report.build_document(results, {})
  section = next(s for s in document.sections if s.anchor == 'claims')
  table = next(b for b in section.blocks if getattr(b, 'table_id', '') == 'claims-table')
  assert [row[0] for row in table.rows] == [str(i) for i in range(1, 9)]
  assert [row[4].split(':')[0] for row in table.rows] == [c['verdict'] for c in found['claims']]
  markdown = report.render_markdown(document)
  assert '## Claims' in markdown and '7 of 8 findings agree' in markdown
  bad = dict(results, claims=dict(found, claims=[dict(found['claims'][0], verdict='maybe')]))
  with pytest.raises(report.ResultsSchemaError, match=r"\['claims'\]\['claims'\]\[0\]"):
    report.validate_results(bad)
