"""The report as a neutral document: sections of paragraphs, tables, images, notes and code.

`build_document` turns a validated results dict (and the file names of the figures drawn from it)
into a `Document`; `peft_jax.report.html` and `peft_jax.report.markdown` render the same
`Document`, so the HTML page and its Markdown twin always hold the same tables, numbers and
images. Every number goes through `peft_jax.report.formatting`.

A section whose data are absent holds a `Note` of kind ``"not-run"`` that says which key was
missing; a section with data for only some methods holds a ``"partial"`` note listing the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from peft_jax.report import formatting as fmt
from peft_jax.report import rlvr as rlvr_lib
from peft_jax.report import sae as sae_lib

DASH = '—'


class Paragraph(NamedTuple):
  """A paragraph of plain text."""

  text: str


class Note(NamedTuple):
  """A highlighted remark. kind: ``"not-run"`` (section skipped), ``"partial"`` or ``"info"``."""

  kind: str
  text: str


class Table(NamedTuple):
  """A table of preformatted cells.

  align holds one of ``"l"``/``"r"`` per column; flagged marks rows to highlight (one bool per
  row, or empty).
  """

  table_id: str
  caption: str
  columns: tuple[str, ...]
  rows: tuple[tuple[str, ...], ...]
  align: tuple[str, ...]
  flagged: tuple[bool, ...] = ()


class Image(NamedTuple):
  """A figure file beside the report (``src`` is relative to the report directory)."""

  src: str
  alt: str
  caption: str


class Code(NamedTuple):
  """A preformatted block (language: a Markdown fence hint such as ``"json"``)."""

  language: str
  text: str


class Bullets(NamedTuple):
  """A bulleted list of plain-text items."""

  items: tuple[str, ...]


Block = Paragraph | Note | Table | Image | Code | Bullets


class Section(NamedTuple):
  """A titled section; anchor is its HTML id."""

  anchor: str
  title: str
  blocks: tuple[Block, ...]


class Document(NamedTuple):
  """The whole report."""

  title: str
  subtitle: str
  sections: tuple[Section, ...]


# (anchor, heading) in report order; the headings are part of the report's contract. Every
# report has these sections (a "Not run" note stands in for absent data).
SECTIONS = (
  ('summary', 'Summary'),
  ('stability-plasticity', 'Stability–plasticity'),
  ('methods', 'Methods table'),
  ('paths', 'Paths'),
  ('weight-spectra', 'Weight spectra'),
  ('activation-geometry', 'Activation geometry'),
  ('csd', 'CSD'),
  ('disel-gates', 'DISeL gates'),
  ('capability-drift', 'Capability drift'),
  ('claims', 'Claims'),
  ('delta-activation-saes', 'Delta-activation SAEs'),
  ('sft-vs-rlvr', 'SFT vs RLVR'),
  ('training', 'Training'),
  ('configuration', 'Configuration'),
  ('versions-timing', 'Versions & timing'),
)

# (anchor, heading, the section it follows, the per-method key it renders): sections that appear
# only when some method has that key (stages a study may not run).
OPTIONAL_SECTIONS = (
  ('lr-sweep', 'Learning-rate sweep', 'methods', 'sweep'),
  ('trajectory', 'Trajectory', 'paths', 'trajectory'),
)

# Figure name -> file name; the names are the keys `write_report` returns.
FIGURE_FILES = {
  'stability_plasticity': 'stability_plasticity.png',
  'paths': 'paths.png',
  'spectra': 'spectra.png',
  'activation_geometry': 'activation_geometry.png',
  'csd': 'csd.png',
  'disel_gates': 'disel_gates.png',
  'capability_drift': 'capability_drift.png',
  'drift_study': 'drift_study.png',
  'training_loss': 'training_loss.png',
  'lr_sweep': 'lr_sweep.png',
  'trajectory': 'trajectory.png',
  'sae_alignment': 'sae_alignment.png',
  'sae_density': 'sae_density.png',
  'sae_divergence': 'sae_divergence.png',
  'rlvr_plane': 'rlvr_plane.png',
  'rlvr_passk': 'rlvr_passk.png',
  'rlvr_reward': 'rlvr_reward.png',
}


def _not_run(what: str) -> Note:
  return Note('not-run', f'Not run: {what}.')


def _partial(methods: Sequence[str], key: str, having: Sequence[str]) -> list[Note]:
  missing = [m for m in methods if m not in having]
  if not missing or not having:
    return []
  return [Note('partial', f'No {key} data for: {", ".join(missing)}.')]


def _image(figures: Mapping[str, str], name: str, alt: str, caption: str) -> list[Image]:
  return [Image(figures[name], alt, caption)] if name in figures else []


def _mean(values: Sequence[float]) -> float:
  array = np.asarray(values, dtype=np.float64)
  array = array[np.isfinite(array)]
  return float(array.mean()) if array.size else math.nan


def _task_order(results: Mapping[str, Any]) -> list[str]:
  order = list(dict.fromkeys([*results['target_tasks'], *results['general_tasks']]))
  for scores in [results['base'], *results['methods'].values()]:
    order.extend(t for t in scores['tasks'] if t not in order)
  return order


def _pareto_front(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
  front = []
  for name, m in methods.items():
    t, g = float(m['target']), float(m['general'])
    dominated = any(
      float(o['target']) >= t
      and float(o['general']) >= g
      and (float(o['target']) > t or float(o['general']) > g)
      for other, o in methods.items()
      if other != name
    )
    if not dominated and math.isfinite(t) and math.isfinite(g):
      front.append(name)
  return front


def _best(methods: Mapping[str, Mapping[str, Any]], key: str, *, lowest: bool = False) -> str:
  finite = {n: float(m[key]) for n, m in methods.items() if math.isfinite(float(m[key]))}
  if not finite:
    return DASH
  name = (min if lowest else max)(finite, key=finite.get)
  return name


def _interval(entry: Mapping[str, Any], key: str) -> Any:
  """An entry's interval of ``'target'`` / ``'general'``, or ``None``."""
  found = entry.get('intervals')
  return None if not found else found.get(key)


def _score_ci(entry: Mapping[str, Any], key: str) -> str:
  """An entry's ``'target'`` / ``'general'`` score with its interval."""
  return fmt.fmt_score_ci(entry[key], _interval(entry, key))


def _task_interval(entry: Mapping[str, Any], task: str) -> Any:
  found = entry.get('intervals')
  return None if not found else (found.get('tasks') or {}).get(task)


