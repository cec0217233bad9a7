"""Validation of the arena results dict that the report renders.

The schema itself is documented in `peft_jax.report` (the package docstring). This module checks a
results dict against it before anything is drawn, so that a malformed dict fails with one error
that names the offending key path (``results['methods']['lora']['target']``) instead of a
matplotlib traceback halfway through the report.

Required keys must be present. Optional keys (per-method paths, spectra, activation geometry,
CSD, training loss, intervals, paired differences, example counts, learning-rate sweep and
trajectory; the base's intervals and counts; the top-level DISeL gates, capability drift, the
drift study, claims, the delta-activation SAE study, the SFT-vs-RLVR comparison, bootstrap settings, config, versions and timing) may be absent or ``None``:
the report then renders that section with a "not run" note, shows a score without its interval, or (sweep,
trajectory) leaves the section out. When an optional entry is present, its own keys are required
and checked like the rest.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

# Optional per-method entries, in report order.
OPTIONAL_METHOD_KEYS = (
  'train_loss',
  'interpolation',
  'rewind',
  'spectral',
  'activation',
  'csd',
  'n',
  'intervals',
  'paired',
  'sweep',
  'trajectory',
)
# Optional entries of the base's scores.
OPTIONAL_BASE_KEYS = ('n', 'intervals')
# Optional top-level entries.
OPTIONAL_TOP_KEYS = (
  'disel_gates',
  'drift',
  'drift_study',
  'claims',
  'sae',
  'rlvr',
  'bootstrap',
  'config',
  'versions',
  'timing',
)
VERDICTS = ('agrees', 'disagrees', 'inconclusive')
REWIND_KINDS = ('cayley', 'additive', 'magnitude_direction', 'gated')


class ResultsSchemaError(KeyError):
  """A results dict does not match the report schema.

  Subclasses `KeyError` so callers that catch missing keys keep working, but prints its message
  as written (a plain `KeyError` would wrap it in quotes).
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ''


def _path(parts: Sequence[str | int]) -> str:
  return 'results' + ''.join(f'[{p!r}]' for p in parts)


def _fail(parts: Sequence[str | int], message: str) -> None:
  raise ResultsSchemaError(f'{_path(parts)}: {message}')


def _require_mapping(value: Any, parts: Sequence[str | int]) -> Mapping:
  if not isinstance(value, Mapping):
    _fail(parts, f'expected a dict, got {type(value).__name__}')
  return value


def _require_key(mapping: Mapping, key: str, parts: Sequence[str | int]) -> Any:
  if key not in mapping or mapping[key] is None:
    present = ', '.join(sorted(map(str, mapping))) or '(none)'
    raise ResultsSchemaError(
      f'missing required key {_path([*parts, key])}; keys present at {_path(parts)}: {present}'
    )
  return mapping[key]


def _is_number(value: Any) -> bool:
  # numpy scalars register as numbers.Real; bool is an int subclass but never a score.
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require_number(value: Any, parts: Sequence[str | int]) -> float:
  if not _is_number(value):
    _fail(parts, f'expected a number, got {type(value).__name__} ({value!r})')
  return float(value)


def _require_int(value: Any, parts: Sequence[str | int]) -> int:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    _fail(parts, f'expected an integer, got {type(value).__name__} ({value!r})')
  return int(value)


def _require_str(value: Any, parts: Sequence[str | int]) -> str:
  if not isinstance(value, str):
    _fail(parts, f'expected a string, got {type(value).__name__} ({value!r})')
  return value


def _require_sequence(value: Any, parts: Sequence[str | int]) -> Sequence:
  # numpy arrays are accepted through tolist(); strings are not sequences of values here.
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    value = value.tolist()
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    _fail(parts, f'expected a list, got {type(value).__name__}')
  return value


def _require_numbers(
  value: Any, parts: Sequence[str | int], *, length: int | None = None, nonempty: bool = True
) -> list[float]:
  seq = _require_sequence(value, parts)
  if nonempty and not seq:
    _fail(parts, 'expected a non-empty list of numbers')
  if length is not None and len(seq) != length:
    _fail(parts, f'expected {length} values, got {len(seq)}')
  return [_require_number(v, [*parts, i]) for i, v in enumerate(seq)]


