"""Bootstrap intervals: resampling against float64 references written from the definitions,
coverage of a Bernoulli mean, exact point estimates for every task type, paired differences."""

import collections
import math
import zlib

import jax
import numpy as np
import pytest

from peft_jax.evals import axes, harness, ifeval, intervals, tasks

EPS = np.finfo(np.float64).eps


def _percentile(values, q):
  """The linear-interpolation quantile from its definition: position q (B - 1) of the sorted
  values (numpy's default method, written out)."""
  ordered = sorted(float(v) for v in values)
  h = q * (len(ordered) - 1)
  low = math.floor(h)
  high = min(low + 1, len(ordered) - 1)
  return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def _reference_interval(replicates):
  return [_percentile(replicates, 0.025), _percentile(replicates, 0.975)]


def _reference_replicate(numerator, denominator, stratum, row):
  """One replicate from the definition: mean over strata of Σ a / Σ b over the drawn units."""
  sums = collections.defaultdict(lambda: [0.0, 0.0])
  for j in row:
    sums[int(stratum[j])][0] += float(numerator[j])
    sums[int(stratum[j])][1] += float(denominator[j])
  ratios = [a / b for a, b in (sums[s] for s in sorted(sums))]
  return math.fsum(ratios) / len(ratios)


def _indices(units, task, resamples=intervals.DEFAULT_RESAMPLES, seed=intervals.DEFAULT_SEED):
  return intervals.resample_indices(units, resamples, intervals.task_rng(seed, task))


def test_plain_mean_matches_definition_with_same_indices():
  rng = np.random.default_rng(0)
  x = (rng.random(57) < 0.4).astype(np.float64)
  stats = dict(intervals.unit_stats(x), kind='target')
  assert stats['numerator'] == [int(v) for v in x] and 'denominator' not in stats
  units = intervals.parse_units(stats)
  idx = _indices(units, 'gsm')
  assert idx.shape == (1000, 57) and idx.min() >= 0 and idx.max() < 57
  # Seeded by (seed, crc32(name)): the documented generator reproduces the draws.
  again = np.random.default_rng([0, zlib.crc32(b'gsm')]).integers(0, 57, size=(1000, 57))
  np.testing.assert_array_equal(idx, again)
  reference = [math.fsum(x[row]) / len(row) for row in idx]
  np.testing.assert_allclose(intervals.estimate(units, idx), reference, rtol=0, atol=4 * EPS)
  got = intervals.score_intervals({'gsm': stats})
  np.testing.assert_allclose(got['tasks']['gsm'], _reference_interval(reference), atol=4 * EPS)
  assert got['target'] == got['tasks']['gsm'] and got['general'] is None
  assert intervals.point_estimate(stats) == math.fsum(x) / 57


def test_stratified_resampling_stays_within_subtasks():
  """BBH-like: three subtasks of 5, 11 and 20 examples, interleaved in file order."""
  rng = np.random.default_rng(1)
  names = ['a'] * 5 + ['b'] * 11 + ['c'] * 20
  rng.shuffle(names)
  x = (rng.random(len(names)) < 0.5).astype(np.float64)
  stats = dict(intervals.unit_stats(x, strata=names), kind='general')
  units = intervals.parse_units(stats)
  assert units.strata == tuple(dict.fromkeys(names))
  idx = _indices(units, 'bbh')
  # Each replicate row holds exactly N_s draws from stratum s, and only from it.
  drawn = units.stratum[idx]
  for s, name in enumerate(units.strata):
    assert np.all((drawn == s).sum(axis=1) == names.count(name))
  reference = [_reference_replicate(x, np.ones_like(x), units.stratum, row) for row in idx]
  np.testing.assert_allclose(intervals.estimate(units, idx), reference, rtol=0, atol=8 * EPS)
  got = intervals.score_intervals({'bbh': stats})
  np.testing.assert_allclose(got['tasks']['bbh'], _reference_interval(reference), atol=8 * EPS)
  assert got['general'] == got['tasks']['bbh']
  by_subtask = [np.mean([x[i] for i in range(len(x)) if names[i] == n]) for n in units.strata]
  assert intervals.point_estimate(stats) == pytest.approx(np.mean(by_subtask), abs=4 * EPS)