def _difference(entry: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
  """A method's paired ``'target_gain'`` / ``'forget'`` entry, or ``None``."""
  paired = entry.get('paired')
  return None if not paired else paired.get(key)


def _difference_interval(entry: Mapping[str, Any], key: str) -> Any:
  difference = _difference(entry, key)
  return None if difference is None else difference.get('interval')


def _within_noise(methods: Mapping[str, Mapping[str, Any]], key: str) -> list[str] | None:
  """Methods whose ``key`` difference is within noise; ``None`` when none has an interval."""
  flags = {n: (_difference(m, key) or {}).get('within_noise') for n, m in methods.items()}
  if all(flag is None for flag in flags.values()):
    return None
  return [n for n, flag in flags.items() if flag]


def _noise_text(names: list[str] | None) -> str:
  if names is None:
    return 'no interval'
  return ', '.join(names) if names else 'none'


def _widths(intervals: Sequence[Any]) -> float:
  """Median width of the given intervals (``None`` entries skipped), NaN if there are none."""
  widths = [float(hi) - float(lo) for lo, hi in (i for i in intervals if i is not None)]
  return float(np.median(widths)) if widths else math.nan


def _score_intervals(results: Mapping[str, Any]) -> list[Any]:
  entries = [results['base'], *results['methods'].values()]
  return [_task_interval(e, t) for e in entries for t in e['tasks']]


def _counts(results: Mapping[str, Any]) -> dict[str, str]:
  """Examples per task (``n``) as shown: one number, or every distinct one when models differ."""
  seen: dict[str, list[int]] = {}
  for entry in [results['base'], *results['methods'].values()]:
    for task, count in (entry.get('n') or {}).items():
      if int(count) not in seen.setdefault(task, []):
        seen[task].append(int(count))
  return {task: ' / '.join(f'{c:,}' for c in counts) for task, counts in seen.items()}


def _missing_intervals(results: Mapping[str, Any]) -> list[str]:
  missing = [] if results['base'].get('intervals') else ['base']
  for name, m in results['methods'].items():
    if not m.get('intervals') or not m.get('paired'):
      missing.append(name)
  return missing


def _bootstrap_text(results: Mapping[str, Any]) -> str:
  settings = results.get('bootstrap') or {}
  resamples = settings.get('resamples', 1000)
  seed = settings.get('seed', 0)
  confidence = float(settings.get('confidence', 0.95))
  return (
    f'{100 * confidence:.0f}% percentile bootstrap over examples (B = {resamples:,} '
    f'resamples, seed {seed}); differences from the base paired'
  )


def _summary(results: Mapping[str, Any]) -> Section:
  base, methods = results['base'], results['methods']
  best_target = _best(methods, 'target')
  least_forget = _best(methods, 'forget', lowest=True)
  fewest = min(methods, key=lambda n: int(methods[n]['trainable_params']))
  drift = results.get('drift')
  rows = [
    ('Target task', results['target_task']),
    ('Target tasks', ', '.join(results['target_tasks']) or DASH),
    ('General tasks', ', '.join(results['general_tasks']) or DASH),
    ('Methods', f'{len(methods)}: {", ".join(methods)}'),
    (
      'Base Target / General',
      f'{fmt.fmt_score_ci(base["target"], _interval(base, "target"))} / '
      f'{fmt.fmt_score_ci(base["general"], _interval(base, "general"))}',
    ),
    (
      'Best Target',
      DASH
      if best_target == DASH
      else f'{best_target} ({_score_ci(methods[best_target], "target")})',
    ),
    (
      'Least forgetting',
      DASH
      if least_forget == DASH
      else f'{least_forget} ('
      + fmt.fmt_points_ci(
        methods[least_forget]['forget'], _difference_interval(methods[least_forget], 'forget')
      )
      + ' points)',
    ),
    (
      'Fewest trainable params',
      f'{fewest} ({fmt.fmt_params(methods[fewest]["trainable_params"])})',
    ),
    ('Pareto front (Target, General)', ', '.join(_pareto_front(methods)) or DASH),
    (
      'Flagged adapters (drift)',
      'not run' if drift is None else (', '.join(drift['flagged']) or 'none'),
    ),
  ]
  gain_noise, forget_noise = _within_noise(methods, 'target_gain'), _within_noise(methods, 'forget')
  counts = _counts(results)
  widths = (
    _widths(_score_intervals(results)),
    _widths([_difference_interval(m, 'target_gain') for m in methods.values()]),
    _widths([_difference_interval(m, 'forget') for m in methods.values()]),
  )
  rows += [
    (
      'Examples per task (n)',
      ', '.join(f'{t} {c}' for t, c in counts.items()) if counts else 'not recorded',
    ),
    (
      'Intervals',
      _bootstrap_text(results)
      if not _missing_intervals(results)
      else (_bootstrap_text(results) + f'; none for {", ".join(_missing_intervals(results))}'),
    ),
    ('Target gain within noise', _noise_text(gain_noise)),
    ('Forget within noise', _noise_text(forget_noise)),
    (
      'Median interval width (points)',
      f'task scores {fmt.fmt_points(widths[0])}, target gain {fmt.fmt_points(widths[1])}, '
      f'forget {fmt.fmt_points(widths[2])}',
    ),
  ]
  blocks: list[Block] = [
    Paragraph(
      f'Arena run of {len(methods)} fine-tuning methods on the target domain '
      f"'{results['target_task']}'. Scores are on a 0–1 scale (3 decimals). Forget is "
      '(General_base − General) × 100 in percentage points (1 decimal); positive means '
      'general capability was lost. Brackets hold 95% bootstrap intervals; a gain or a '
      'Forget is within noise when its paired interval contains 0.'
    ),
    Paragraph(_noise_sentence(gain_noise, forget_noise, widths)),
    Table('summary-table', 'Key facts', ('Item', 'Value'), tuple(rows), ('l', 'l')),
  ]
  blocks += [Paragraph(text) for text in _not_learned(methods)]
  missing = _missing_intervals(results)
  if missing:
    blocks.append(_no_interval_note(missing))
  return Section('summary', 'Summary', tuple(blocks))


def _noise_sentence(
  gain: list[str] | None, forget: list[str] | None, widths: tuple[float, float, float]
) -> str:
  if gain is None and forget is None:
    return 'No interval could be computed, so no difference can be told from noise.'
  return (
    'Within noise (the 95% paired interval of the difference from the base contains 0): '
    f'Target gain of {_noise_text(gain)}; Forget of {_noise_text(forget)}. Median 95% '
    f'interval width: {fmt.fmt_points(widths[0])} points for a task score, '
    f'{fmt.fmt_points(widths[1])} for a Target gain, {fmt.fmt_points(widths[2])} for a Forget.'
  )


def _not_learned(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """One sentence per method whose Target gain is not above noise, with the evidence the run
  has for why: did its training loss fall, what its learning-rate sweep saw."""
  out = []
  for name, m in methods.items():
    diff = _difference(m, 'target_gain') or {}
    interval = diff.get('interval')
    if interval is not None and interval[0] > 0:
      continue  # learned: the whole interval of the gain is above 0
    if interval is None and not (m.get('target') is not None and diff.get('delta', 1) <= 0):
      continue
    reasons = []
    losses = [x for x in m.get('train_loss') or [] if x == x]
    if len(losses) >= 2:
      k = max(1, len(losses) // 10)
      first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
      fell = (first - last) / max(abs(first), 1e-12)
      reasons.append(
        f'its training loss went {first:.3f} -> {last:.3f} ({-fell:+.1%})'
        + (', so it barely fitted the SFT data in this budget' if fell < 0.05 else '')
      )
    sweep = m.get('sweep')
    if sweep:
      lrs, target = list(sweep['lr']), list(sweep['target'])
      i = lrs.index(sweep['chosen_lr']) if sweep['chosen_lr'] in lrs else None
      reasons.append(
        'validation Target over the swept rates '
        + ', '.join(f'{lr:.2g}: {t:.3f}' for lr, t in zip(lrs, target))
      )
      if max(target) <= 0:
        reasons.append('no swept rate raised the validation Target above 0')
      elif i in (0, len(lrs) - 1):
        reasons.append('the kept rate is at the edge of the grid (a wider grid may do better)')
    gain = diff.get('delta')
    gain_text = f'{fmt.fmt_signed_points(gain)} points' if gain is not None else 'unknown'
    out.append(
      f'{name} did not raise the Target beyond noise (gain {gain_text}'
      + (
        f', 95% interval {fmt.fmt_points_ci(gain, interval, signed=True).split(" ", 1)[1]}'
        if interval
        else ''
      )
      + '): '
      + ('; '.join(reasons) if reasons else 'no training record to say why')
      + '.'
    )
  return out


def _no_interval_note(missing: Sequence[str]) -> Note:
  return Note(
    'info',
    f'No bootstrap interval ({fmt.NO_INTERVAL}) for: {", ".join(missing)}. Their stage '
    'results hold no per-example statistics (written before intervals existed); rerun '
    'their eval stages to get them.',
  )


def _stability(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  return [
    Paragraph(
      'Each method is a point at (General, Target); the star is the base model. Moving '
      'right keeps general capability (stability), moving up gains on the target '
      '(plasticity). The top axis reads General as Forget points. Error bars are the 95% '
      'bootstrap intervals of General and Target, where the results have them.'
    ),
    *_image(
      figures,
      'stability_plasticity',
      'Stability–plasticity plane',
      'General vs Target per method; arrows start at the base model.',
    ),
  ]


def _noise_cell(m: Mapping[str, Any]) -> str:
  flags = [(_difference(m, k) or {}).get('within_noise') for k in ('target_gain', 'forget')]
  if all(flag is None for flag in flags):
    return DASH
  names = [n for n, flag in zip(('gain', 'forget'), flags) if flag]
  return ', '.join(names) if names else 'no'


def _methods_tables(results: Mapping[str, Any]) -> list[Block]:
  base, methods = results['base'], results['methods']
  columns = (
    'Method',
    'Target',
    'Target gain (pts)',
    'General',
    'Forget (pts)',
    'Within noise',
    'Trainable params',
    'Total params',
    'Trainable %',
    'Train time',
    'Peak memory',
  )
  rows = [
    (
      'base',
      fmt.fmt_score_ci(base['target'], _interval(base, 'target')),
      DASH,
      fmt.fmt_score_ci(base['general'], _interval(base, 'general')),
      fmt.fmt_points(0.0),
      DASH,
      DASH,
      DASH,
      DASH,
      DASH,
      DASH,
    )
  ]
  for name, m in methods.items():
    rows.append(
      (
        name,
        fmt.fmt_score_ci(m['target'], _interval(m, 'target')),
        fmt.fmt_points_ci(
          float(m['target']) - float(base['target']),
          _difference_interval(m, 'target_gain'),
          signed=True,
        ),
        fmt.fmt_score_ci(m['general'], _interval(m, 'general')),
        fmt.fmt_points_ci(m['forget'], _difference_interval(m, 'forget')),
        _noise_cell(m),
        fmt.fmt_params(m['trainable_params']),
        fmt.fmt_params(m['total_params']),
        fmt.fmt_percent(m['trainable_params'], m['total_params']),
        fmt.fmt_seconds(m['train_time_s']),
        fmt.fmt_megabytes(m['peak_memory_mb']),
      )
    )
  main = Table(
    'methods-table',
    'Scores and cost per method (base model first), with 95% intervals',
    columns,
    tuple(rows),
    ('l',) + ('r',) * 4 + ('l',) + ('r',) * (len(columns) - 6),
  )

  tasks = _task_order(results)
  target_tasks = set(results['target_tasks'])
  general_tasks = set(results['general_tasks'])
  counts = _counts(results)
  task_rows, delta_rows = [], []
  for task in tasks:
    kind = 'target' if task in target_tasks else 'general' if task in general_tasks else 'other'
    cells = [task, kind, counts.get(task, DASH)]
    for scores in [base, *methods.values()]:
      cells.append(
        fmt.fmt_score_ci(scores['tasks'][task], _task_interval(scores, task))
        if task in scores['tasks']
        else DASH
      )
    task_rows.append(tuple(cells))
    deltas = [task, kind]
    for m in methods.values():
      difference = ((m.get('paired') or {}).get('tasks') or {}).get(task)
      if difference is None:
        deltas.append(DASH)
        continue
      cell = fmt.fmt_points_ci(difference['delta'], difference['interval'], signed=True)
      deltas.append(cell + (' ≈0' if difference['within_noise'] else ''))
    delta_rows.append(tuple(deltas))
  blocks: list[Block] = [
    Paragraph(
      'Target and General are averages over the target and general task scores; '
      'Target gain is (Target − Target_base) × 100 points. Trainable % is trainable '
      'over total parameters; time and memory are for the training stage.'
    ),
    Paragraph(
      f'Brackets: {_bootstrap_text(results)}. A task score is resampled over its examples '
      '(IFEval over prompts, as a ratio of instructions followed; BBH within each subtask); '
      'Target and General resample every task jointly; Target gain, Forget and the per-task '
      'differences resample the same examples for the base and the method. "Within noise" '
      'lists the differences whose interval contains 0.'
    ),
    main,
  ]
  missing = _missing_intervals(results)
  if missing:
    blocks.append(_no_interval_note(missing))
  if task_rows:
    blocks.append(
      Table(
        'tasks-table',
        'Score per task, with 95% intervals; n = examples',
        ('Task', 'Kind', 'n', 'base', *methods),
        tuple(task_rows),
        ('l', 'l', 'r') + ('r',) * (1 + len(methods)),
      )
    )
  if task_rows and any(m.get('paired') for m in methods.values()):
    blocks.append(
      Table(
        'task-deltas-table',
        'Difference from base per task (points), with 95% paired intervals; ≈0 = within noise',
        ('Task', 'Kind', *methods),
        tuple(delta_rows),
        ('l', 'l') + ('r',) * len(methods),
      )
    )
  return blocks


def _argbest(alpha: Sequence[float], values: Sequence[float], *, lr: bool = False) -> str:
  array = np.asarray(values, dtype=np.float64)
  if not np.isfinite(array).any():
    return fmt.NOT_AVAILABLE
  index = int(np.nanargmax(array))
  where = f'lr={fmt.fmt_lr(alpha[index])}' if lr else f'α={float(alpha[index]):.2f}'
  return f'{fmt.fmt_score(array[index])} ({where})'


def _paths(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [
    n
    for n, m in methods.items()
    if m.get('interpolation') is not None or m.get('rewind') is not None
  ]
  if not having:
    return [
      _not_run(
        'no method has interpolation or rewind data '
        "(results['methods'][name]['interpolation'] / ['rewind'] absent)"
      )
    ]
  rows = []
  for name in having:
    cells = [name]
    rewind = methods[name].get('rewind')
    cells.append(DASH if rewind is None else rewind['kind'])
    for key in ('interpolation', 'rewind'):
      curve = methods[name].get(key)
      if curve is None:
        cells += [DASH, DASH]
        continue
      alpha = [float(a) for a in curve['alpha']]
      cells += [_argbest(alpha, curve['target']), _argbest(alpha, curve['general'])]
    rows.append(tuple(cells))
  return [
    Paragraph(
      'Scores along the path from the base (α = 0) to the fine-tuned model (α = 1). '
      'Interpolation scales the merged update ΔW (solid); rewinding follows the '
      "method's own path (dashed): additive for additive methods, the scaled Cayley "
      'generator for OFT.'
    ),
    *_image(
      figures, 'paths', 'Interpolation and rewinding curves', 'Target and General vs α per method.'
    ),
    *_partial(list(methods), 'path', having),
    Table(
      'paths-table',
      'Best score reached on each path, with the α where it is reached',
      (
        'Method',
        'Rewind path',
        'Interp. max Target',
        'Interp. max General',
        'Rewind max Target',
        'Rewind max General',
      ),
      tuple(rows),
      ('l', 'l', 'r', 'r', 'r', 'r'),
    ),
  ]


def _spectra(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [n for n, m in methods.items() if m.get('spectral') is not None]
  if not having:
    return [
      _not_run("no method has weight-spectrum data (results['methods'][name]['spectral'] absent)")
    ]
  keys = list(dict.fromkeys(k for n in having for k in methods[n]['spectral']['summary']))
  rows = []
  for name in having:
    spectral = methods[name]['spectral']
    rows.append(
      (
        name,
        spectral['module'],
        *(
          fmt.fmt_metric(spectral['summary'][k]) if k in spectral['summary'] else DASH for k in keys
        ),
      )
    )
  return [
    Paragraph(
      'Dual-view spectral analysis of ΔW = W_ft − W0 in the SVD basis of the pretrained '
      'weight W0 = U diag(σ) Vᵀ: the retention profile ΔP_diag(i) = |u_iᵀ ΔW v_i| and '
      'the update-energy profile E_Δ(i) = ‖ΔW v_i‖ (plotted as a share of Σ E_Δ).'
    ),
    *_image(
      figures,
      'spectra',
      'Retention and update-energy profiles',
      'Per singular index of W0, one line per method.',
    ),
    *_partial(list(methods), 'spectral', having),
    Table(
      'spectra-table',
      'Spectral summary per method',
      ('Method', 'Module', *keys),
      tuple(rows),
      ('l', 'l') + ('r',) * len(keys),
    ),
  ]


def _activation(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [n for n, m in methods.items() if m.get('activation') is not None]
  if not having:
    return [
      _not_run(
        "no method has activation-geometry data (results['methods'][name]['activation'] absent)"
      )
    ]
  rows = []
  for name in having:
    activation = methods[name]['activation']
    rows.append(
      (
        name,
        str(len(activation['layers'])),
        fmt.fmt_metric(_mean(activation['cka'])),
        fmt.fmt_metric(_mean(activation['procrustes'])),
        fmt.fmt_metric(_mean(activation['gram'])),
        fmt.fmt_points(methods[name]['forget']),
      )
    )
  return [
    Paragraph(
      'Base (X0) vs fine-tuned (X1) activations on the same prompts, per layer: linear '
      'CKA (similarity, 1 = unchanged up to rotation and scale), orthogonal Procrustes '
      'residual and Gram (cosine) distortion (distances, 0 = unchanged).'
    ),
    *_image(
      figures, 'activation_geometry', 'CKA, Procrustes and Gram per layer', 'One line per method.'
    ),
    *_partial(list(methods), 'activation', having),
    Table(
      'activation-table',
      'Mean over layers, beside forgetting',
      ('Method', 'Layers', 'CKA', 'Procrustes', 'Gram', 'Forget (pts)'),
      tuple(rows),
      ('l',) + ('r',) * 5,
    ),
  ]


def _csd(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [n for n, m in methods.items() if m.get('csd') is not None]
  if not having:
    return [_not_run("no method has CSD data (results['methods'][name]['csd'] absent)")]
  rows = []
  for name in having:
    csd = methods[name]['csd']
    rows.append(
      (
        name,
        str(len(csd['modules'])),
        fmt.fmt_metric(_mean(csd['general'])),
        fmt.fmt_metric(_mean(csd['target'])),
        fmt.fmt_metric(_mean(csd['ratio'])),
        fmt.fmt_points(methods[name]['forget']),
      )
    )
  return [
    Paragraph(
      "Capability-conditioned drift: how strongly the update ΔW moves a module's "
      'output on inputs h collected from the base model on general vs target prompts, '
      'CSD(D) = E‖ΔW h‖² / E‖W0 h‖². A ratio CSD_G / CSD_T above 1 means the update '
      'acts more on general inputs than on target ones.'
    ),
    *_image(figures, 'csd', 'CSD general vs target', 'Per module (left) and mean ratio (right).'),
    *_partial(list(methods), 'CSD', having),
    Table(
      'csd-table',
      'Mean over modules',
      ('Method', 'Modules', 'CSD general', 'CSD target', 'Ratio G/T', 'Forget (pts)'),
      tuple(rows),
      ('l',) + ('r',) * 5,
    ),
  ]


def _disel(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  gates = results.get('disel_gates')
  if gates is None:
    return [_not_run("no DISeL gate statistics (results['disel_gates'] absent)")]
  general = np.asarray(gates['general'], dtype=np.float64)
  target = np.asarray(gates['target'], dtype=np.float64)
  rows = []
  for i, module in enumerate(gates['layers']):
    selectivity = target[i] - general[i]
    top = int(np.nanargmax(np.abs(selectivity))) if np.isfinite(selectivity).any() else -1
    rows.append(
      (
        module,
        fmt.fmt_score(_mean(general[i])),
        fmt.fmt_score(_mean(target[i])),
        fmt.fmt_signed_score(_mean(selectivity)),
        DASH if top < 0 else f'{top} ({fmt.fmt_signed_score(selectivity[top])})',
      )
    )
  return [
    Paragraph(
      'Token-averaged sigmoid gate ḡ of each rank component of the DISeL adapter, on '
      'general and on target prompts. Selectivity = ḡ(target) − ḡ(general): positive '
      'components open more on the domain they were trained for.'
    ),
    *_image(
      figures,
      'disel_gates',
      'DISeL gate heatmaps',
      'Modules × rank components; general and target share one colour scale.',
    ),
    Table(
      'disel-table',
      'Mean gate per module (over rank components)',
      ('Module', 'Gate general', 'Gate target', 'Selectivity', 'Most selective component'),
      tuple(rows),
      ('l', 'r', 'r', 'r', 'r'),
    ),
  ]


def _drift(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  drift = results.get('drift')
  if drift is None:
    blocks = [_not_run("no capability-drift matrix (results['drift'] absent)")]
  else:
    blocks = _drift_matrix(drift, figures)
  if results.get('drift_study') is not None:
    blocks += _drift_study(results['drift_study'], figures)
  return blocks


def _flag_text(flags: Sequence[str]) -> str:
  return '⚑ ' + ', '.join(flags) if flags else 'no'


def _drift_study(study: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  tasks, flagged = list(study['tasks']), study['flagged']
  rows = []
  for name, deltas in zip(study['adapters'], study['delta']):
    rows.append(
      (
        name,
        study['labels'][name],
        study['config_ids'][name],
        study['nominal_tasks'][name],
        *(fmt.fmt_signed_score(d) for d in deltas),
        _flag_text(flagged.get(name, ())),
      )
    )
  sensitivity_rows = []
  for label, entry in study['sensitivity'].items():
    across = [
      'largest gain on different tasks' if entry['capability_differs'] else 'same top task',
      'nominal gain changes sign' if entry['sign_change'] else 'same sign',
    ]
    for row in entry['configs']:
      sensitivity_rows.append(
        (
          label,
          row['config_id'],
          row['nominal_task'],
          fmt.fmt_signed_score(row['nominal_gain']),
          DASH
          if row['top_task'] is None
          else f'{row["top_task"]} ({fmt.fmt_signed_score(row["top_gain"])})',
          fmt.fmt_signed_score(row['drift']),
          _flag_text(row['flags']),
          '; '.join(across),
        )
      )
  return [
    Paragraph(
      'Drift study: adapters with a nominal label, each trained on the SFT data of the task '
      'its label names, at several configurations, and evaluated on every task. Δ = '
      "score(adapter) − score(base) in the tasks' native units. A flag marks where the label "
      'and the measured gains disagree: nominal_not_improved when Δ on the nominal task is ≤ 0, '
      'off_target_exceeds_nominal when some other task has |Δ| above the nominal Δ.'
    ),
    *_image(
      figures,
      'drift_study',
      'Drift-study heatmap',
      'Labelled adapters × tasks; flagged adapters are marked ⚑ in red.',
    ),
    Table(
      'drift-study-table',
      'Δ score vs base per task, per labelled adapter',
      ('Adapter', 'Label', 'Config', 'Nominal task', *tasks, 'Flags'),
      tuple(rows),
      ('l', 'l', 'l', 'l') + ('r',) * len(tasks) + ('l',),
      tuple(name in flagged for name in study['adapters']),
    ),
    Table(
      'drift-sensitivity-table',
      'Configuration sensitivity: the same label at different configurations',
      (
        'Label',
        'Config',
        'Nominal task',
        'Nominal Δ',
        'Largest Δ (task)',
        'Drift',
        'Flags',
        'Across configs',
      ),
      tuple(sensitivity_rows),
      ('l', 'l', 'l', 'r', 'r', 'r', 'l', 'l'),
    ),
  ]


def _drift_matrix(drift: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  flagged = drift['flagged']
  labels = drift['labels']
  blocks: list[Block] = [
    Paragraph(
      'Realized gain Δ = score(adapter) − score(base) of each adapter on each task, in '
      "the tasks' native 0–1 units. An adapter is flagged when its realized gains do "
      'not match its nominal label (capability drift).'
    ),
    *_image(
      figures,
      'capability_drift',
      'Capability-drift heatmap',
      'Adapters × tasks; flagged adapters are marked ⚑ in red.',
    ),
  ]
  if flagged:
    blocks.append(Paragraph(f'Flagged adapters ({len(flagged)}):'))
    blocks.append(
      Bullets(
        tuple(
          f'⚑ {name} [{labels.get(name, DASH)}]: {"; ".join(reasons) or "no reason given"}'
          for name, reasons in flagged.items()
        )
      )
    )
  else:
    blocks.append(Note('info', 'No adapter was flagged.'))
  rows = []
  for name, deltas in zip(drift['adapters'], drift['delta']):
    rows.append(
      (
        name,
        labels[name],
        *(fmt.fmt_signed_score(d) for d in deltas),
        '⚑ yes' if name in flagged else 'no',
      )
    )
  blocks.append(
    Table(
      'drift-table',
      'Δ score vs base per task',
      ('Adapter', 'Label', *drift['tasks'], 'Flagged'),
      tuple(rows),
      ('l', 'l') + ('r',) * len(drift['tasks']) + ('l',),
      tuple(name in flagged for name in drift['adapters']),
    )
  )
  return blocks


def _claims(results: Mapping[str, Any]) -> list[Block]:
  found = results.get('claims')
  if found is None:
    return [_not_run("no claims table (results['claims'] absent)")]
  rows = tuple(
    (str(c['id']), c['finding'], c['evidence'], c['rule'], f'{c["verdict"]}: {c["reason"]}')
    for c in found['claims']
  )
  counts = {v: sum(c['verdict'] == v for c in found['claims']) for v in ('agrees', 'disagrees')}
  blocks: list[Block] = [
    Paragraph(
      "PEFT-Arena's qualitative findings, each checked against this run's stage outputs by "
      'the rule in its row. A difference is significant when its 95% paired bootstrap '
      'interval (same examples, same resample indices; B = '
      f'{int(found.get("resamples", 1000)):,}) excludes 0; a correlation across methods when '
      f'its permutation p-value is below {found.get("alpha", 0.05)}. A finding agrees when '
      'every part is significant as claimed, disagrees when a part is significant against '
      'it, and is inconclusive otherwise: no absence of evidence counts for a claim. Gains '
      'and Forget are in points; a − b is the paired difference of two methods.'
    ),
    Paragraph(
      f'Methods in this run: {", ".join(found.get("methods") or []) or DASH}. '
      f'{counts["agrees"]} of {len(rows)} findings agree, {counts["disagrees"]} disagree, '
      f'{len(rows) - counts["agrees"] - counts["disagrees"]} are inconclusive.'
    ),
    Table(
      'claims-table',
      'PEFT-Arena findings against this run',
      ('#', 'Finding', 'This run (95% intervals)', 'Rule', 'Verdict'),
      rows,
      ('r', 'l', 'l', 'l', 'l'),
      tuple(c['verdict'] == 'disagrees' for c in found['claims']),
    ),
  ]
  tests = found.get('correlations') or []
  if tests:
    expected = {1: 'ρ > 0', -1: 'ρ < 0', 0: '|ρ| small'}
    blocks.append(
      Table(
        'claims-correlations-table',
        'Spearman correlations across methods (claims 7 and 8)',
        ('Claim', 'Pair', 'Expected', 'n', 'ρ', 'p', '95% bootstrap interval'),
        _correlation_rows(tests, expected),
        ('r', 'l', 'l', 'r', 'r', 'r', 'r'),
      )
    )
  return blocks


def _sae(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  entry = results.get('sae')
  if entry is None:
    return [_not_run("no delta-activation SAE study (results['sae'] absent; config.sae.enabled)")]
  found = entry['claims']
  ranks = ', '.join(str(r) for r in entry['ranks'])
  tokens = entry.get('tokens') or {}
  blocks: list[Block] = [
    Paragraph(
      f'The delta activation h_adapted − h_base of LoRA adapters at ranks {ranks}, trained on '
      f'the target by the sae stage, at the sites {", ".join(entry["sites"])} of '
      f'{entry["base"]}; one SAE per (site, adapter) on the deltas and one base SAE per site '
      f'on the base activations ({tokens.get("train", 0):,} training and '
      f'{tokens.get("eval", 0):,} evaluation tokens). MMCS: the mean over alive delta '
      'features of the largest |cosine| with an alive base decoder direction (95% bootstrap '
      'over features); the null is as many random directions, the reseed value a second base '
      'SAE from another seed (the ceiling). Density: L0 / m on the evaluation tokens. '
      "Divergence: 1 − MMCS. CE recovered: the share of the adapter's loss change at that "
      'site kept when its delta is replaced by the SAE reconstruction.'
    ),
    *_image(
      figures,
      'sae_alignment',
      'SAE alignment vs rank',
      'MMCS and one-to-one matched cosine against rank, per site (bars: 95% intervals).',
    ),
    *_image(
      figures,
      'sae_density',
      'SAE density vs rank and depth',
      'Mean feature density of the delta SAEs against rank (per site) and depth (per rank).',
    ),
    *_image(
      figures,
      'sae_divergence',
      'SAE divergence vs rank and depth',
      'Divergence 1 − MMCS against rank (per site) and depth (per rank).',
    ),
  ]
  counts = {v: sum(c['verdict'] == v for c in found['claims']) for v in ('agrees', 'disagrees')}
  n = len(found['claims'])
  blocks.append(
    Paragraph(
      "The study's findings (weak alignment, density rising with rank and depth, stable "
      'divergence), each checked against the stage outputs by the rule in its row: a '
      f'correlation counts when its permutation p-value is below {found["alpha"]}, the '
      f'alignment when its bootstrap interval (B = {int(found["resamples"]):,}) is on one '
      f'side of {sae_lib.WEAK}. {counts["agrees"]} of {n} findings agree, '
      f'{counts["disagrees"]} disagree, {n - counts["agrees"] - counts["disagrees"]} are '
      'inconclusive.'
    )
  )
  blocks.append(
    Table(
      'sae-claims-table',
      'Delta-activation SAE findings against this run',
      ('#', 'Finding', 'This run (n, 95% intervals)', 'Rule', 'Verdict'),
      tuple(
        (str(c['id']), c['finding'], c['evidence'], c['rule'], f'{c["verdict"]}: {c["reason"]}')
        for c in found['claims']
      ),
      ('r', 'l', 'l', 'l', 'l'),
      tuple(c['verdict'] == 'disagrees' for c in found['claims']),
    )
  )
  expected = {1: 'ρ > 0', -1: 'ρ < 0', 0: 'ρ near 0 (within ±0.5)'}
  blocks.append(
    Table(
      'sae-correlations-table',
      'Spearman correlations over (rank, site) rows',
      ('Claim', 'Pair', 'Expected', 'n', 'ρ', 'p', '95% bootstrap interval'),
      _correlation_rows(found['correlations'], expected),
      ('r', 'l', 'l', 'r', 'r', 'r', 'r'),
    )
  )
  blocks.append(
    Table(
      'sae-rows-table',
      'Delta SAEs per (adapter, site) (95% intervals)',
      sae_lib.ROW_COLUMNS,
      tuple(sae_lib.row_cells(r) for r in entry['rows']),
      ('l', 'r', 'l') + ('r',) * (len(sae_lib.ROW_COLUMNS) - 3),
    )
  )
  blocks.append(
    Table(
      'sae-base-table',
      'Base SAEs per site',
      sae_lib.BASE_COLUMNS,
      tuple(sae_lib.base_cells(r) for r in entry['base_rows']),
      ('l',) + ('r',) * (len(sae_lib.BASE_COLUMNS) - 1),
    )
  )
  return blocks


def _rlvr(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  entry = results.get('rlvr')
  if entry is None:
    return [_not_run("no RLVR phase (results['rlvr'] absent; config.rlvr.enabled)")]
  methods, passk = entry['methods'], entry['passk']
  ks = passk['ks']
  k = ks[-1]
  findings = []
  for m, row in methods.items():
    d = (row.get('difference') or {}).get('forget')
    measured = (
      'no interval'
      if d is None
      else fmt.fmt_points_ci(d['delta'], d['interval'], signed=True) + ' points'
    )
    findings.append(
      f'{m}: RLVR forgets {row["forgets"]} than SFT (Forget RLVR − SFT {measured}).'
      if row['forgets'] in ('less', 'more')
      else f'{m}: Forget RLVR − SFT {measured}: {row["forgets"]}.'
    )
  for m, row in methods.items():
    skipped = row.get('skipped_steps')
    if skipped:
      findings.append(
        f'{m}: {skipped} of {row["steps"]} GRPO steps applied no update (every group of the '
        'batch had equal rewards, so every advantage was 0: grpo.skip_no_signal)'
        + ('; the RLVR model is the base.' if skipped >= row['steps'] else '.')
      )
  for m, curves in passk['methods'].items():
    d = curves['late_minus_early']
    findings.append(
      f'{m}: pass@{k} late − early (step {curves["late"]["step"]} vs {curves["early"]["step"]}) '
      f'{fmt.fmt_signed_score(d["delta"])} {fmt.fmt_interval(d["interval"])}: '
      + (
        f'pass@{k} is {curves["late_vs_early"]} late than early.'
        if curves['late_vs_early'] in ('lower', 'higher')
        else f'{curves["late_vs_early"]}.'
      )
    )
  return [
    Paragraph(
      "Each method fine-tuned a second time from the base by GRPO on the target's training "
      "prompts, the target's verifiable scorer as the reward, and evaluated like its SFT model "
      '(Target, General, Forget = General_base − General). Differences are RLVR − SFT with 95% '
      f'paired bootstrap intervals (same examples, same resample indices; B = '
      f"{int(entry['resamples']):,}); RLVR forgets less when the Forget difference's interval "
      'lies below 0. pass@k: the unbiased estimator 1 − C(n − c, k) / C(n, k) from the counts c '
      f'of correct samples among n = {passk["num_samples"]} per prompt on '
      f'{passk["num_prompts"]} held-out target prompts, for the base, each SFT model and the '
      'RLVR model early (a mid-training checkpoint) and late (final); late − early is paired '
      'over prompts.'
    ),
    Paragraph('Measured in this run: ' + ' '.join(findings)),
    Table(
      'rlvr-table',
      'SFT vs RLVR per method (95% intervals; Δ: RLVR − SFT, paired)',
      rlvr_lib.COLUMNS,
      tuple(rlvr_lib.row_cells(m, row) for m, row in methods.items()),
      ('l',) + ('r',) * (len(rlvr_lib.COLUMNS) - 2) + ('l',),
    ),
    *_image(
      figures,
      'rlvr_plane',
      'SFT vs RLVR on the stability–plasticity plane',
      'General vs Target: the base (star), each method after SFT (hollow) and after RLVR '
      '(filled), an arrow from SFT to RLVR.',
    ),
    *_image(
      figures,
      'rlvr_passk',
      'pass@k curves',
      'pass@k against k (log axis) per method: base, SFT, RLVR early and late.',
    ),
    Table(
      'rlvr-passk-table',
      f'pass@k on {passk["num_prompts"]} held-out prompts, n = {passk["num_samples"]} samples',
      rlvr_lib.passk_columns(ks),
      rlvr_lib.passk_rows(passk),
      ('l', 'l', 'r') + ('r',) * len(ks),
    ),
    *_image(
      figures,
      'rlvr_reward',
      'RLVR training reward',
      "Mean reward of each GRPO step's completions, per method.",
    ),
  ]


def _training(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [n for n, m in methods.items() if m.get('train_loss') is not None]
  if not having:
    return [_not_run("no training-loss curves (results['methods'][name]['train_loss'] absent)")]
  rows = []
  for name in having:
    loss = np.asarray(methods[name]['train_loss'], dtype=np.float64)
    finite = loss[np.isfinite(loss)]
    rows.append(
      (
        name,
        f'{loss.size:,}',
        fmt.fmt_metric(loss[0]),
        fmt.fmt_metric(loss[-1]),
        fmt.fmt_metric(finite.min()) if finite.size else fmt.NOT_AVAILABLE,
        fmt.fmt_seconds(methods[name]['train_time_s']),
      )
    )
  return [
    *_image(
      figures, 'training_loss', 'Training loss curves', 'Loss per step, one line per method.'
    ),
    *_partial(list(methods), 'train_loss', having),
    Table(
      'training-table',
      'Training summary',
      ('Method', 'Steps', 'First loss', 'Final loss', 'Min loss', 'Train time'),
      tuple(rows),
      ('l',) + ('r',) * 5,
    ),
  ]


def _seed_spread(values: np.ndarray) -> str:
  """Min–max and population std of one learning rate's Targets over seeds."""
  return (
    f'{fmt.fmt_score(np.nanmin(values))}–{fmt.fmt_score(np.nanmax(values))} '
    f'(std {fmt.fmt_score(np.nanstd(values))})'
  )


def _sweep(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [n for n, m in methods.items() if m.get('sweep') is not None]
  summary_rows, rows = [], []
  for name in having:
    sweep = methods[name]['sweep']
    lrs = [float(v) for v in sweep['lr']]
    target = np.asarray(sweep['target'], dtype=np.float64)
    general = sweep.get('general')
    by_seed = sweep.get('target_by_seed')
    spread = None if by_seed is None else np.asarray(by_seed, dtype=np.float64)
    seeds = sweep.get('seeds')
    chosen = float(sweep['chosen_lr'])
    summary_rows.append(
      (
        name,
        fmt.fmt_lr(chosen),
        sweep['split'],
        f'{int(sweep["steps"]):,}',
        str(len(lrs)),
        str(len(seeds)) if seeds is not None else str(len(spread)) if spread is not None else DASH,
        _argbest(lrs, target, lr=True),
      )
    )
    for i, lr in enumerate(lrs):
      rows.append(
        (
          name,
          fmt.fmt_lr(lr),
          fmt.fmt_score(target[i]),
          DASH if general is None else fmt.fmt_score(general[i]),
          DASH if spread is None else _seed_spread(spread[:, i]),
          '◀ chosen' if math.isclose(lr, chosen, rel_tol=1e-9) else '',
        )
      )
  return [
    Paragraph(
      "Each method's learning rate, chosen on a validation split before the final run: "
      'validation Target (and General) after a short training run at each learning rate. '
      'With several seeds the spread over seeds is their min–max and (population) std.'
    ),
    *_image(
      figures,
      'lr_sweep',
      'Validation score vs learning rate',
      'Per method, log learning-rate axis; the ring marks the chosen learning rate.',
    ),
    *_partial(list(methods), 'sweep', having),
    Table(
      'sweep-summary-table',
      'Chosen learning rate per method',
      ('Method', 'Chosen LR', 'Split', 'Steps', 'LRs tried', 'Seeds', 'Best val. Target'),
      tuple(summary_rows),
      ('l', 'r', 'l', 'r', 'r', 'r', 'r'),
    ),
    Table(
      'sweep-table',
      'Validation scores per learning rate',
      ('Method', 'LR', 'Val. Target', 'Val. General', 'Target over seeds', 'Chosen'),
      tuple(rows),
      ('l', 'r', 'r', 'r', 'r', 'l'),
    ),
  ]


def _trajectory(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[Block]:
  methods = results['methods']
  having = [n for n, m in methods.items() if m.get('trajectory') is not None]
  rows = []
  for name in having:
    trajectory = methods[name]['trajectory']
    steps = [int(v) for v in trajectory['step']]
    rows.append(
      (
        name,
        str(len(steps)),
        f'{max(steps):,}',
        fmt.fmt_metric(trajectory['distance'][-1]),
        fmt.fmt_metric(trajectory['cka'][-1]),
        f'{fmt.fmt_score(trajectory["target"][0])} → {fmt.fmt_score(trajectory["target"][-1])}',
        f'{fmt.fmt_score(trajectory["general"][0])} → {fmt.fmt_score(trajectory["general"][-1])}',
      )
    )
  return [
    Paragraph(
      'Checkpoints along training: relative distance of the weights from the base, mean '
      'linear CKA to the base over layers, and Target and General, against the training step.'
    ),
    *_image(
      figures,
      'trajectory',
      'Training trajectories',
      'Distance, CKA, Target and General vs step, one line per method.',
    ),
    *_partial(list(methods), 'trajectory', having),
    Table(
      'trajectory-table',
      'First and last checkpoint per method',
      (
        'Method',
        'Checkpoints',
        'Last step',
        'Final distance',
        'Final CKA',
        'Target (first → last)',
        'General (first → last)',
      ),
      tuple(rows),
      ('l',) + ('r',) * 6,
    ),
  ]


def _json_default(value: Any) -> Any:
  if hasattr(value, 'tolist'):
    return value.tolist()
  if hasattr(value, 'to_dict'):
    return value.to_dict()
  return str(value)


def _configuration(results: Mapping[str, Any]) -> list[Block]:
  config = results.get('config')
  if config is None:
    return [_not_run("no resolved config recorded (results['config'] absent)")]
  text = json.dumps(config, indent=2, default=_json_default, ensure_ascii=False)
  return [Paragraph('The resolved configuration of the run.'), Code('json', text)]


def _versions_timing(results: Mapping[str, Any]) -> list[Block]:
  blocks: list[Block] = []
  versions = results.get('versions')
  if versions is None:
    blocks.append(_not_run("no package versions recorded (results['versions'] absent)"))
  else:
    blocks.append(
      Table(
        'versions-table',
        'Package versions',
        ('Package', 'Version'),
        tuple((k, v) for k, v in versions.items()),
        ('l', 'l'),
      )
    )
  timing = results.get('timing')
  if timing is None:
    blocks.append(_not_run("no stage timings recorded (results['timing'] absent)"))
  else:
    total = float(timing['total_s'])
    rows = [
      (stage, fmt.fmt_seconds(seconds), fmt.fmt_percent(seconds, total))
      for stage, seconds in timing['stages'].items()
    ]
    rows.append(('total', fmt.fmt_seconds(total), fmt.fmt_percent(total, total)))
    blocks.append(
      Table(
        'timing-table',
        'Wall time per stage',
        ('Stage', 'Time', 'Share'),
        tuple(rows),
        ('l', 'r', 'r'),
      )
    )
  return blocks


def build_document(results: Mapping[str, Any], figures: Mapping[str, str]) -> Document:
  """Lays out the report of a validated results dict.

  Args:
    results: the arena results dict, already checked by `validate_results`.
    figures: ``{figure name: file name relative to the report directory}`` for the figures that
      were drawn (names as in `FIGURE_FILES`).

  Returns:
    The `Document`, with one `Section` per entry of `SECTIONS`, in that order, and each entry
    of `OPTIONAL_SECTIONS` whose per-method key some method has, after the section it follows.
  """
  bodies = {
    'stability-plasticity': _stability(results, figures),
    'methods': _methods_tables(results),
    'paths': _paths(results, figures),
    'weight-spectra': _spectra(results, figures),
    'activation-geometry': _activation(results, figures),
    'csd': _csd(results, figures),
    'disel-gates': _disel(results, figures),
    'capability-drift': _drift(results, figures),
    'claims': _claims(results),
    'delta-activation-saes': _sae(results, figures),
    'sft-vs-rlvr': _rlvr(results, figures),
    'training': _training(results, figures),
    'configuration': _configuration(results),
    'versions-timing': _versions_timing(results),
  }
  optional = {'lr-sweep': _sweep, 'trajectory': _trajectory}
  sections = [_summary(results)]
  for anchor, title in SECTIONS[1:]:
    sections.append(Section(anchor, title, tuple(bodies[anchor])))
    for extra, extra_title, after, key in OPTIONAL_SECTIONS:
      if after == anchor and any(m.get(key) is not None for m in results['methods'].values()):
        sections.append(Section(extra, extra_title, tuple(optional[extra](results, figures))))
  subtitle = (
    f'Created {results["created"]} · target task {results["target_task"]} · '
    f'{len(results["methods"])} methods'
  )
  return Document(results['title'], subtitle, tuple(sections))


def _correlation_rows(
  tests: Sequence[Mapping[str, Any]], expected: Mapping[int, str]
) -> tuple[tuple[str, ...], ...]:
  """Rows (claim, pair, expected sign, n, ρ, p, interval) of Spearman tests for a claims table."""
  return tuple(
    (
      str(t['claim']),
      t['pair'],
      expected.get(int(t.get('expected', 0)), DASH),
      str(t['n']),
      fmt.NOT_AVAILABLE if t['rho'] is None else f'{t["rho"]:+.3f}',
      fmt.NOT_AVAILABLE if t['p'] is None else f'{t["p"]:.3g} ({t["p_method"]})',
      fmt.NO_INTERVAL
      if t.get('interval') is None
      else f'[{t["interval"][0]:+.3f}, {t["interval"][1]:+.3f}]',
    )
    for t in tests
  )