def _require_strings(value: Any, parts: Sequence[str | int]) -> list[str]:
  seq = _require_sequence(value, parts)
  return [_require_str(v, [*parts, i]) for i, v in enumerate(seq)]


def _require_matrix(
  value: Any, parts: Sequence[str | int], rows: int, cols: int | None = None
) -> list[list[float]]:
  seq = _require_sequence(value, parts)
  if len(seq) != rows:
    _fail(parts, f'expected {rows} rows, got {len(seq)}')
  matrix = []
  for i, row in enumerate(seq):
    matrix.append(_require_numbers(row, [*parts, i], length=cols))
    if cols is None:
      cols = len(matrix[-1])
  return matrix


def _check_interval(value: Any, parts: Sequence[str | int]) -> None:
  """``None`` (no interval) or ``[lo, hi]`` with ``lo <= hi``."""
  if value is None:
    return
  lo, hi = _require_numbers(value, parts, length=2)
  if lo > hi:
    _fail(parts, f'expected [lo, hi] with lo <= hi, got [{lo!r}, {hi!r}]')


def _check_intervals(value: Any, parts: Sequence[str | int]) -> None:
  intervals = _require_mapping(value, parts)
  for key in ('target', 'general'):
    if key not in intervals:
      _require_key(intervals, key, parts)
    _check_interval(intervals[key], [*parts, key])
  tasks = _require_mapping(_require_key(intervals, 'tasks', parts), [*parts, 'tasks'])
  for task, interval in tasks.items():
    _check_interval(interval, [*parts, 'tasks', task])


def _check_counts(value: Any, parts: Sequence[str | int]) -> None:
  counts = _require_mapping(value, parts)
  for task, count in counts.items():
    if _require_int(count, [*parts, task]) < 1:
      _fail([*parts, task], f'expected a positive example count, got {count}')


def _check_difference(value: Any, parts: Sequence[str | int]) -> None:
  difference = _require_mapping(value, parts)
  _require_number(_require_key(difference, 'delta', parts), [*parts, 'delta'])
  for key in ('interval', 'within_noise'):
    if key not in difference:
      _require_key(difference, key, parts)
  _check_interval(difference['interval'], [*parts, 'interval'])
  noise = difference['within_noise']
  if noise is not None and not isinstance(noise, bool):
    _fail([*parts, 'within_noise'], f'expected true, false or null, got {noise!r}')


def _check_paired(value: Any, parts: Sequence[str | int]) -> None:
  paired = _require_mapping(value, parts)
  for key in ('target_gain', 'forget'):
    _check_difference(_require_key(paired, key, parts), [*parts, key])
  tasks = _require_mapping(_require_key(paired, 'tasks', parts), [*parts, 'tasks'])
  for task, difference in tasks.items():
    _check_difference(difference, [*parts, 'tasks', task])


def _check_sweep(value: Any, parts: Sequence[str | int]) -> None:
  sweep = _require_mapping(value, parts)
  lrs = _require_numbers(_require_key(sweep, 'lr', parts), [*parts, 'lr'])
  if min(lrs) <= 0:
    _fail([*parts, 'lr'], 'expected positive learning rates (plotted on a log axis)')
  _require_numbers(_require_key(sweep, 'target', parts), [*parts, 'target'], length=len(lrs))
  if sweep.get('general') is not None:
    _require_numbers(sweep['general'], [*parts, 'general'], length=len(lrs))
  _require_number(_require_key(sweep, 'chosen_lr', parts), [*parts, 'chosen_lr'])
  _require_str(_require_key(sweep, 'split', parts), [*parts, 'split'])
  _require_int(_require_key(sweep, 'steps', parts), [*parts, 'steps'])
  seeds = None
  if sweep.get('seeds') is not None:
    seeds = _require_sequence(sweep['seeds'], [*parts, 'seeds'])
    for i, seed in enumerate(seeds):
      _require_int(seed, [*parts, 'seeds', i])
  if sweep.get('target_by_seed') is not None:
    by_seed = _require_sequence(sweep['target_by_seed'], [*parts, 'target_by_seed'])
    rows = len(seeds) if seeds is not None else len(by_seed)
    _require_matrix(by_seed, [*parts, 'target_by_seed'], rows=rows, cols=len(lrs))


