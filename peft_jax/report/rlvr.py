"""The report's "SFT vs RLVR" section: the arena's RLVR phase against its SFT runs, and pass@k.

:func:`results_entry` turns the stage results (``eval_<m>`` and ``eval_rlvr_<m>``: the SFT and
RLVR models scored on every task; ``rlvr_<m>``: the GRPO run; ``passk``: per-prompt correct
counts of the base, SFT and RLVR early / late models on held-out target prompts;
``peft_jax.arena.rlvr_stage``) into the report's ``results['rlvr']`` entry. Everything in it is
a function of those stage outputs:

* Per method, Target / General / Forget of SFT and of RLVR (``Forget = General_base −
  General``), and the paired bootstrap differences RLVR − SFT of Target and of Forget
  (``evals.intervals.paired_intervals`` with the SFT scores as the reference: the same
  examples and resample indices for both; ``Forget_RLVR − Forget_SFT = General_SFT −
  General_RLVR``). *RLVR forgets less* when the Forget difference's 95% interval lies below 0,
  *more* when above, *within noise* when it holds 0.
* pass@k curves from the counts with the unbiased estimator in float64
  (:func:`pass_at_k`: ``1 − C(n − c, k) / C(n, k)`` as ``Π_{i=n−c+1}^{n} (1 − k / i)``), and
  per method the paired bootstrap over prompts of pass@K late − early at the largest K
  (:func:`paired_mean_difference`): *lower late* when its interval lies below 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import matplotlib
import numpy as np

from peft_jax.evals import axes, intervals
from peft_jax.report import figures as figs
from peft_jax.report import formatting as fmt

FIGURES = ('rlvr_plane', 'rlvr_passk', 'rlvr_reward')
MODELS = ('sft', 'early', 'late')  # the pass@k curves of each method, besides the base's


# ---- the estimators --------------------------------------------------------------------------


def pass_at_k(counts: Sequence[int], num_samples: int, k: int) -> np.ndarray:
  """Per-prompt unbiased pass@k in float64: ``1 − Π_{i=n−c+1}^{n} (1 − k / i)``, which is
  ``1 − C(n − c, k) / C(n, k)`` (the product holds the factor ``1 − k / k = 0`` when
  ``n − c < k``, so such prompts give 1)."""
  n, k = int(num_samples), int(k)
  if not 1 <= k <= n:
    raise ValueError(f'pass@k needs 1 <= k <= num_samples, got k={k}, num_samples={n}')
  c = np.asarray(counts, dtype=np.int64)
  if c.ndim != 1 or np.any(c < 0) or np.any(c > n):
    raise ValueError(f'counts must be a list of integers in [0, {n}], got {counts!r:.80}')
  i = np.arange(1, n + 1, dtype=np.float64)
  factors = np.where(i[None, :] > (n - c)[:, None], 1.0 - k / i[None, :], 1.0)
  return 1.0 - np.prod(factors, axis=1)


def pass_at_k_curve(counts: Sequence[int], num_samples: int, ks: Sequence[int]) -> list[float]:
  """Mean over prompts of :func:`pass_at_k` for every k."""
  return [float(np.mean(pass_at_k(counts, num_samples, k))) for k in ks]


def paired_mean_difference(
  before: Sequence[float],
  after: Sequence[float],
  *,
  name: str,
  resamples: int = intervals.DEFAULT_RESAMPLES,
  seed: int = intervals.DEFAULT_SEED,
  confidence: float = intervals.CONFIDENCE,
) -> dict:
  """``mean(after) − mean(before)`` over paired units (prompts) with its percentile bootstrap
  interval: each replicate draws the units with replacement (``evals.intervals`` indices from
  ``task_rng(seed, name)``) and takes the difference of the two means on the same draw.

  Returns:
    ``{'delta', 'interval': [lo, hi] | None, 'within_noise': bool | None}``.
  """
  a = np.asarray(before, dtype=np.float64)
  b = np.asarray(after, dtype=np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f'{name}: paired values need equal non-empty lists, got {a.shape}, {b.shape}')
  units = intervals.parse_units(intervals.unit_stats(b - a), name)
  indices = intervals.resample_indices(units, int(resamples), intervals.task_rng(seed, name))
  interval = intervals.percentile_interval(intervals.estimate(units, indices), confidence)
  interval = None if interval is None else [v + 0.0 for v in interval]
  return {
    'delta': float(b.mean() - a.mean()) + 0.0,
    'interval': interval,
    'within_noise': intervals.within_noise(interval),
  }


def direction(difference: Optional[Mapping[str, Any]], below: str, above: str) -> str:
  """``below`` when the interval lies below 0, ``above`` when above, else ``'within noise'``
  (``'no interval'`` without one)."""
  interval = None if difference is None else difference.get('interval')
  if interval is None:
    return 'no interval'
  if interval[1] < 0.0:
    return below
  if interval[0] > 0.0:
    return above
  return 'within noise'


# ---- the results entry -----------------------------------------------------------------------


def _scores(base: Mapping[str, Any], ev: Mapping[str, Any], target: str) -> dict:
  found = ev.get('intervals') or {}
  return {
    'target': float(ev['tasks'][target]),
    'general': float(ev[axes.GENERAL_KIND]),
    'forget': float(axes.forget(base[axes.GENERAL_KIND], ev[axes.GENERAL_KIND])),
    'intervals': {
      'target': (found.get('tasks') or {}).get(target),
      'general': found.get(axes.GENERAL_KIND),
    },
  }


def _curve(entry: Mapping[str, Any], ks: Sequence[int]) -> dict:
  n = int(entry['num_samples'])
  out = {'counts': [int(c) for c in entry['counts']], 'num_samples': n}
  out['curve'] = pass_at_k_curve(out['counts'], n, ks)
  if 'step' in entry:
    out['step'] = int(entry['step'])
  return out


def results_entry(
  *,
  base: Mapping[str, Any],
  sft: Mapping[str, Mapping[str, Any]],
  rlvr: Mapping[str, Mapping[str, Any]],
  runs: Mapping[str, Mapping[str, Any]],
  passk: Mapping[str, Any],
  target: str,
  general_tasks: Sequence[str],
  resamples: int = intervals.DEFAULT_RESAMPLES,
  seed: int = intervals.DEFAULT_SEED,
) -> dict:
  """The report's ``rlvr`` entry (module docstring; schema in ``peft_jax.report``).

  Args:
    base: the ``base_eval`` result; sft / rlvr: ``{method: eval_<m> / eval_rlvr_<m> result}``;
    runs: ``{method: rlvr_<m> result}``; passk: the ``passk`` result.
    target, general_tasks: the target task and the tasks averaged into General.
    resamples, seed: the bootstrap's (the base evaluation's settings).
  """
  ks = [int(k) for k in passk['ks']]
  methods = {}
  for m, run in runs.items():
    paired = None
    if sft[m].get('per_example') and rlvr[m].get('per_example'):
      paired = intervals.paired_intervals(
        sft[m]['per_example'],
        rlvr[m]['per_example'],
        target_tasks=[target],
        general_tasks=list(general_tasks),
        resamples=resamples,
        seed=seed,
      )
    difference = (
      None if paired is None else {'target': paired['target_gain'], 'forget': paired['forget']}
    )
    methods[m] = {
      'sft': _scores(base, sft[m], target),
      'rlvr': _scores(base, rlvr[m], target),
      'difference': difference,
      'forgets': direction(None if difference is None else difference['forget'], 'less', 'more'),
      'steps': int(run['steps']),
      # Steps whose update grpo.skip_no_signal left out (None: a stage result without the list).
      'skipped_steps': None if 'skipped' not in run else int(round(sum(run['skipped']))),
      'logged_steps': len(run.get('step', ())),
      'early_step': int(run['early_step']),
      'peak_lr': float(run['peak_lr']),
      'train_time_s': float(run['train_time_s']),
      'step': [int(s) for s in run['step']],
      'reward_mean': [float(r) for r in run['reward_mean']],
      'kl': [float(v) for v in run['kl']],
    }
  curves = {}
  for m, entry in passk['methods'].items():
    curves[m] = {name: _curve(entry[name], ks) for name in MODELS}
    n = curves[m]['late']['num_samples']
    diff = paired_mean_difference(
      pass_at_k(curves[m]['early']['counts'], n, ks[-1]),
      pass_at_k(curves[m]['late']['counts'], n, ks[-1]),
      name=f'passk:{m}',
      resamples=resamples,
      seed=seed,
    )
    curves[m]['late_minus_early'] = dict(diff, k=ks[-1])
    curves[m]['late_vs_early'] = direction(diff, 'lower', 'higher')
  return {
    'target_task': str(target),
    'resamples': int(resamples),
    'methods': methods,
    'passk': {
      'ks': ks,
      'num_samples': int(passk['num_samples']),
      'num_prompts': int(passk['num_prompts']),
      'base': _curve(passk['base'], ks),
      'methods': curves,
    },
  }


# ---- table cells -----------------------------------------------------------------------------


COLUMNS = (
  'Method',
  'GRPO steps',
  'SFT Target',
  'RLVR Target',
  'Δ Target (pts)',
  'SFT General',
  'RLVR General',
  'SFT Forget (pts)',
  'RLVR Forget (pts)',
  'Δ Forget (pts)',
  'RLVR forgets',
)


def steps_cell(row: Mapping[str, Any]) -> str:
  """``"8"``, or ``"8 (3 skipped)"`` when steps were left out for want of a reward signal."""
  text = f'{int(row["steps"]):,}'
  skipped = row.get('skipped_steps')
  return text if not skipped else f'{text} ({int(skipped):,} skipped)'


def row_cells(name: str, row: Mapping[str, Any]) -> tuple[str, ...]:
  """One method's cells of the SFT-vs-RLVR table (differences RLVR − SFT, 95% paired)."""
  s, r, d = row['sft'], row['rlvr'], row.get('difference') or {}

  def diff(key):
    found = d.get(key)
    return (
      fmt.NOT_AVAILABLE
      if found is None
      else fmt.fmt_points_ci(found['delta'], found['interval'], signed=True)
    )

  return (
    name,
    steps_cell(row),
    fmt.fmt_score_ci(s['target'], s['intervals']['target']),
    fmt.fmt_score_ci(r['target'], r['intervals']['target']),
    diff('target'),
    fmt.fmt_score_ci(s['general'], s['intervals']['general']),
    fmt.fmt_score_ci(r['general'], r['intervals']['general']),
    fmt.fmt_points(s['forget']),
    fmt.fmt_points(r['forget']),
    diff('forget'),
    str(row['forgets']),
  )


