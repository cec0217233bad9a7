"""The Delta-activation SAEs section (peft_jax.report.sae) on hand-made stage outputs: claims by
their stated rules, Spearman statistics against SciPy's exact permutation test, the alignment
bootstrap against scipy.stats.bootstrap, the schema's errors and the rendered section."""

import copy
import math

import numpy as np
import pytest
from scipy import stats
from test_claims import scipy_spearman_test as _scipy_test
from test_report import make_results, make_sae_study, markdown_sections, parse

from peft_jax import report
from peft_jax.report import sae


def _expected_verdict(rho, p, sign=+1):
  if p < 0.05:
    return 'agrees' if sign * rho > 0 else 'disagrees'
  return 'inconclusive'


CASES = {
  # density rises with rank within each site (a small site offset): rank agrees, depth not.
  'rank': (lambda i, j: 0.02 * (i + 1) + 0.005 * j, lambda i, j: 0.6),
  # density jumps with depth and barely moves with rank: depth agrees, rank not.
  'depth': (lambda i, j: 0.02 * (i + 1) + 0.2 * j, lambda i, j: 0.6 - 0.02 * i),
  # density falls with rank: disagrees; divergence rises with rank: disagrees.
  'reversed': (lambda i, j: 0.5 - 0.05 * i - 0.005 * j, lambda i, j: 0.3 + 0.1 * i),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_correlation_claims_against_scipy(case):
  density, divergence = CASES[case]
  study = make_sae_study(density, divergence)
  found = sae.compute_sae_claims(study, resamples=200, seed=1)
  rows = study['rows']
  x_rank = [r['rank'] for r in rows]
  x_depth = [r['depth'] for r in rows]
  dens = [r['sae']['mean_density'] for r in rows]
  div = [r['comparison']['divergence'] for r in rows]
  expected = {
    'density vs rank over all rows': (x_rank, dens),
    'density vs depth over residual rows': (x_depth, dens),
    'divergence vs rank over all rows': (x_rank, div),
    'divergence vs depth over residual rows': (x_depth, div),
  }
  by_pair = {t['pair']: t for t in found['correlations']}
  assert set(by_pair) == set(expected)
  scipy_results = {}
  for pair, (x, y) in expected.items():
    rho, p = _scipy_test(x, y)
    test = by_pair[pair]
    assert test['n'] == 8 and test['p_method'] == 'exact'
    np.testing.assert_allclose(test['rho'], rho, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(test['p'], p, rtol=1e-12)
    scipy_results[pair] = (rho, p)
  verdicts = {c['id']: c['verdict'] for c in found['claims']}
  assert verdicts[2] == _expected_verdict(*scipy_results['density vs rank over all rows'])
  assert verdicts[3] == _expected_verdict(*scipy_results['density vs depth over residual rows'])
  # Divergence: a significant trend disagrees; 8 rows cannot give an interval inside ±0.5.
  trends = [scipy_results[p][1] < 0.05 for p in expected if p.startswith('divergence')]
  assert verdicts[4] == ('disagrees' if any(trends) else 'inconclusive')
  designed = {'rank': ('agrees', 'inconclusive'), 'depth': ('inconclusive', 'agrees')}
  designed['reversed'] = ('disagrees', 'inconclusive')
  assert (verdicts[2], verdicts[3]) == designed[case]
  if case == 'reversed':
    assert verdicts[4] == 'disagrees'
  for claim in found['claims']:
    assert f'n = {8}' in claim['evidence'] or claim['id'] == 1


def test_alignment_bootstrap_against_scipy():
  rng = np.random.default_rng(5)
  samples = [np.clip(rng.normal(m, 0.1, n), 0, 1) for m, n in ((0.3, 40), (0.35, 60), (0.5, 30))]
  null, ceiling = [0.2, 0.22, 0.25], [0.6, 0.55, 0.7]
  got = sae.alignment_test(samples, null, ceiling, resamples=4000, seed=0)
  per_row = [(s.mean() - lo) / (hi - lo) for s, lo, hi in zip(samples, null, ceiling)]
  np.testing.assert_allclose(got['per_row'], per_row, rtol=1e-12)
  np.testing.assert_allclose(got['value'], np.mean(per_row), rtol=1e-12)
  assert got['n_rows'] == 3 and got['n_features'] == 130 and got['left_out'] == 0

  def statistic(*xs, axis=-1):
    return np.mean(
      [(x.mean(axis=axis) - lo) / (hi - lo) for x, lo, hi in zip(xs, null, ceiling)], axis=0
    )

  ref = stats.bootstrap(
    samples,
    statistic,
    n_resamples=4000,
    method='percentile',
    vectorized=True,
    paired=False,
    random_state=np.random.default_rng(1),
  ).confidence_interval
  width = ref.high - ref.low
  # Two Monte Carlo estimates of the same percentiles (B = 4000 each): their difference has a
  # standard deviation of about 0.06 of the interval's width; 0.15 allows 2.5 of them.
  np.testing.assert_allclose(got['interval'], [ref.low, ref.high], atol=0.15 * width)
  # A row whose ceiling does not exceed its null is left out.
  out = sae.alignment_test(samples, [0.2, 0.6, 0.25], [0.6, 0.55, 0.7], resamples=100, seed=0)
  assert out['n_rows'] == 2 and out['left_out'] == 1


@pytest.mark.parametrize('level,verdict', [(0.25, 'agrees'), (0.55, 'disagrees')])
def test_alignment_verdict(level, verdict):
  # MMCS at null + level (ceiling − null): the claim's rule compares a's interval with 0.5.
  null, ceiling = 0.2, 0.6
  study = make_sae_study(
    lambda i, j: 0.1, lambda i, j: 1.0 - (null + level * (ceiling - null)), features=256
  )
  found = sae.compute_sae_claims(study, resamples=500, seed=0)
  first = found['claims'][0]
  align = first['numbers']['alignment']
  lo, hi = align['interval']
  assert first['verdict'] == verdict, (lo, hi)
  assert (hi < sae.WEAK) == (verdict == 'agrees') and (lo > sae.WEAK) == (verdict == 'disagrees')
  assert align['n_rows'] == 8 and f'over 8 rows, {8 * 256:,} delta features' in first['evidence']


def _results_with_sae():
  results = make_results(2)
  study = make_sae_study(*CASES['rank'])
  results['sae'] = sae.results_entry(study, resamples=200, seed=0)
  return results, study


def test_section_renders_the_entry(tmp_path):
  results, study = _results_with_sae()
  report.validate_results(results)
  # The section's own figures only (the other sections' figures are tested in test_report).
  figures = {}
  for name in sae.FIGURES:
    path = sae.PLOTS[name](results['sae'], tmp_path / f'{name}.png')
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    figures[name] = f'{name}.png'
  document = report.build_document(results, figures)
  (tmp_path / 'index.html').write_text(report.render_html(document), encoding='utf-8')
  (tmp_path / 'index.md').write_text(report.render_markdown(document), encoding='utf-8')
  page = parse(tmp_path / 'index.html')
  for name in figures.values():
    assert name in page.images
  assert 'Not run' not in page.sections['delta-activation-saes']
  section = markdown_sections(tmp_path / 'index.md')['Delta-activation SAEs']
  for claim in results['sae']['claims']['claims']:
    assert f'| {claim["id"]} | {claim["finding"]} |' in section
  table = page.tables['sae-rows-table']
  assert len(table) == len(study['rows']) + 1  # header row
  first = study['rows'][0]
  assert table[1][:3] == [first['adapter'], str(first['rank']), first['site']]
  mmcs = first['comparison']['mmcs']
  assert table[1][4] == (
    f'{mmcs["value"]:.3f} [{mmcs["interval"][0]:.3f}, {mmcs["interval"][1]:.3f}]'
  )
  assert table[1][8] == f'{first["sae"]["mean_density"]:.4f}'


@pytest.mark.parametrize(
  'edit,message',
  [
    (lambda s: s.pop('rows'), "missing required key results['sae']['rows']"),
    (lambda s: s['rows'][1].update(rank=5), "results['sae']['rows'][1]['rank']: rank 5 is not in"),
    (
      lambda s: s['rows'][0]['mmcs'].pop('interval'),
      "missing required key results['sae']['rows'][0]['mmcs']['interval']",
    ),
    (
      lambda s: s['claims']['claims'][0].update(verdict='maybe'),
      "results['sae']['claims']['claims'][0]['verdict']: expected one of",
    ),
    (lambda s: s.update(sites=[]), "results['sae']['sites']: expected a non-empty list"),
  ],
)
def test_schema_names_the_bad_key(edit, message):
  results, _ = _results_with_sae()
  report.validate_results(results)
  bad = copy.deepcopy(results)
  edit(bad['sae'])
  with pytest.raises(report.ResultsSchemaError) as raised:
    report.validate_results(bad)
  assert message in str(raised.value)
  assert not math.isnan(results['sae']['rows'][0]['mmcs']['value'])