def _check_trajectory(value: Any, parts: Sequence[str | int]) -> None:
  trajectory = _require_mapping(value, parts)
  steps = _require_sequence(_require_key(trajectory, 'step', parts), [*parts, 'step'])
  if not steps:
    _fail([*parts, 'step'], 'expected a non-empty list of steps')
  for i, step in enumerate(steps):
    _require_int(step, [*parts, 'step', i])
  for key in ('distance', 'cka', 'target', 'general'):
    _require_numbers(_require_key(trajectory, key, parts), [*parts, key], length=len(steps))


def _check_scores(mapping: Mapping, parts: Sequence[str | int]) -> None:
  _require_number(_require_key(mapping, 'target', parts), [*parts, 'target'])
  _require_number(_require_key(mapping, 'general', parts), [*parts, 'general'])
  tasks = _require_mapping(_require_key(mapping, 'tasks', parts), [*parts, 'tasks'])
  for task, score in tasks.items():
    _require_number(score, [*parts, 'tasks', task])
  if mapping.get('n') is not None:
    _check_counts(mapping['n'], [*parts, 'n'])
  if mapping.get('intervals') is not None:
    _check_intervals(mapping['intervals'], [*parts, 'intervals'])


def _check_curve(curve: Any, parts: Sequence[str | int]) -> None:
  curve = _require_mapping(curve, parts)
  alpha = _require_numbers(_require_key(curve, 'alpha', parts), [*parts, 'alpha'])
  for key in ('target', 'general'):
    _require_numbers(_require_key(curve, key, parts), [*parts, key], length=len(alpha))


def _check_method(name: str, method: Any) -> None:
  parts = ['methods', name]
  method = _require_mapping(method, parts)
  _check_scores(method, parts)
  _require_number(_require_key(method, 'forget', parts), [*parts, 'forget'])
  trainable = _require_int(
    _require_key(method, 'trainable_params', parts), [*parts, 'trainable_params']
  )
  total = _require_int(_require_key(method, 'total_params', parts), [*parts, 'total_params'])
  if total <= 0:
    _fail([*parts, 'total_params'], f'expected a positive count, got {total}')
  if trainable < 0:
    _fail([*parts, 'trainable_params'], f'expected a non-negative count, got {trainable}')
  _require_number(_require_key(method, 'train_time_s', parts), [*parts, 'train_time_s'])
  _require_number(_require_key(method, 'peak_memory_mb', parts), [*parts, 'peak_memory_mb'])

  if method.get('paired') is not None:
    _check_paired(method['paired'], [*parts, 'paired'])
  if method.get('sweep') is not None:
    _check_sweep(method['sweep'], [*parts, 'sweep'])
  if method.get('trajectory') is not None:
    _check_trajectory(method['trajectory'], [*parts, 'trajectory'])
  if method.get('train_loss') is not None:
    _require_numbers(method['train_loss'], [*parts, 'train_loss'])
  if method.get('interpolation') is not None:
    _check_curve(method['interpolation'], [*parts, 'interpolation'])
  if method.get('rewind') is not None:
    _check_curve(method['rewind'], [*parts, 'rewind'])
    kind = _require_str(
      _require_key(method['rewind'], 'kind', [*parts, 'rewind']), [*parts, 'rewind', 'kind']
    )
    if kind not in REWIND_KINDS:
      _fail([*parts, 'rewind', 'kind'], f'expected one of {REWIND_KINDS}, got {kind!r}')
  if method.get('spectral') is not None:
    sp_parts = [*parts, 'spectral']
    spectral = _require_mapping(method['spectral'], sp_parts)
    _require_str(_require_key(spectral, 'module', sp_parts), [*sp_parts, 'module'])
    retention = _require_numbers(
      _require_key(spectral, 'retention', sp_parts), [*sp_parts, 'retention']
    )
    _require_numbers(
      _require_key(spectral, 'energy', sp_parts), [*sp_parts, 'energy'], length=len(retention)
    )
    summary = _require_mapping(_require_key(spectral, 'summary', sp_parts), [*sp_parts, 'summary'])
    for key, value in summary.items():
      _require_number(value, [*sp_parts, 'summary', key])
  if method.get('activation') is not None:
    ac_parts = [*parts, 'activation']
    activation = _require_mapping(method['activation'], ac_parts)
    layers = _require_sequence(_require_key(activation, 'layers', ac_parts), [*ac_parts, 'layers'])
    if not layers:
      _fail([*ac_parts, 'layers'], 'expected a non-empty list of layer indices')
    for i, layer in enumerate(layers):
      _require_int(layer, [*ac_parts, 'layers', i])
    for key in ('cka', 'procrustes', 'gram'):
      _require_numbers(
        _require_key(activation, key, ac_parts), [*ac_parts, key], length=len(layers)
      )
  if method.get('csd') is not None:
    csd_parts = [*parts, 'csd']
    csd = _require_mapping(method['csd'], csd_parts)
    modules = _require_strings(_require_key(csd, 'modules', csd_parts), [*csd_parts, 'modules'])
    if not modules:
      _fail([*csd_parts, 'modules'], 'expected a non-empty list of module names')
    for key in ('general', 'target', 'ratio'):
      _require_numbers(_require_key(csd, key, csd_parts), [*csd_parts, key], length=len(modules))


