"""The report's "Delta-activation SAEs" section: the arena's ``sae`` stage, its figures and claims.

:func:`results_entry` turns the stage result (``peft_jax.sae.study``'s ``sae_study.json``,
docs/SAE.md) into the report's ``results['sae']`` entry: one compact row per (adapter, site), the
base SAEs per site, and the claims table of :func:`compute_sae_claims`, a pure function of the
stage's rows. The figures draw alignment, feature density and divergence against rank and depth.

Claims (rules in docs/SAE.md, "The arena stage and its claims"; each claim's ``rule`` text
states it too). Verdicts as in ``peft_jax.report.claims``: *agrees* when every part is
significant as claimed, *disagrees* when a part is significant against it, *inconclusive*
otherwise.

1. Weak alignment: the normalised alignment ``a = (MMCS − MMCS_null) / (MMCS_reseed −
   MMCS_null)`` averaged over rows, with a 95% bootstrap interval over the delta features
   (resampled within each row; null and ceiling held fixed). Interval below ``WEAK`` → agrees,
   above → disagrees.
2. Density rises with rank: Spearman ρ(rank, mean density) over all rows, permutation p
   (``claims.spearman_test``: exact up to ``claims.EXACT_MAX_N`` rows); ρ > 0 with p < α →
   agrees, ρ < 0 with p < α → disagrees.
3. Density rises with depth: the same over the residual-stream rows against depth.
4. Divergence ``1 − MMCS`` roughly constant: ρ(rank, divergence) over all rows and ρ(depth,
   divergence) over residual rows; each part agrees when its bootstrap interval of ρ lies
   inside (−``claims.EQUIVALENCE``, ``claims.EQUIVALENCE``) and disagrees when p < α.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import matplotlib
import numpy as np

from peft_jax.evals import intervals
from peft_jax.report import claims as claims_lib
from peft_jax.report import figures as figs
from peft_jax.report import formatting as fmt

WEAK = 0.5  # claim 1: mean normalised alignment below this bound counts as weak
FIGURES = ('sae_alignment', 'sae_density', 'sae_divergence')


# ---- the results entry ----------------------------------------------------------------------


def _ci(entry: Optional[Mapping[str, Any]]) -> Optional[dict]:
  if entry is None:
    return None
  out = {'value': float(entry['value']), 'interval': [float(v) for v in entry['interval']]}
  if 'n' in entry:
    out['n'] = int(entry['n'])
  return out


def _finite_interval(interval: Sequence[float]) -> Optional[list]:
  lo, hi = (float(v) for v in interval)
  return [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None


def _row(study_row: Mapping[str, Any], base_rows: Mapping[str, Any]) -> dict:
  sae, c = study_row['sae'], study_row['comparison']
  base = base_rows[study_row['site']]
  ce = (sae.get('ce') or {}).get('ce_loss_recovered')
  reseed = base.get('reseed_mmcs')
  return {
    'adapter': str(study_row['adapter']),
    'rank': int(study_row['rank']),
    'site': str(study_row['site']),
    'kind': str(study_row['kind']),
    'layer': int(study_row['layer']),
    'depth': float(study_row['depth']),
    'mmcs': _ci(c['mmcs']),
    'mmcs_null': float(c['mmcs_null']),
    'reseed_mmcs': None if reseed is None else float(reseed['value']),
    'one_to_one': _ci(c['one_to_one']['mean_cosine']),
    'divergence': float(c['divergence']),
    'principal_angle_mean_deg': float(c['principal_angles']['mean_deg']),
    'mean_density': float(sae['mean_density']),
    'l0': _ci(sae['l0']),
    'fvu': _ci(sae['fvu']),
    'dead_fraction': float(sae['dead_fraction']),
    'ce_loss_recovered': None if ce is None else _ci(ce),
  }


def results_entry(
  study: Mapping[str, Any], *, resamples: int = intervals.DEFAULT_RESAMPLES, seed: int = 0
) -> dict:
  """The report's ``sae`` entry from the ``sae`` stage result (``sae_study.json``).

  Returns:
    ``{'base', 'model', 'ranks', 'sites', 'tokens', 'rows': [...], 'base_rows': [...],
    'claims', 'timings_s'}`` (schema in ``peft_jax.report``'s docstring).
  """
  base_rows = study['base_rows']
  rows = [_row(r, base_rows) for r in study['rows']]
  base = []
  for site in study['sites']:
    b = base_rows[site]
    base.append(
      {
        'site': str(site),
        'layer': int(b['layer']),
        'kind': str(b['kind']),
        'fvu': _ci(b['sae']['fvu']),
        'l0': _ci(b['sae']['l0']),
        'mean_density': float(b['sae']['mean_density']),
        'reseed_mmcs': _ci(b.get('reseed_mmcs')),
      }
    )
  return {
    'base': str(study['base']),
    'model': dict(study['model']),
    'ranks': [int(a['rank']) for a in study['adapters']],
    'sites': [str(s) for s in study['sites']],
    'tokens': {'train': int(study['tokens']['train']), 'eval': int(study['tokens']['eval'])},
    'rows': rows,
    'base_rows': base,
    'claims': compute_sae_claims(study, resamples=resamples, seed=seed),
    'timings_s': {k: float(v) for k, v in study['timings_s'].items()},
  }


# ---- claims ---------------------------------------------------------------------------------


def alignment_test(
  max_cos: Sequence[Sequence[float]],
  null: Sequence[float],
  ceiling: Sequence[float],
  *,
  resamples: int,
  seed: int,
  confidence: float = intervals.CONFIDENCE,
) -> dict[str, Any]:
  """Mean over rows of ``a_r = (mean(max_cos_r) − null_r) / (ceiling_r − null_r)`` with a
  percentile bootstrap interval: each replicate resamples every row's features with
  replacement (rows are strata), from ``default_rng([seed, crc32('sae-alignment')])``.
  Rows whose ceiling is not above their null are left out (``left_out``)."""
  rng = np.random.default_rng([int(seed), zlib.crc32(b'sae-alignment')])
  kept = [i for i in range(len(max_cos)) if float(ceiling[i]) > float(null[i]) and len(max_cos[i])]
  out: dict[str, Any] = {'n_rows': len(kept), 'left_out': len(max_cos) - len(kept)}
  out['n_features'] = int(sum(len(max_cos[i]) for i in kept))
  if not kept:
    return dict(out, value=None, interval=None, per_row=[])
  values, replicates = [], np.zeros(int(resamples))
  for i in kept:
    x = np.asarray(max_cos[i], dtype=np.float64)
    lo, span = float(null[i]), float(ceiling[i]) - float(null[i])
    values.append((x.mean() - lo) / span)
    draws = x[rng.integers(0, x.size, size=(int(resamples), x.size))].mean(axis=1)
    replicates += (draws - lo) / span
  replicates /= len(kept)
  return dict(
    out,
    value=float(np.mean(values)),
    interval=intervals.percentile_interval(replicates, confidence),
    per_row=[float(v) for v in values],
  )


def _claim(number, finding, rule, verdict, evidence, reason, **numbers) -> dict:
  return dict(
    id=number,
    finding=finding,
    rule=rule,
    verdict=verdict,
    evidence=evidence,
    reason=reason,
    numbers=numbers,
  )


def _verdict(parts: Sequence[tuple[str, int]]) -> tuple[str, str]:
  verdict = claims_lib.combine([s for _, s in parts])
  if verdict == 'agrees':
    return verdict, 'every part significant as claimed'
  if verdict == 'disagrees':
    return verdict, 'significant against the claim: ' + '; '.join(n for n, s in parts if s < 0)
  return verdict, 'not significant: ' + '; '.join(n for n, s in parts if s == 0)


def correlation_sign(test: Mapping[str, Any]) -> int:
  """+1 / −1 for ρ > 0 / ρ < 0 with p < ALPHA, 0 otherwise."""
  if test['p'] is None or test['p'] >= claims_lib.ALPHA:
    return 0
  return 1 if test['rho'] > 0 else -1


def stable_sign(test: Mapping[str, Any]) -> int:
  """A "roughly constant" part: −1 when ρ is significant (p < ALPHA), +1 when its bootstrap
  interval lies inside (−EQUIVALENCE, EQUIVALENCE), 0 otherwise."""
  if correlation_sign(test) != 0:
    return -1
  interval, bound = test.get('interval'), claims_lib.EQUIVALENCE
  if (
    test['rho'] is not None and interval is not None and -bound < interval[0] < interval[1] < bound
  ):
    return 1
  return 0


def _corr_text(c: Mapping[str, Any]) -> str:
  if c['rho'] is None:
    return (
      f'{c["pair"]}: n = {c["n"]}, no test (fewer than {claims_lib.MIN_N} rows or a constant side)'
    )
  lo, hi = c['interval'] if c['interval'] is not None else (math.nan, math.nan)
  text = (
    f'{c["pair"]}: ρ = {c["rho"]:+.3f}, n = {c["n"]}, p = {c["p"]:.3g} ({c["p_method"]}), '
    f'bootstrap [{lo:+.3f}, {hi:+.3f}]'
  )
  if c['min_p'] >= claims_lib.ALPHA:
    text += f' (no p below {c["min_p"]:.3g} is possible at this n)'
  return text


def _test(pair, x, y, expected, resamples, seed) -> dict:
  test = claims_lib.spearman_test(x, y, resamples=resamples, seed=seed)
  return dict(test, pair=pair, expected=expected)


def compute_sae_claims(
  study: Mapping[str, Any], *, resamples: int = intervals.DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
  """The SAE claims table from the ``sae`` stage result (module docstring; docs/SAE.md).

  Args:
    study: ``sae_study.json``: ``rows`` (``rank``, ``kind``, ``depth``, ``sae.mean_density``,
      ``comparison.{mmcs_null, divergence, per_feature.max_cos}``) and ``base_rows``
      (``reseed_mmcs``, absent without a reseeded base SAE: the ceiling is then 1).
    resamples, seed: bootstrap settings.
  Returns:
    ``{'claims': [{'id', 'finding', 'rule', 'verdict', 'evidence', 'reason', 'numbers'}],
    'correlations': [spearman_test dicts with 'claim', 'pair', 'expected'], 'alignment',
    'alpha', 'resamples', 'seed'}``.
  """
  rows, base_rows = list(study['rows']), study['base_rows']
  residual = [r for r in rows if r['kind'] == 'residual']
  alpha, bound = claims_lib.ALPHA, claims_lib.EQUIVALENCE

  # 1. Weak alignment.
  ceiling = [(base_rows[r['site']].get('reseed_mmcs') or {}).get('value', 1.0) for r in rows]
  align = alignment_test(
    [r['comparison']['per_feature']['max_cos'] for r in rows],
    [r['comparison']['mmcs_null'] for r in rows],
    ceiling,
    resamples=resamples,
    seed=seed,
  )
  finding = 'Delta features align weakly with the base dictionary.'
  rule = (
    'a = (MMCS − MMCS_null) / (MMCS_reseed − MMCS_null) per (rank, site) row (MMCS_null: random '
    'directions; MMCS_reseed: a base SAE from another seed, 1 without one), averaged over rows; '
    f'its 95% bootstrap interval (delta features resampled within each row) below {WEAK} → '
    f'agrees, above {WEAK} → disagrees.'
  )
  if align['value'] is None or align['interval'] is None:
    why = 'no row whose ceiling exceeds its null (or no finite bootstrap replicate)'
    first = _claim(1, finding, rule, 'inconclusive', why, why, alignment=align)
  else:
    lo, hi = align['interval']
    part = 1 if hi < WEAK else -1 if lo > WEAK else 0
    verdict, reason = _verdict([(f'mean a vs {WEAK}', part)])
    evidence = (
      f'mean a = {align["value"]:.3f} [{lo:.3f}, {hi:.3f}] over {align["n_rows"]} rows, '
      f'{align["n_features"]:,} delta features'
      + (f' ({align["left_out"]} rows left out: ceiling ≤ null)' if align['left_out'] else '')
    )
    first = _claim(1, finding, rule, verdict, evidence, reason, alignment=align)

  # 2, 3. Density rising with rank and with depth.
  tests = []

  def correlation_claim(number, finding, name, source, key, over):
    test = _test(
      name,
      [r[key] for r in source],
      [r['sae']['mean_density'] for r in source],
      +1,
      resamples,
      seed,
    )
    tests.append(dict(test, claim=number))
    rule = (
      f'Spearman ρ({key}, delta-SAE mean density L0/m) over {over}, '
      f'exact permutation p (Monte Carlo above {claims_lib.EXACT_MAX_N} rows): ρ > 0 with p < '
      f'{alpha} → agrees; ρ < 0 with p < {alpha} → disagrees.'
    )
    verdict, reason = _verdict([(name, correlation_sign(test))])
    return _claim(number, finding, rule, verdict, _corr_text(test), reason)

  second = correlation_claim(
    2,
    'Delta-feature density rises with rank.',
    'density vs rank over all rows',
    rows,
    'rank',
    'all rows',
  )
  third = correlation_claim(
    3,
    'Delta-feature density rises with depth.',
    'density vs depth over residual rows',
    residual,
    'depth',
    'the residual-stream rows',
  )

  # 4. Divergence roughly constant across rank and depth.
  div_rank = _test(
    'divergence vs rank over all rows',
    [r['rank'] for r in rows],
    [r['comparison']['divergence'] for r in rows],
    0,
    resamples,
    seed,
  )
  div_depth = _test(
    'divergence vs depth over residual rows',
    [r['depth'] for r in residual],
    [r['comparison']['divergence'] for r in residual],
    0,
    resamples,
    seed,
  )
  tests += [dict(div_rank, claim=4), dict(div_depth, claim=4)]
  verdict, reason = _verdict(
    [(div_rank['pair'], stable_sign(div_rank)), (div_depth['pair'], stable_sign(div_depth))]
  )
  fourth = _claim(
    4,
    'Geometric divergence (1 − MMCS) stays roughly constant across rank and depth.',
    'Spearman ρ(rank, 1 − MMCS) over all rows and ρ(depth, 1 − MMCS) over residual rows: each '
    f'part agrees when the 95% bootstrap interval of ρ (over rows) lies inside (−{bound}, '
    f'{bound}) and disagrees when p < {alpha}; the claim agrees when both agree.',
    verdict,
    f'{_corr_text(div_rank)}; {_corr_text(div_depth)}',
    reason,
  )
  return {
    'claims': [first, second, third, fourth],
    'correlations': tests,
    'alignment': align,
    'alpha': alpha,
    'resamples': int(resamples),
    'seed': int(seed),
  }


# ---- tables (rows of formatted cells, laid out by peft_jax.report.document) ------------------


def _ci_text(entry: Optional[Mapping[str, Any]]) -> str:
  if entry is None:
    return fmt.NOT_AVAILABLE
  return fmt.fmt_score_ci(entry['value'], _finite_interval(entry['interval']))


def row_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
  """One table row per (adapter, site): alignment, density, divergence and reconstruction."""
  return (
    row['adapter'],
    str(row['rank']),
    row['site'],
    f'{row["depth"]:.2f}',
    _ci_text(row['mmcs']),
    fmt.fmt_score(row['mmcs_null']),
    fmt.fmt_score(row['reseed_mmcs']),
    _ci_text(row['one_to_one']),
    f'{row["mean_density"]:.4f}',
    _ci_text(row['l0']),
    fmt.fmt_score(row['divergence']),
    _ci_text(row['fvu']),
    _ci_text(row['ce_loss_recovered']),
  )


ROW_COLUMNS = (
  'Adapter',
  'Rank',
  'Site',
  'Depth',
  'MMCS',
  'MMCS null',
  'MMCS reseed',
  'One-to-one cos',
  'Density',
  'L0',
  'Divergence',
  'FVU',
  'CE recovered',
)


def base_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
  return (
    row['site'],
    str(row['layer']),
    _ci_text(row['fvu']),
    _ci_text(row['l0']),
    f'{row["mean_density"]:.4f}',
    _ci_text(row['reseed_mmcs']),
  )


BASE_COLUMNS = ('Site', 'Layer', 'FVU', 'L0', 'Density', 'Seed-to-seed MMCS')


# ---- figures --------------------------------------------------------------------------------


def _by_site(entry: Mapping[str, Any]) -> dict[str, list]:
  out: dict[str, list] = {}
  for row in entry['rows']:
    out.setdefault(row['site'], []).append(row)
  return {site: sorted(rows, key=lambda r: r['rank']) for site, rows in out.items()}


def _by_rank(entry: Mapping[str, Any]) -> dict[int, list]:
  out: dict[int, list] = {}
  for row in entry['rows']:
    if row['kind'] == 'residual':
      out.setdefault(row['rank'], []).append(row)
  return {rank: sorted(rows, key=lambda r: r['depth']) for rank, rows in sorted(out.items())}


def _errors(rows: Sequence[Mapping[str, Any]], key: str) -> Optional[np.ndarray]:
  lo, hi = [], []
  for r in rows:
    interval = _finite_interval(r[key]['interval'])
    if interval is None:
      return None
    lo.append(max(r[key]['value'] - interval[0], 0.0))
    hi.append(max(interval[1] - r[key]['value'], 0.0))
  return np.asarray([lo, hi])


def _colors(n: int) -> list:
  return [matplotlib.colormaps['viridis'](x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _panel_vs_rank(ax, entry, value, key=None, title='', ylabel=''):
  sites = _by_site(entry)
  for (site, rows), color in zip(sites.items(), _colors(len(sites))):
    ranks = [r['rank'] for r in rows]
    ys = [value(r) for r in rows]
    errors = _errors(rows, key) if key else None
    ax.errorbar(ranks, ys, yerr=errors, color=color, marker='o', capsize=3, label=site)
  ax.set_xscale('log', base=2)
  ranks = sorted({r['rank'] for r in entry['rows']})
  ax.set_xticks(ranks, [str(r) for r in ranks])
  ax.set_xlabel('LoRA rank')
  ax.set_title(title)
  ax.set_ylabel(ylabel)


def _panel_vs_depth(ax, entry, value, key=None, title='', ylabel=''):
  ranks = _by_rank(entry)
  for (rank, rows), color in zip(ranks.items(), _colors(len(ranks))):
    errors = _errors(rows, key) if key else None
    ax.errorbar(
      [r['depth'] for r in rows],
      [value(r) for r in rows],
      yerr=errors,
      color=color,
      marker='s',
      capsize=3,
      label=f'r = {rank}',
    )
  ax.set_xlabel('depth (layer / (L − 1)), residual sites')
  ax.set_title(title)
  ax.set_ylabel(ylabel)


def _legends(axes) -> None:
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(loc='best', fontsize=8)


def plot_alignment(entry: Mapping[str, Any], path: str | os.PathLike) -> str:
  """MMCS (with its bootstrap interval over features, random-direction null dashed, seed-to-seed
  ceiling dotted) and the one-to-one matched cosine against rank, one line per site."""
  with matplotlib.rc_context(figs._RC):
    figure = figs._new_figure(11.0, 4.2)
    left, right = figure.subplots(1, 2)
    _panel_vs_rank(
      left,
      entry,
      lambda r: r['mmcs']['value'],
      'mmcs',
      'Max decoder cosine with the base dictionary',
      'MMCS (delta features)',
    )
    sites = _by_site(entry)
    for (site, rows), color in zip(sites.items(), _colors(len(sites))):
      ranks = [r['rank'] for r in rows]
      left.plot(ranks, [r['mmcs_null'] for r in rows], color=color, linestyle='--', alpha=0.6)
      if rows[0]['reseed_mmcs'] is not None:
        left.plot(ranks, [r['reseed_mmcs'] for r in rows], color=color, linestyle=':', alpha=0.8)
    _panel_vs_rank(
      right,
      entry,
      lambda r: r['one_to_one']['value'],
      'one_to_one',
      'Optimal one-to-one matching',
      'mean matched |cosine|',
    )
    _legends([left, right])
    figure.suptitle(
      'Alignment of delta features with the base SAE (dashed: random directions; dotted: '
      'a base SAE from another seed)',
      fontsize=10,
    )
    return figs._save(figure, path)


def plot_density(entry: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Delta-SAE mean feature density (L0 / m) against rank (per site) and depth (per rank)."""
  with matplotlib.rc_context(figs._RC):
    figure = figs._new_figure(11.0, 4.2)
    left, right = figure.subplots(1, 2)
    _panel_vs_rank(left, entry, lambda r: r['mean_density'], None, 'Density vs rank', 'L0 / m')
    _panel_vs_depth(right, entry, lambda r: r['mean_density'], None, 'Density vs depth', 'L0 / m')
    _legends([left, right])
    figure.suptitle('Feature density of the delta SAEs', fontsize=10)
    return figs._save(figure, path)


def plot_divergence(entry: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Divergence ``1 − MMCS`` against rank (per site) and depth (per rank)."""
  with matplotlib.rc_context(figs._RC):
    figure = figs._new_figure(11.0, 4.2)
    left, right = figure.subplots(1, 2)
    div = lambda r: r['divergence']
    _panel_vs_rank(left, entry, div, None, 'Divergence vs rank', '1 − MMCS')
    _panel_vs_depth(right, entry, div, None, 'Divergence vs depth', '1 − MMCS')
    _legends([left, right])
    figure.suptitle('Geometric divergence of delta features from the base dictionary', fontsize=10)
    return figs._save(figure, path)


PLOTS = {'sae_alignment': plot_alignment, 'sae_density': plot_density}
PLOTS['sae_divergence'] = plot_divergence
