"""Bootstrap confidence intervals of task scores, of Target / General, and of paired differences.

Definitions (docs/METRICS.md, "Intervals").

**Per-example statistics.** Every main metric the scorers compute is one estimator,

  ``score = (1/S) Σ_s  Σ_{i ∈ s} a_i / Σ_{i ∈ s} b_i``,

the unweighted mean over strata ``s`` of a ratio of sums over the units (prompts) ``i`` of the
stratum: ``a_i`` the numerator, ``b_i`` the denominator. Plain means (GSM8K, MATH-500, NQ-open
accuracy / exact match) have ``b_i = 1`` and one stratum; IFEval's instruction-level accuracy
has ``a_i`` = instructions of prompt ``i`` followed, ``b_i`` = its instructions, one stratum;
BBH has ``b_i = 1`` and one stratum per subtask. A task's statistics are stored compactly as
``{'numerator': [a_i], 'denominator': [b_i] (absent: all 1), 'stratum': [stratum id per unit]
(absent: one stratum), 'strata': [stratum names]}`` (:func:`unit_stats`).

**Resampling.** A replicate draws, within each stratum independently, ``N_s`` units with
replacement from its ``N_s`` units (a stratified bootstrap: the strata and their sizes stay
fixed, so BBH keeps every subtask) and recomputes the estimator. ``B`` replicates (default
1000), drawn from ``numpy.random.default_rng([seed, crc32(task name)])`` (default seed 0), so a
task's resample indices depend only on the seed, its name and its size. The interval is the
percentile interval: the ``(1 − c)/2`` and ``(1 + c)/2`` quantiles (``numpy.quantile``, linear
interpolation) of the replicates, ``c = 0.95``.

**Target / General.** Replicate ``b`` of Target (General) is the mean of replicate ``b`` of
every target (general) task: the tasks are resampled jointly, each from its own indices.

**Paired differences.** For two models scored on the same examples in the same order, both
sides are evaluated on the *same* indices, and the replicates of the difference are the
differences of the replicates. ``within_noise`` means the interval contains 0.

Everything is vectorised over replicates in NumPy (one draw per stratum, one gather, one
segmented sum).
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95


class Units(NamedTuple):
  """Parsed per-example statistics of one task.

  Attributes:
    numerator: ``[N]`` float64, ``a_i``.
    denominator: ``[N]`` float64, ``b_i``.
    stratum: ``[N]`` int, stratum id of each unit, ids ``0 .. S-1``.
    strata: the ``S`` stratum names.
  """

  numerator: np.ndarray
  denominator: np.ndarray
  stratum: np.ndarray
  strata: tuple[str, ...]


def _compact(values: np.ndarray) -> list:
  """A JSON-friendly list: ints when every value is integral (``1`` instead of ``1.0``)."""
  if np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
    return [int(v) for v in values]
  return [float(v) for v in values]


def unit_stats(
  numerator: Sequence[float],
  denominator: Optional[Sequence[float]] = None,
  strata: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
  """The compact JSON form of a task's per-example statistics.

  Args:
    numerator: ``a_i`` per unit (prompt), in example order.
    denominator: ``b_i`` per unit; ``None`` means every ``b_i = 1``.
    strata: the stratum name of each unit; ``None`` means one stratum. Ids are given in order
      of first appearance.
  Returns:
    ``{'numerator': [...]}`` plus ``'denominator'`` when some ``b_i != 1`` and ``'stratum'``,
    ``'strata'`` when there is more than one stratum.
  """
  a = np.asarray(numerator, dtype=np.float64)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(f'per-example numerators must be a non-empty list, got shape {a.shape}')
  out: dict[str, Any] = {'numerator': _compact(a)}
  if denominator is not None:
    b = np.asarray(denominator, dtype=np.float64)
    if b.shape != a.shape:
      raise ValueError(f'{b.size} denominators for {a.size} numerators; they must pair up')
    if np.any(b != 1.0):
      out['denominator'] = _compact(b)
  if strata is not None:
    names = [str(s) for s in strata]
    if len(names) != a.size:
      raise ValueError(f'{len(names)} stratum names for {a.size} units; they must pair up')
    order = list(dict.fromkeys(names))
    if len(order) > 1:
      ids = {name: i for i, name in enumerate(order)}
      out['stratum'] = [ids[name] for name in names]
      out['strata'] = order
  return out


def parse_units(stats: Mapping[str, Any], where: str = 'per-example statistics') -> Units:
  """Checks and parses a :func:`unit_stats` dict; errors name ``where`` and the key."""
  if not isinstance(stats, Mapping) or 'numerator' not in stats:
    raise KeyError(f"{where}: expected a dict with a 'numerator' list, got {stats!r:.80}")
  a = np.asarray(stats['numerator'], dtype=np.float64)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(f"{where}['numerator']: expected a non-empty list, got shape {a.shape}")
  if stats.get('denominator') is None:
    b = np.ones_like(a)
  else:
    b = np.asarray(stats['denominator'], dtype=np.float64)
    if b.shape != a.shape:
      raise ValueError(f"{where}['denominator']: {b.size} values for {a.size} numerators")
    if np.any(b < 0):
      raise ValueError(f"{where}['denominator']: denominators must be >= 0")
  if stats.get('stratum') is None:
    stratum = np.zeros(a.size, dtype=np.int64)
    strata = tuple(stats.get('strata') or ('all',))[:1]
  else:
    stratum = np.asarray(stats['stratum'])
    strata = tuple(str(s) for s in stats.get('strata') or ())
    if stratum.shape != a.shape or not np.issubdtype(stratum.dtype, np.integer):
      raise ValueError(f"{where}['stratum']: expected {a.size} integer stratum ids")
    if len(strata) == 0 or stratum.min() < 0 or stratum.max() >= len(strata):
      raise ValueError(
        f"{where}['stratum']: ids must lie in [0, {len(strata)}) (one per name in 'strata')"
      )
    if len(np.unique(stratum)) != len(strata):
      raise ValueError(f"{where}['strata']: every stratum needs at least one unit")
  return Units(a, b, stratum.astype(np.int64), strata)


def _as_units(stats: Any, where: str) -> Units:
  return stats if isinstance(stats, Units) else parse_units(stats, where)


def _layout(units: Units) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(order, starts, sizes)``: units sorted by stratum (stable), each stratum's first position
  in that order and its size."""
  order = np.argsort(units.stratum, kind='stable')
  sizes = np.bincount(units.stratum, minlength=len(units.strata))
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  return order, starts, sizes