def _check_disel_gates(gates: Any) -> None:
  parts = ['disel_gates']
  gates = _require_mapping(gates, parts)
  layers = _require_strings(_require_key(gates, 'layers', parts), [*parts, 'layers'])
  if not layers:
    _fail([*parts, 'layers'], 'expected a non-empty list of module names')
  general = _require_matrix(
    _require_key(gates, 'general', parts), [*parts, 'general'], rows=len(layers)
  )
  _require_matrix(
    _require_key(gates, 'target', parts), [*parts, 'target'], rows=len(layers), cols=len(general[0])
  )


def _check_drift(drift: Any, parts: Sequence[str | int] = ('drift',)) -> None:
  parts = list(parts)
  drift = _require_mapping(drift, parts)
  adapters = _require_strings(_require_key(drift, 'adapters', parts), [*parts, 'adapters'])
  if not adapters:
    _fail([*parts, 'adapters'], 'expected a non-empty list of adapter names')
  tasks = _require_strings(_require_key(drift, 'tasks', parts), [*parts, 'tasks'])
  if not tasks:
    _fail([*parts, 'tasks'], 'expected a non-empty list of task names')
  _require_matrix(
    _require_key(drift, 'delta', parts), [*parts, 'delta'], rows=len(adapters), cols=len(tasks)
  )
  labels = _require_mapping(_require_key(drift, 'labels', parts), [*parts, 'labels'])
  for adapter in adapters:
    _require_str(_require_key(labels, adapter, [*parts, 'labels']), [*parts, 'labels', adapter])
  flagged = _require_mapping(_require_key(drift, 'flagged', parts), [*parts, 'flagged'])
  for adapter, reasons in flagged.items():
    if adapter not in adapters:
      _fail(
        [*parts, 'flagged', adapter],
        f'flagged adapter is not in {_path([*parts, "adapters"])} ({", ".join(adapters)})',
      )
    _require_strings(reasons, [*parts, 'flagged', adapter])


def _check_drift_study(study: Any) -> None:
  parts = ['drift_study']
  _check_drift(study, parts)
  for key in ('config_ids', 'nominal_tasks'):
    found = _require_mapping(_require_key(study, key, parts), [*parts, key])
    for adapter in study['adapters']:
      _require_str(_require_key(found, adapter, [*parts, key]), [*parts, key, adapter])
  sensitivity = _require_mapping(_require_key(study, 'sensitivity', parts), [*parts, 'sensitivity'])
  for label, entry in sensitivity.items():
    where = [*parts, 'sensitivity', label]
    entry = _require_mapping(entry, where)
    for row_index, row in enumerate(
      _require_sequence(_require_key(entry, 'configs', where), where)
    ):
      row_parts = [*where, 'configs', row_index]
      row = _require_mapping(row, row_parts)
      for key in ('nominal_gain', 'top_gain', 'drift'):
        _require_number(_require_key(row, key, row_parts), [*row_parts, key])
      _require_str(_require_key(row, 'config_id', row_parts), [*row_parts, 'config_id'])