def passk_columns(ks: Sequence[int]) -> tuple[str, ...]:
  return ('Method', 'Model', 'GRPO step', *(f'pass@{int(k)}' for k in ks))


def passk_rows(passk: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
  """Rows of the pass@k table: the base, then per method SFT, RLVR early and RLVR late."""
  rows = [('—', 'base', '—', *(fmt.fmt_score(v) for v in passk['base']['curve']))]
  for m, curves in passk['methods'].items():
    for name in MODELS:
      model = 'SFT' if name == 'sft' else f'RLVR {name}'
      step = str(curves[name]['step']) if 'step' in curves[name] else '—'
      rows.append((m, model, step, *(fmt.fmt_score(v) for v in curves[name]['curve'])))
  return tuple(rows)


# ---- figures ---------------------------------------------------------------------------------


def plot_plane(entry: Mapping[str, Any], base: Mapping[str, Any], path: str | os.PathLike) -> str:
  """The stability–plasticity plane (General vs Target): the base (star), each method's SFT
  (hollow marker) and RLVR model (filled), an arrow from SFT to RLVR."""
  methods = entry['methods']
  styles = figs.method_styles(list(methods))
  with matplotlib.rc_context(figs._RC):  # pylint: disable=protected-access
    figure = figs._new_figure(8.0, 6.0)  # pylint: disable=protected-access
    ax = figure.add_subplot()
    ax.scatter([base['general']], [base['target']], marker='*', s=220, color='black', zorder=4)
    ax.annotate(
      'base', (base['general'], base['target']), xytext=(6, 6), textcoords='offset points'
    )
    for m, row in methods.items():
      color, marker = styles[m]
      s, r = row['sft'], row['rlvr']
      ax.scatter(
        [s['general']], [s['target']], marker=marker, s=70, facecolors='white', edgecolors=color,
        linewidths=1.8, zorder=3, label=f'{m} SFT',
      )  # fmt: skip
      ax.scatter(
        [r['general']], [r['target']], marker=marker, s=70, color=color, zorder=3,
        label=f'{m} RLVR',
      )  # fmt: skip
      ax.annotate(
        '',
        xy=(r['general'], r['target']),
        xytext=(s['general'], s['target']),
        arrowprops=dict(arrowstyle='->', color=color, lw=1.4),
      )
    ax.axvline(base['general'], color='grey', linestyle='--', linewidth=0.8)
    ax.axhline(base['target'], color='grey', linestyle='--', linewidth=0.8)
    ax.set_xlabel('General (right: less forgetting)')
    ax.set_ylabel(f'Target ({entry["target_task"]})')
    ax.set_title('SFT (hollow) → RLVR (filled), per method')
    figure.legend(loc='outside right upper', title='model', title_fontsize=9)
    return figs._save(figure, path)  # pylint: disable=protected-access


def plot_passk(entry: Mapping[str, Any], path: str | os.PathLike) -> str:
  """pass@k against k (log2 axis), one panel per method: base, SFT, RLVR early and late."""
  passk = entry['passk']
  ks = passk['ks']
  names = list(passk['methods'])
  styles = {'sft': ('#1f77b4', '-'), 'early': ('#ff7f0e', '--'), 'late': ('#d62728', '-')}
  with matplotlib.rc_context(figs._RC):  # pylint: disable=protected-access
    figure = figs._new_figure(4.2 * len(names) + 1.5, 4.2)  # pylint: disable=protected-access
    panels = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, m in zip(panels, names):
      curves = passk['methods'][m]
      ax.plot(ks, passk['base']['curve'], color='black', marker='*', label='base')
      for name, (color, style) in styles.items():
        label = 'SFT' if name == 'sft' else f'RLVR {name} (step {curves[name]["step"]})'
        ax.plot(ks, curves[name]['curve'], color=color, linestyle=style, marker='o', label=label)
      ax.set_xscale('log', base=2)
      ax.set_xticks(ks, [str(k) for k in ks])
      ax.set_ylim(-0.02, 1.02)
      ax.set_xlabel('k')
      ax.set_ylabel('pass@k')
      ax.set_title(m)
      ax.legend(loc='lower right')
    return figs._save(figure, path)  # pylint: disable=protected-access


def plot_reward(entry: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Mean training reward per RLVR step, one line per method."""
  methods = entry['methods']
  styles = figs.method_styles(list(methods))
  with matplotlib.rc_context(figs._RC):  # pylint: disable=protected-access
    figure = figs._new_figure(8.0, 4.2)  # pylint: disable=protected-access
    ax = figure.add_subplot()
    for m, row in methods.items():
      color, marker = styles[m]
      ax.plot(row['step'], row['reward_mean'], color=color, marker=marker, label=m)
      ax.axvline(row['early_step'], color=color, linestyle=':', linewidth=0.8)
    ax.set_xlabel('GRPO step (dotted: the early pass@k checkpoint)')
    ax.set_ylabel("mean reward of the step's completions")
    ax.set_title('RLVR training reward')
    figure.legend(loc='outside right upper', title='method', title_fontsize=9)
    return figs._save(figure, path)  # pylint: disable=protected-access