def test_ratio_matches_definition():
  """IFEval-like: instructions followed over instructions per prompt, prompts resampled."""
  rng = np.random.default_rng(2)
  total = rng.integers(1, 4, size=40)
  followed = rng.binomial(total, 0.6)
  stats = intervals.unit_stats(followed, total)
  units = intervals.parse_units(stats)
  idx = _indices(units, 'ifeval')
  reference = [math.fsum(followed[row]) / math.fsum(total[row]) for row in idx]
  np.testing.assert_allclose(intervals.estimate(units, idx), reference, rtol=0, atol=4 * EPS)
  got = intervals.score_intervals({'ifeval': stats})['tasks']['ifeval']
  np.testing.assert_allclose(got, _reference_interval(reference), atol=4 * EPS)


def test_bernoulli_width_and_coverage():
  """Bernoulli(0.3), n = 200.

  Width: the bootstrap distribution of a mean has variance p̂(1 − p̂)/n exactly, so the
  percentile interval is 2·1.96·σ̂ wide up to (i) Monte Carlo error of the two quantiles,
  se ≈ sqrt(q(1 − q)/B) / φ(1.96) · σ̂ each (B = 20000: 0.019 σ̂), allowed 4 se on each end, and
  (ii) the lattice of the resampled mean, steps of 1/n, one step. Skewness and kurtosis change
  the width by < 0.001 σ̂ here (Cornish–Fisher).
  Coverage: over 500 independent samples the 95% interval holds p = 0.3 in a fraction within
  4 binomial standard errors of 0.95 (sqrt(0.95 · 0.05 / 500) = 0.0097).
  """
  n, p, z = 200, 0.3, 1.959964
  rng = np.random.default_rng(3)
  x = (rng.random(n) < p).astype(np.float64)
  p_hat = x.mean()
  sigma = math.sqrt(p_hat * (1 - p_hat) / n)
  resamples = 20_000
  lo, hi = intervals.score_intervals({'t': intervals.unit_stats(x)}, resamples=resamples)['tasks'][
    't'
  ]
  se_end = math.sqrt(0.025 * 0.975 / resamples) / (math.exp(-(z**2) / 2) / math.sqrt(2 * math.pi))
  tolerance = 2 * 4 * se_end * sigma + 1 / n
  assert abs((hi - lo) - 2 * z * sigma) <= tolerance, (hi - lo, 2 * z * sigma, tolerance)
  assert lo < p_hat < hi

  trials = 500
  samples = rng.random((trials, n)) < p
  covered = 0
  for i in range(trials):
    stats = intervals.unit_stats(samples[i].astype(np.float64))
    lo, hi = intervals.score_intervals({'t': stats}, seed=i)['tasks']['t']
    covered += lo <= p <= hi
  assert abs(covered / trials - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / trials), covered


def test_paired_identical_inputs_are_exactly_zero():
  rng = np.random.default_rng(4)
  per_example = {
    'gsm': dict(intervals.unit_stats(rng.random(30) < 0.5), kind='target'),
    'ifeval': dict(intervals.unit_stats([1, 2, 0, 3], [2, 2, 1, 3]), kind='general'),
    'bbh': dict(intervals.unit_stats([1, 0, 1, 1, 0], strata=list('xxyyy')), kind='general'),
  }
  paired = intervals.paired_intervals(per_example, per_example)
  for entry in [*paired['tasks'].values(), paired['target_gain'], paired['forget']]:
    assert entry['delta'] == 0.0 and entry['interval'] == [0.0, 0.0]
    assert entry['within_noise'] is True
    assert math.copysign(1.0, entry['interval'][0]) == 1.0  # no -0.0 to print as "-0.0"
  assert set(paired['tasks']) == set(per_example)