def _check_claims(claims: Any, parts: Sequence[str | int] = ('claims',)) -> None:
  parts = list(parts)
  claims = _require_mapping(claims, parts)
  rows = _require_sequence(_require_key(claims, 'claims', parts), [*parts, 'claims'])
  for i, row in enumerate(rows):
    where = [*parts, 'claims', i]
    row = _require_mapping(row, where)
    _require_int(_require_key(row, 'id', where), [*where, 'id'])
    for key in ('finding', 'rule', 'evidence', 'reason'):
      _require_str(_require_key(row, key, where), [*where, key])
    verdict = _require_str(_require_key(row, 'verdict', where), [*where, 'verdict'])
    if verdict not in VERDICTS:
      _fail([*where, 'verdict'], f'expected one of {VERDICTS}, got {verdict!r}')
  tests = _require_sequence(_require_key(claims, 'correlations', parts), [*parts, 'correlations'])
  for i, test in enumerate(tests):
    where = [*parts, 'correlations', i]
    test = _require_mapping(test, where)
    _require_str(_require_key(test, 'pair', where), [*where, 'pair'])
    _require_int(_require_key(test, 'n', where), [*where, 'n'])
    for key in ('rho', 'p'):
      if test.get(key) is not None:
        _require_number(test[key], [*where, key])
    _check_interval(test.get('interval'), [*where, 'interval'])


def _check_ci(value: Any, parts: Sequence[str | int], *, optional: bool = False) -> None:
  """``{'value': number, 'interval': [lo, hi]}`` (a NaN bound: no interval); ``None`` only
  when ``optional``."""
  if value is None and optional:
    return
  entry = _require_mapping(value, parts)
  _require_number(_require_key(entry, 'value', parts), [*parts, 'value'])
  lo, hi = _require_numbers(_require_key(entry, 'interval', parts), [*parts, 'interval'], length=2)
  if math.isfinite(lo) and math.isfinite(hi) and lo > hi:
    _fail([*parts, 'interval'], f'expected [lo, hi] with lo <= hi, got [{lo!r}, {hi!r}]')


SAE_ROW_NUMBERS = ('depth', 'mmcs_null', 'divergence', 'mean_density', 'dead_fraction')
SAE_ROW_CIS = ('mmcs', 'one_to_one', 'l0', 'fvu')


def _check_sae(sae: Any) -> None:
  """The ``sae`` entry (``peft_jax.report.sae.results_entry`` of the arena's ``sae`` stage)."""
  parts = ['sae']
  sae = _require_mapping(sae, parts)
  _require_str(_require_key(sae, 'base', parts), [*parts, 'base'])
  ranks = _require_sequence(_require_key(sae, 'ranks', parts), [*parts, 'ranks'])
  if not ranks:
    _fail([*parts, 'ranks'], 'expected a non-empty list of LoRA ranks')
  ranks = [_require_int(r, [*parts, 'ranks', i]) for i, r in enumerate(ranks)]
  sites = _require_strings(_require_key(sae, 'sites', parts), [*parts, 'sites'])
  if not sites:
    _fail([*parts, 'sites'], 'expected a non-empty list of site names')
  rows = _require_sequence(_require_key(sae, 'rows', parts), [*parts, 'rows'])
  if not rows:
    _fail([*parts, 'rows'], 'expected one row per (adapter, site), got none')
  for i, row in enumerate(rows):
    where = [*parts, 'rows', i]
    row = _require_mapping(row, where)
    for key in ('adapter', 'site', 'kind'):
      _require_str(_require_key(row, key, where), [*where, key])
    rank = _require_int(_require_key(row, 'rank', where), [*where, 'rank'])
    if rank not in ranks:
      _fail([*where, 'rank'], f'rank {rank} is not in {_path([*parts, "ranks"])} ({ranks})')
    if row['site'] not in sites:
      _fail([*where, 'site'], f'site {row["site"]!r} is not in {_path([*parts, "sites"])}')
    _require_int(_require_key(row, 'layer', where), [*where, 'layer'])
    for key in SAE_ROW_NUMBERS:
      _require_number(_require_key(row, key, where), [*where, key])
    for key in SAE_ROW_CIS:
      _check_ci(_require_key(row, key, where), [*where, key])
    if row.get('reseed_mmcs') is not None:
      _require_number(row['reseed_mmcs'], [*where, 'reseed_mmcs'])
    _check_ci(row.get('ce_loss_recovered'), [*where, 'ce_loss_recovered'], optional=True)
  base_rows = _require_sequence(_require_key(sae, 'base_rows', parts), [*parts, 'base_rows'])
  for i, row in enumerate(base_rows):
    where = [*parts, 'base_rows', i]
    row = _require_mapping(row, where)
    _require_str(_require_key(row, 'site', where), [*where, 'site'])
    _require_number(_require_key(row, 'mean_density', where), [*where, 'mean_density'])
    for key in ('fvu', 'l0'):
      _check_ci(_require_key(row, key, where), [*where, key])
    _check_ci(row.get('reseed_mmcs'), [*where, 'reseed_mmcs'], optional=True)
  _check_claims(_require_key(sae, 'claims', parts), [*parts, 'claims'])


