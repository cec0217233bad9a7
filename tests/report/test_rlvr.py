"""The SFT-vs-RLVR section (peft_jax.report.rlvr) on hand-made stage outputs: pass@k against the
exact binomial definition, the paired bootstrap against a NumPy reference drawn from the same
generator and against scipy.stats.bootstrap, the verdicts, the schema's errors and the section."""

import copy
import math
import os
import zlib
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from test_report import make_results, markdown_sections, parse, rlvr_entry, rlvr_stage_outputs

from peft_jax import report
from peft_jax.report import rlvr


def _exact_pass_at_k(n, c, k):
  """1 − C(n − c, k) / C(n, k) in exact rationals (math.comb; C(m, k) = 0 for m < k)."""
  return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize('n', [1, 4, 16, 64])
def test_pass_at_k_is_the_binomial_estimator(n):
  counts = np.arange(n + 1)
  for k in range(1, n + 1):
    got = rlvr.pass_at_k(counts, n, k)
    want = np.array([_exact_pass_at_k(n, int(c), k) for c in counts])
    # n factors (1 − k/i), each rounded once in the division and once in the product: the
    # relative error of the product is at most 2 n eps, its absolute error at most that.
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * n * np.finfo(np.float64).eps)
    assert got[0] == 0.0 and got[-1] == 1.0
  curve = rlvr.pass_at_k_curve([0, 1, n], n, [1, n])
  np.testing.assert_allclose(curve, [(1 / n + 1) / 3, (1 + 1) / 3], atol=2 * n * 2.3e-16)
  with pytest.raises(ValueError, match='pass@k needs 1 <= k <= num_samples'):
    rlvr.pass_at_k([0], n, n + 1)
  with pytest.raises(ValueError, match=f'counts must be a list of integers in \\[0, {n}\\]'):
    rlvr.pass_at_k([n + 1], n, 1)


def _numpy_paired(before, after, name, resamples, seed):
  """The definition: B draws of N prompts with replacement from default_rng([seed,
  crc32(name)]), the mean difference on each draw, numpy's linear percentile interval."""
  diff = np.asarray(after, np.float64) - np.asarray(before, np.float64)
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  draws = rng.integers(0, diff.size, size=(resamples, diff.size))
  return diff.mean(), np.quantile(diff[draws].mean(axis=1), [0.025, 0.975])


@pytest.mark.parametrize('shift,verdict', [(-0.3, 'lower'), (0.0, 'within noise'), (0.3, 'higher')])
def test_paired_difference_against_numpy_and_scipy(shift, verdict):
  rng = np.random.default_rng(3)
  before = rng.uniform(0.2, 0.8, size=24)
  after = np.clip(before + shift + rng.normal(0.0, 0.05, size=24), 0.0, 1.0)
  if shift == 0.0:
    after = before + np.tile([0.05, -0.05], 12)  # mean difference exactly 0
  got = rlvr.paired_mean_difference(before, after, name='passk:lora', resamples=2000, seed=0)
  delta, interval = _numpy_paired(before, after, 'passk:lora', 2000, 0)
  assert got['delta'] == pytest.approx(delta, abs=1e-15)
  np.testing.assert_allclose(got['interval'], interval, rtol=0, atol=1e-14)
  assert rlvr.direction(got, 'lower', 'higher') == verdict
  # SciPy's paired percentile bootstrap (its own draws) gives the same verdict; its endpoints
  # differ by Monte Carlo error only: the bootstrap distribution's sd / sqrt(B) scale, x 10.
  scipy_ci = stats.bootstrap(
    (before, after),
    lambda a, b, axis=-1: np.mean(b - a, axis=axis),
    paired=True,
    vectorized=True,
    n_resamples=20000,
    method='percentile',
    random_state=np.random.default_rng(1),
  ).confidence_interval
  spread = np.std(after - before) / np.sqrt(before.size)
  np.testing.assert_allclose(got['interval'], [scipy_ci.low, scipy_ci.high], atol=0.2 * spread)
  scipy_verdict = rlvr.direction({'interval': [scipy_ci.low, scipy_ci.high]}, 'lower', 'higher')
  assert scipy_verdict == verdict
  assert rlvr.direction(None, 'lower', 'higher') == 'no interval'


def test_entry_from_hand_made_stage_outputs():
  base, sft, rl, run, passk = rlvr_stage_outputs()
  entry = rlvr_entry()
  row = entry['methods']['lora']
  assert row['sft']['forget'] == pytest.approx(base['general'] - sft['general'], abs=1e-15)
  assert row['rlvr']['forget'] == pytest.approx(base['general'] - rl['general'], abs=1e-15)
  forget = row['difference']['forget']
  assert forget['delta'] == pytest.approx(row['rlvr']['forget'] - row['sft']['forget'], abs=1e-15)
  assert forget['delta'] == pytest.approx(-36 / 64, abs=1e-15)
  # The reference: SFT and RLVR general rows on the same resample indices (paired).
  s = np.asarray(sft['per_example']['nq']['numerator'], np.float64)
  r = np.asarray(rl['per_example']['nq']['numerator'], np.float64)
  _, interval = _numpy_paired(r, s, 'nq', 500, 0)  # Forget_RLVR − Forget_SFT = G_SFT − G_RLVR
  np.testing.assert_allclose(forget['interval'], interval, rtol=0, atol=1e-14)
  assert forget['interval'][1] < 0 and row['forgets'] == 'less'
  target = row['difference']['target']
  assert target['delta'] == pytest.approx(4 / 32 - 8 / 32, abs=1e-15)
  assert row['reward_mean'] == run['reward_mean']
  assert row['skipped_steps'] == 1 and row['logged_steps'] == 6
  assert rlvr.steps_cell(row) == '6 (1 skipped)'
  # A stage result from before the list existed: no count, and the cell is the step count.
  older = {k: v for k, v in run.items() if k != 'skipped'}
  older_entry = rlvr.results_entry(
    base=base, sft={'lora': sft}, rlvr={'lora': rl}, runs={'lora': older}, passk=passk,
    target='gsm', general_tasks=['nq'], resamples=500, seed=0,
  )  # fmt: skip
  assert older_entry['methods']['lora']['skipped_steps'] is None
  assert rlvr.steps_cell(older_entry['methods']['lora']) == '6'
  curves = entry['passk']['methods']['lora']
  for name in ('sft', 'early', 'late'):
    counts = passk['methods']['lora'][name]['counts']
    want = [np.mean([_exact_pass_at_k(16, c, k) for c in counts]) for k in passk['ks']]
    np.testing.assert_allclose(curves[name]['curve'], want, rtol=0, atol=32 * 2.3e-16)
  assert curves['early']['curve'][0] == pytest.approx(curves['late']['curve'][0], abs=1e-15)
  # pass@16: every prompt early, 4 of 12 late: -2/3, its interval below 0.
  d = curves['late_minus_early']
  assert d['k'] == 16 and d['delta'] == pytest.approx(-2 / 3, abs=1e-15)
  assert d['interval'][1] < 0 and curves['late_vs_early'] == 'lower'