def test_paired_difference_matches_definition():
  """Same indices on both sides; Target gain over the target tasks, Forget = General_base −
  General_method over the general tasks resampled jointly."""
  rng = np.random.default_rng(5)
  n_t, n_g = 80, 60
  base = {
    'math': dict(intervals.unit_stats(rng.random(n_t) < 0.2), kind='target'),
    'nq': dict(intervals.unit_stats(rng.random(n_g) < 0.5), kind='general'),
  }
  method = {
    'math': dict(intervals.unit_stats(rng.random(n_t) < 0.7), kind='target'),
    'nq': dict(intervals.unit_stats(rng.random(n_g) < 0.48), kind='general'),
  }
  paired = intervals.paired_intervals(base, method)
  replicate = {}
  for task in base:
    a0 = np.asarray(base[task]['numerator'], np.float64)
    a1 = np.asarray(method[task]['numerator'], np.float64)
    idx = _indices(intervals.parse_units(base[task]), task)
    replicate[task] = [math.fsum(a1[row]) / len(row) - math.fsum(a0[row]) / len(row) for row in idx]
    assert paired['tasks'][task]['delta'] == pytest.approx(a1.mean() - a0.mean(), abs=4 * EPS)
    np.testing.assert_allclose(
      paired['tasks'][task]['interval'], _reference_interval(replicate[task]), atol=8 * EPS
    )
  np.testing.assert_allclose(
    paired['target_gain']['interval'], _reference_interval(replicate['math']), atol=8 * EPS
  )
  np.testing.assert_allclose(
    paired['forget']['interval'],
    _reference_interval([-d for d in replicate['nq']]),
    atol=8 * EPS,
  )
  assert paired['target_gain']['within_noise'] is False  # a 50-point gain on 80 examples
  assert paired['forget']['delta'] == pytest.approx(-paired['tasks']['nq']['delta'], abs=EPS)
  # An unpaired method (other examples) is refused, naming the task.
  with pytest.raises(ValueError, match="task 'nq': paired intervals need the same examples"):
    intervals.paired_intervals(base, dict(method, nq=intervals.unit_stats([1, 0])))


def test_bad_statistics_name_the_key():
  with pytest.raises(ValueError, match=r"per_example\['x'\]\['denominator'\]: 2 values for 3"):
    intervals.score_intervals({'x': {'numerator': [1, 0, 1], 'denominator': [1, 2]}})
  with pytest.raises(KeyError, match="per_example\\['x'\\]: expected a dict with a 'numerator'"):
    intervals.score_intervals({'x': {'scores': [1]}})
  with pytest.raises(ValueError, match=r"\['stratum'\]: ids must lie in \[0, 1\)"):
    intervals.parse_units({'numerator': [1, 0], 'stratum': [0, 1], 'strata': ['a']})


# ---------------------------------------------------------------------------------------------
# Every task type through the harness: the point estimate from the per-example statistics is the
# scorer's aggregate.
# ---------------------------------------------------------------------------------------------


def _fake_generate(outputs):
  """A deterministic generate_fn: the k-th time a prompt is seen it gets outputs[prompt][k % 2]."""
  seen = collections.Counter()

  def generate_fn(prompts, **kwargs):
    del kwargs
    texts = []
    for prompt in prompts:
      texts.append(outputs[prompt][seen[prompt] % len(outputs[prompt])])
      seen[prompt] += 1
    return texts

  return generate_fn


def _suite():
  rng = np.random.default_rng(6)
  numeric, nq, bbh, ifeval_examples, outputs = [], [], [], [], {}
  for i in range(23):
    prompt = f'Question: what is {i} + {i}?\nAnswer:'
    numeric.append(tasks.Example(prompt, str(2 * i), {'index': i}))
    outputs[prompt] = [f'#### {2 * i if rng.random() < 0.5 else i}' for _ in range(2)]
  for i in range(17):
    prompt = f'Question: capital number {i}\nAnswer:'
    nq.append(tasks.Example(prompt, [f'City {i}', f'C{i}'], {'index': i}))
    outputs[prompt] = [f'city {i}.' if rng.random() < 0.4 else 'Nowhere']
  for subtask, size in (('boolean_expressions', 3), ('date_understanding', 8), ('navigate', 5)):
    for i in range(size):
      prompt = f'Q: {subtask} {i}\nA:'
      target = '(A)' if subtask == 'date_understanding' else 'True'
      bbh.append(tasks.Example(prompt, target, {'subtask': subtask, 'index': i}))
      right = 'So the answer is (A).' if target == '(A)' else 'So the answer is True.'
      outputs[prompt] = [right if rng.random() < 0.5 else 'So the answer is False.']
  pool = [
    ('punctuation:no_comma', {}),
    ('change_case:english_lowercase', {}),
    ('length_constraints:number_words', {'num_words': 4, 'relation': 'at least'}),
  ]
  for i in range(19):
    chosen = [pool[j] for j in sorted(rng.choice(3, size=1 + i % 3, replace=False))]
    prompt = f'Instruction prompt {i}'
    ifeval_examples.append(
      tasks.Example(
        prompt,
        [c[0] for c in chosen],
        {'key': i, 'kwargs': [ifeval.clean_kwargs(c[0], c[1]) for c in chosen]},
      )
    )
    outputs[prompt] = [
      'the quick brown fox jumps',
      'The quick, brown fox',
      'three words only' if i % 2 else 'a, b',
    ][i % 3 : i % 3 + 1]
  suite = [
    tasks.Task('gsm8k', 'target', tuple(numeric), tasks.NUMERIC_SCORER, num_samples=2),
    tasks.Task('math500', 'target', tuple(numeric[:9]), tasks.NUMERIC_SCORER),
    tasks.Task('ifeval', 'general', tuple(ifeval_examples), tasks.IFEVAL_SCORER),
    tasks.Task('bbh', 'general', tuple(bbh), tasks.BBH_SCORER),
    tasks.Task('nq_open', 'general', tuple(nq), tasks.NQ_SCORER),
  ]
  return suite, outputs