def _check_rlvr_scores(value: Any, parts: list) -> None:
  scores = _require_mapping(value, parts)
  for key in ('target', 'general', 'forget'):
    _require_number(_require_key(scores, key, parts), [*parts, key])
  found = _require_mapping(_require_key(scores, 'intervals', parts), [*parts, 'intervals'])
  for key in ('target', 'general'):
    _check_interval(found.get(key), [*parts, 'intervals', key])


def _check_passk_curve(value: Any, parts: list, ks: list, *, step: bool) -> None:
  curve = _require_mapping(value, parts)
  n = _require_int(_require_key(curve, 'num_samples', parts), [*parts, 'num_samples'])
  if n < max(ks):
    _fail([*parts, 'num_samples'], f'expected >= the largest k ({max(ks)}), got {n}')
  counts = _require_sequence(_require_key(curve, 'counts', parts), [*parts, 'counts'])
  if not counts:
    _fail([*parts, 'counts'], 'expected one correct-sample count per prompt, got none')
  for i, c in enumerate(counts):
    if not 0 <= _require_int(c, [*parts, 'counts', i]) <= n:
      _fail([*parts, 'counts', i], f'expected a count in [0, {n}], got {c}')
  _require_numbers(_require_key(curve, 'curve', parts), [*parts, 'curve'], length=len(ks))
  if step:
    _require_int(_require_key(curve, 'step', parts), [*parts, 'step'])


def _check_rlvr(rlvr: Any) -> None:
  """The ``rlvr`` entry (``peft_jax.report.rlvr.results_entry`` of the arena's RLVR phase)."""
  parts = ['rlvr']
  rlvr = _require_mapping(rlvr, parts)
  _require_str(_require_key(rlvr, 'target_task', parts), [*parts, 'target_task'])
  _require_int(_require_key(rlvr, 'resamples', parts), [*parts, 'resamples'])
  methods = _require_mapping(_require_key(rlvr, 'methods', parts), [*parts, 'methods'])
  if not methods:
    _fail([*parts, 'methods'], 'expected at least one method')
  for name, row in methods.items():
    where = [*parts, 'methods', name]
    row = _require_mapping(row, where)
    for key in ('sft', 'rlvr'):
      _check_rlvr_scores(_require_key(row, key, where), [*where, key])
    if row.get('difference') is not None:
      difference = _require_mapping(row['difference'], [*where, 'difference'])
      for key in ('target', 'forget'):
        _check_difference(
          _require_key(difference, key, [*where, 'difference']), [*where, 'difference', key]
        )
    _require_str(_require_key(row, 'forgets', where), [*where, 'forgets'])
    for key in ('steps', 'early_step'):
      _require_int(_require_key(row, key, where), [*where, key])
    if row.get('skipped_steps') is not None:
      skipped = _require_int(row['skipped_steps'], [*where, 'skipped_steps'])
      if not 0 <= skipped <= row['steps']:
        _fail([*where, 'skipped_steps'], f'expected 0 to {row["steps"]} (steps), got {skipped}')
    _require_number(_require_key(row, 'train_time_s', where), [*where, 'train_time_s'])
    steps = _require_sequence(_require_key(row, 'step', where), [*where, 'step'])
    _require_numbers(
      _require_key(row, 'reward_mean', where), [*where, 'reward_mean'], length=len(steps)
    )
  passk = _require_mapping(_require_key(rlvr, 'passk', parts), [*parts, 'passk'])
  where = [*parts, 'passk']
  ks = _require_sequence(_require_key(passk, 'ks', where), [*where, 'ks'])
  if not ks:
    _fail([*where, 'ks'], 'expected a non-empty list of k')
  ks = [_require_int(k, [*where, 'ks', i]) for i, k in enumerate(ks)]
  if min(ks) < 1 or ks != sorted(set(ks)):
    _fail([*where, 'ks'], f'expected increasing k >= 1, got {ks}')
  _check_passk_curve(_require_key(passk, 'base', where), [*where, 'base'], ks, step=False)
  curves = _require_mapping(_require_key(passk, 'methods', where), [*where, 'methods'])
  for name, entry in curves.items():
    at = [*where, 'methods', name]
    entry = _require_mapping(entry, at)
    _check_passk_curve(_require_key(entry, 'sft', at), [*at, 'sft'], ks, step=False)
    for key in ('early', 'late'):
      _check_passk_curve(_require_key(entry, key, at), [*at, key], ks, step=True)
    _check_difference(_require_key(entry, 'late_minus_early', at), [*at, 'late_minus_early'])
    _require_str(_require_key(entry, 'late_vs_early', at), [*at, 'late_vs_early'])