def _render(results, out_dir, figures):
  document = report.build_document(results, figures)
  out_dir.mkdir()
  (out_dir / 'index.html').write_text(report.render_html(document), encoding='utf-8')
  (out_dir / 'index.md').write_text(report.render_markdown(document), encoding='utf-8')
  return parse(out_dir / 'index.html'), markdown_sections(out_dir / 'index.md')


def test_section_renders_and_says_not_run_without_the_phase(tmp_path):
  results = make_results(0)  # with its 'rlvr' entry (test_report.rlvr_entry)
  report.validate_results(results)
  # The section's own figures only (the other sections' are tested in test_report).
  figures = {
    'rlvr_plane': rlvr.plot_plane(results['rlvr'], results['base'], tmp_path / 'rlvr_plane.png'),
    'rlvr_passk': rlvr.plot_passk(results['rlvr'], tmp_path / 'rlvr_passk.png'),
    'rlvr_reward': rlvr.plot_reward(results['rlvr'], tmp_path / 'rlvr_reward.png'),
  }
  assert sorted(figures) == sorted(rlvr.FIGURES)
  for path in figures.values():
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  page, markdown = _render(
    results, tmp_path / 'with', {k: os.path.basename(v) for k, v in figures.items()}
  )
  assert 'Not run' not in page.sections['sft-vs-rlvr']
  table = page.tables['rlvr-table']
  assert table[0][0] == 'Method' and table[1][0] == 'lora' and table[1][-1] == 'less'
  assert table[1][1] == '6 (1 skipped)'
  row = results['rlvr']['methods']['lora']
  assert table[1][2] == f'{row["sft"]["target"]:.3f} [0.000, 1.000]'
  forget = row['difference']['forget']
  lo, hi = (100 * v for v in forget['interval'])
  assert table[1][9] == f'{100 * forget["delta"]:+.1f} [{lo:+.1f}, {hi:+.1f}]'
  passk = page.tables['rlvr-passk-table']
  assert passk[0] == ['Method', 'Model', 'GRPO step', 'pass@1', 'pass@2', 'pass@4', 'pass@8',
                      'pass@16']  # fmt: skip
  late = results['rlvr']['passk']['methods']['lora']['late']['curve']
  assert passk[4] == ['lora', 'RLVR late', '6', *(f'{v:.3f}' for v in late)]
  section = markdown['SFT vs RLVR']
  assert 'lora: RLVR forgets less than SFT' in section
  assert 'pass@16 is lower late than early' in section
  assert 'lora: 1 of 6 GRPO steps applied no update' in section
  for name in rlvr.FIGURES:
    assert f'{name}.png' in section
  results.pop('rlvr')
  page, _ = _render(results, tmp_path / 'without', {})
  assert 'Not run: no RLVR phase' in page.sections['sft-vs-rlvr']


@pytest.mark.parametrize(
  'edit,message',
  [
    (lambda e: e.pop('passk'), "missing required key results['rlvr']['passk']"),
    (
      lambda e: e['passk']['base'].pop('counts'),
      "missing required key results['rlvr']['passk']['base']['counts']",
    ),
    (
      lambda e: e['passk']['methods']['lora']['late']['counts'].__setitem__(0, 17),
      "results['rlvr']['passk']['methods']['lora']['late']['counts'][0]: expected a count in",
    ),
    (
      lambda e: e['methods']['lora']['reward_mean'].pop(),
      "results['rlvr']['methods']['lora']['reward_mean']: expected 6 values, got 5",
    ),
    (lambda e: e['passk'].update(ks=[4, 2]), "results['rlvr']['passk']['ks']: expected increasing"),
    (
      lambda e: e['methods']['lora'].update(skipped_steps=7),
      "results['rlvr']['methods']['lora']['skipped_steps']: expected 0 to 6 (steps), got 7",
    ),
    (
      lambda e: e['methods']['lora']['sft'].pop('forget'),
      "missing required key results['rlvr']['methods']['lora']['sft']['forget']",
    ),
  ],
)
def test_schema_names_the_bad_key(edit, message):
  results = make_results(0)  # with its 'rlvr' entry (test_report.rlvr_entry)
  report.validate_results(results)
  bad = copy.deepcopy(results)
  edit(bad['rlvr'])
  with pytest.raises(report.ResultsSchemaError) as raised:
    report.validate_results(bad)
  assert message in str(raised.value)