@pytest.fixture(scope='module')
def scored():
  suite, outputs = _suite()
  return suite, axes.evaluate_scores(_fake_generate(outputs), suite, batch_size=4)


def test_point_estimates_equal_scorer_aggregates(scored):
  suite, result = scored
  for task in suite:
    stats = result['per_example'][task.name]
    assert stats['kind'] == task.kind
    assert len(stats['numerator']) == result['n'][task.name] == len(task.examples)
    # The aggregate sums at most S ratios in another order: a few ulps at most.
    assert intervals.point_estimate(stats) == pytest.approx(
      result['tasks'][task.name], rel=0, abs=4 * EPS
    ), task.name
    assert 0.0 < result['tasks'][task.name] < 1.0, task.name  # not a degenerate 0 or 1
  gsm = np.asarray(result['per_example']['gsm8k']['numerator'])
  assert np.any(gsm == 0.5)  # avg@2: fractional per-example scores
  assert result['per_example']['bbh']['strata'] == [
    'boolean_expressions',
    'date_understanding',
    'navigate',
  ]
  assert 'denominator' in result['per_example']['ifeval']


def test_evaluate_scores_intervals(scored):
  suite, result = scored
  assert {'tasks', 'target', 'general'} <= set(result)
  assert result['target'] == pytest.approx(
    np.mean([result['tasks'][t] for t in ('gsm8k', 'math500')])
  )
  assert result['bootstrap'] == {'resamples': 1000, 'seed': 0, 'confidence': 0.95}
  replicates = {}
  for task in suite:
    units = intervals.parse_units(result['per_example'][task.name])
    idx = _indices(units, task.name)
    replicates[task.name] = [
      _reference_replicate(units.numerator, units.denominator, units.stratum, row) for row in idx
    ]
    lo, hi = result['intervals']['tasks'][task.name]
    np.testing.assert_allclose([lo, hi], _reference_interval(replicates[task.name]), atol=8 * EPS)
    assert lo <= result['tasks'][task.name] <= hi
  for kind in ('target', 'general'):
    names = [t.name for t in suite if t.kind == kind]
    joint = np.mean([replicates[t] for t in names], axis=0)
    np.testing.assert_allclose(result['intervals'][kind], _reference_interval(joint), atol=8 * EPS)
  # A scorer without per-example statistics gives its task no interval, and its axis none.
  custom = tasks.Scorer(
    score=tasks.NQ_SCORER.score,
    aggregate=tasks.NQ_SCORER.aggregate,
    main_metric='exact_match',
    correct_metric='exact_match',
  )
  nq = next(t for t in suite if t.name == 'nq_open')
  task_result, _ = harness.evaluate_task(
    _fake_generate(_suite()[1]),
    tasks.Task('nq_custom', 'general', nq.examples, custom),
    key=jax.random.key(0),
    batch_size=4,
  )
  assert task_result['per_example'] is None
  per_example = dict(result['per_example'], nq_custom=None)
  general = ['ifeval', 'bbh', 'nq_open', 'nq_custom']
  got = intervals.score_intervals(per_example, general_tasks=general)
  assert got['tasks']['nq_custom'] is None and got['general'] is None
  assert got['target'] == result['intervals']['target']