def _check_timing(timing: Any) -> None:
  parts = ['timing']
  timing = _require_mapping(timing, parts)
  _require_number(_require_key(timing, 'total_s', parts), [*parts, 'total_s'])
  stages = _require_mapping(_require_key(timing, 'stages', parts), [*parts, 'stages'])
  for stage, seconds in stages.items():
    _require_number(seconds, [*parts, 'stages', stage])


def validate_results(results: Mapping[str, Any]) -> None:
  """Checks `results` against the report schema.

  Args:
    results: the arena results dict (schema in the `peft_jax.report` docstring).

  Raises:
    ResultsSchemaError: (a `KeyError`) naming the first missing or malformed key path, e.g.
      ``missing required key results['methods']['lora']['forget']``.
  """
  results = _require_mapping(results, [])
  _require_str(_require_key(results, 'title', []), ['title'])
  _require_str(_require_key(results, 'created', []), ['created'])
  _require_str(_require_key(results, 'target_task', []), ['target_task'])
  _require_strings(_require_key(results, 'general_tasks', []), ['general_tasks'])
  _require_strings(_require_key(results, 'target_tasks', []), ['target_tasks'])
  base = _require_mapping(_require_key(results, 'base', []), ['base'])
  _check_scores(base, ['base'])
  methods = _require_mapping(_require_key(results, 'methods', []), ['methods'])
  if not methods:
    _fail(['methods'], 'expected at least one method')
  for name, method in methods.items():
    _require_str(name, ['methods', name])
    _check_method(name, method)

  if results.get('disel_gates') is not None:
    _check_disel_gates(results['disel_gates'])
  if results.get('drift') is not None:
    _check_drift(results['drift'])
  if results.get('drift_study') is not None:
    _check_drift_study(results['drift_study'])
  if results.get('claims') is not None:
    _check_claims(results['claims'])
  if results.get('sae') is not None:
    _check_sae(results['sae'])
  if results.get('rlvr') is not None:
    _check_rlvr(results['rlvr'])
  if results.get('bootstrap') is not None:
    bootstrap = _require_mapping(results['bootstrap'], ['bootstrap'])
    _require_int(_require_key(bootstrap, 'resamples', ['bootstrap']), ['bootstrap', 'resamples'])
    _require_int(_require_key(bootstrap, 'seed', ['bootstrap']), ['bootstrap', 'seed'])
    _require_number(
      _require_key(bootstrap, 'confidence', ['bootstrap']), ['bootstrap', 'confidence']
    )
  if results.get('config') is not None:
    _require_mapping(results['config'], ['config'])
  if results.get('versions') is not None:
    versions = _require_mapping(results['versions'], ['versions'])
    for key, value in versions.items():
      _require_str(value, ['versions', key])
  if results.get('timing') is not None:
    _check_timing(results['timing'])


def is_finite(value: Any) -> bool:
  """True for a real, finite number (NaN and inf render as "n/a")."""
  return _is_number(value) and math.isfinite(float(value))