def estimate(units: Units | Mapping[str, Any], indices: Optional[np.ndarray] = None) -> np.ndarray:
  """The estimator on the units at ``indices`` (``[..., N]``, grouped by stratum as
  :func:`resample_indices` returns them); without indices, the point estimate (a 0-d array).

  Replicates whose stratum denominators sum to 0 are NaN.
  """
  units = _as_units(units, 'per-example statistics')
  order, starts, sizes = _layout(units)
  if indices is None:
    indices = order
  num = np.add.reduceat(units.numerator[indices], starts, axis=-1)
  if np.all(units.denominator == 1.0):  # a mean: each stratum's denominator is its size
    den = sizes.astype(np.float64)
  else:
    den = np.add.reduceat(units.denominator[indices], starts, axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
  return ratio.mean(axis=-1)


def point_estimate(stats: Units | Mapping[str, Any]) -> float:
  """The task score recomputed from its per-example statistics."""
  return float(estimate(stats))


def task_rng(seed: int, task: str) -> np.random.Generator:
  """The generator of a task's resample indices: ``default_rng([seed, crc32(task)])``."""
  return np.random.default_rng([int(seed), zlib.crc32(task.encode('utf-8'))])


def resample_indices(
  units: Units | Mapping[str, Any], resamples: int, rng: np.random.Generator
) -> np.ndarray:
  """``[resamples, N]`` unit indices, resampled with replacement within each stratum.

  Column ``j`` belongs to the stratum of position ``j`` of the stratum-sorted order, so each row
  holds every stratum's ``N_s`` draws contiguously (what :func:`estimate` sums).
  """
  units = _as_units(units, 'per-example statistics')
  if resamples < 1:
    raise ValueError(f'the bootstrap needs resamples >= 1, got {resamples}')
  order, starts, sizes = _layout(units)
  indices = np.empty((resamples, order.size), dtype=np.int64)
  # One vectorised draw per stratum (a loop over the S strata, never over replicates).
  for start, size in zip(starts.tolist(), sizes.tolist()):
    members = order[start : start + size]
    indices[:, start : start + size] = members[rng.integers(0, size, size=(resamples, size))]
  return indices


def percentile_interval(
  replicates: np.ndarray, confidence: float = CONFIDENCE
) -> Optional[list[float]]:
  """``[lo, hi]``: the ``(1 ∓ confidence)/2`` quantiles of the finite replicates (None if none)."""
  values = np.asarray(replicates, dtype=np.float64)
  values = values[np.isfinite(values)]
  if values.size == 0:
    return None
  tail = (1.0 - confidence) / 2.0
  lo, hi = np.quantile(values, [tail, 1.0 - tail])
  return [float(lo), float(hi)]


def within_noise(interval: Optional[Sequence[float]]) -> Optional[bool]:
  """Whether an interval contains 0 (``None`` for no interval)."""
  if interval is None:
    return None
  return bool(interval[0] <= 0.0 <= interval[1])


def _kind_tasks(
  per_example: Mapping[str, Any], kind: str, explicit: Optional[Sequence[str]]
) -> list[str]:
  if explicit is not None:
    return list(explicit)
  return [t for t, s in per_example.items() if isinstance(s, Mapping) and s.get('kind') == kind]


def task_replicates(
  per_example: Mapping[str, Any], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, np.ndarray]:
  """``{task: [resamples] replicates}`` for every task with statistics (``None`` entries skip)."""
  out = {}
  for task, stats in per_example.items():
    if stats is None:
      continue
    units = parse_units(stats, f'per_example[{task!r}]')
    out[task] = estimate(units, resample_indices(units, resamples, task_rng(seed, task)))
  return out


def _axis(replicates: Mapping[str, np.ndarray], tasks: Sequence[str]) -> Optional[np.ndarray]:
  if not tasks or any(t not in replicates for t in tasks):
    return None
  return np.mean([replicates[t] for t in tasks], axis=0)


def score_intervals(
  per_example: Mapping[str, Any],
  *,
  target_tasks: Optional[Sequence[str]] = None,
  general_tasks: Optional[Sequence[str]] = None,
  resamples: int = DEFAULT_RESAMPLES,
  seed: int = DEFAULT_SEED,
  confidence: float = CONFIDENCE,
) -> dict[str, Any]:
  """Bootstrap intervals of each task score and of Target / General.

  Args:
    per_example: ``{task: unit_stats dict (with 'kind') or None}``.
    target_tasks, general_tasks: the tasks averaged into Target / General (default: those whose
      statistics have ``kind`` ``'target'`` / ``'general'``).
  Returns:
    ``{'tasks': {task: [lo, hi] or None}, 'target': [lo, hi] or None, 'general': ...}``; an axis
    is ``None`` when it has no task or one of its tasks has no statistics.
  """
  reps = task_replicates(per_example, resamples=resamples, seed=seed)
  out: dict[str, Any] = {
    'tasks': {
      t: percentile_interval(reps[t], confidence) if t in reps else None for t in per_example
    }
  }
  for kind, explicit in (('target', target_tasks), ('general', general_tasks)):
    axis = _axis(reps, _kind_tasks(per_example, kind, explicit))
    out[kind] = None if axis is None else percentile_interval(axis, confidence)
  return out


def _difference(replicates: Optional[np.ndarray], delta: float, confidence: float) -> dict:
  interval = None if replicates is None else percentile_interval(replicates, confidence)
  # + 0.0 turns a -0.0 (General_base − General of identical models) into 0.0.
  interval = None if interval is None else [v + 0.0 for v in interval]
  return {'delta': float(delta) + 0.0, 'interval': interval, 'within_noise': within_noise(interval)}


def paired_intervals(
  base: Mapping[str, Any],
  method: Mapping[str, Any],
  *,
  target_tasks: Optional[Sequence[str]] = None,
  general_tasks: Optional[Sequence[str]] = None,
  resamples: int = DEFAULT_RESAMPLES,
  seed: int = DEFAULT_SEED,
  confidence: float = CONFIDENCE,
) -> dict[str, Any]:
  """Paired bootstrap intervals of ``method − base`` per task, of the Target gain and of Forget.

  Both models' statistics of a task must cover the same units (same count and strata) in the
  same order; both are evaluated on the same resample indices.

  Args:
    base, method: ``{task: unit_stats dict (with 'kind') or None}``; tasks present in both with
      statistics are compared.
    target_tasks: tasks averaged into Target (default: ``kind == 'target'`` in ``base``).
    general_tasks: tasks averaged into General (default: ``kind == 'general'``).
  Returns:
    ``{'tasks': {task: {'delta', 'interval', 'within_noise'}}, 'target_gain': {...},
    'forget': {...}}`` with ``delta`` the point difference (``method − base`` per task and for
    the Target gain, ``General_base − General_method`` for Forget), ``interval`` its 95%
    interval (``None`` when some task lacks statistics) and ``within_noise`` whether it holds 0.
  """
  diffs: dict[str, np.ndarray] = {}
  points: dict[str, float] = {}
  for task in base:
    if base[task] is None or method.get(task) is None:
      continue
    u0 = parse_units(base[task], f'base per_example[{task!r}]')
    u1 = parse_units(method[task], f'method per_example[{task!r}]')
    if u0.numerator.size != u1.numerator.size or not np.array_equal(u0.stratum, u1.stratum):
      raise ValueError(
        f'task {task!r}: paired intervals need the same examples in the same order; base has '
        f'{u0.numerator.size} units in strata {list(u0.strata)}, the method '
        f'{u1.numerator.size} in {list(u1.strata)}'
      )
    indices = resample_indices(u0, resamples, task_rng(seed, task))
    diffs[task] = estimate(u1, indices) - estimate(u0, indices)
    points[task] = point_estimate(u1) - point_estimate(u0)
  out: dict[str, Any] = {'tasks': {t: _difference(diffs[t], points[t], confidence) for t in diffs}}
  for name, kind, explicit, sign in (
    ('target_gain', 'target', target_tasks, 1.0),
    ('forget', 'general', general_tasks, -1.0),
  ):
    tasks = _kind_tasks(base, kind, explicit)
    axis = _axis(diffs, tasks)
    if tasks and all(t in points for t in tasks):
      delta = sign * float(np.mean([points[t] for t in tasks]))
    else:
      delta = float('nan')
    out[name] = _difference(None if axis is None else sign * axis, delta, confidence)
  return out
