"""The report's results dict, assembled from the arena's stage outputs (schema:
``peft_jax.report``). Every number comes from a stage result; nothing is computed here but the
differences the axes define (``peft_jax.evals.axes``) and their paired bootstrap intervals
(``peft_jax.evals.intervals``), which need the base's and a method's per-example statistics
together.

Stage results written before per-example statistics existed still assemble: their entries get
``None`` intervals ("no interval" in the report)."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
from typing import Any, Mapping, Optional, Sequence

import jax

from peft_jax.evals import axes, intervals
from peft_jax.report import claims as claims_lib
from peft_jax.report import figures

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'transformers', 'numpy')


def versions() -> dict[str, str]:
  """Python and package versions, and the devices, of this run."""
  out = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'not installed'
  out['devices'] = f'{jax.device_count()} x {jax.devices()[0].platform}'
  return out


def _score_intervals(ev: Mapping[str, Any], target: str) -> Optional[dict]:
  """``{'target', 'general', 'tasks'}`` intervals of an ``evaluate_scores`` result (the target
  interval is the target task's), or ``None`` for a result without intervals."""
  found = ev.get('intervals')
  if not found:
    return None
  tasks = dict(found.get('tasks') or {})
  return {'target': tasks.get(target), 'general': found.get(axes.GENERAL_KIND), 'tasks': tasks}


def _general_tasks(ev: Mapping[str, Any]) -> list[str]:
  return [t for t, s in (ev.get('per_example') or {}).items() if s and s.get('kind') == 'general']


def paired_entry(
  base: Mapping[str, Any],
  ev: Mapping[str, Any],
  target: str,
  general_tasks: Optional[Sequence[str]] = None,
) -> Optional[dict]:
  """Paired bootstrap intervals of a method's differences from the base (same examples, same
  resample indices): ``{'target_gain', 'forget', 'tasks': {task: ...}}``, each ``{'delta',
  'interval', 'within_noise'}``; ``None`` when either side has no per-example statistics."""
  if not base.get('per_example') or not ev.get('per_example'):
    return None
  settings = base.get('bootstrap') or {}
  return intervals.paired_intervals(
    base['per_example'],
    ev['per_example'],
    target_tasks=[target],
    general_tasks=list(general_tasks) if general_tasks is not None else _general_tasks(base),
    resamples=int(settings.get('resamples', intervals.DEFAULT_RESAMPLES)),
    seed=int(settings.get('seed', intervals.DEFAULT_SEED)),
  )


def method_entry(
  base: Mapping[str, Any],
  stage: Mapping[str, Any],
  target: str,
  general_tasks: Optional[Sequence[str]] = None,
) -> dict:
  """One method's report entry from its train / eval / geometry / paths stage results, and the
  optional ``sweep`` (learning-rate sweep) and ``trajectory`` stage results when present."""
  ev, tr, geo, paths = stage['eval'], stage['train'], stage['geometry'], stage['paths']
  csd_rows = geo['csd']
  entry = {
    'target': ev['tasks'][target],
    'general': ev[axes.GENERAL_KIND],
    'forget': axes.forget(base[axes.GENERAL_KIND], ev[axes.GENERAL_KIND]),
    'tasks': ev['tasks'],
    'n': ev.get('n'),
    'intervals': _score_intervals(ev, target),
    'paired': paired_entry(base, ev, target, general_tasks),
    'trainable_params': tr['trainable_params'],
    'total_params': tr['total_params'],
    'train_time_s': tr['train_time_s'],
    'peak_memory_mb': tr['peak_memory_mb'],
    'train_loss': tr['train_loss'],
    'interpolation': {k: paths['interpolation'][k] for k in ('target', 'general')}
    | {'alpha': paths['alpha']},
    'rewind': {k: paths['rewind'][k] for k in ('target', 'general')}
    | {'alpha': paths['alpha'], 'kind': paths['rewind']['kind']},
    'spectral': {
      'module': geo['chosen_module'],
      'retention': geo['retention'],
      'energy': geo['energy'],
      'summary': geo['spectral'][geo['chosen_module']],
    },
    'activation': {k: geo['activation'][k] for k in ('layers', 'cka', 'procrustes', 'gram')},
    'csd': {
      'modules': [row['module'] for row in csd_rows],
      'general': [row['general/rel'] for row in csd_rows],
      'target': [row['target/rel'] for row in csd_rows],
      'ratio': [row['rel_ratio'] for row in csd_rows],
    },
  }
  for key in ('sweep', 'trajectory'):
    if stage.get(key) is not None:
      entry[key] = dict(stage[key])
  return entry


def drift_entry(drift_result: Mapping[str, Any]) -> dict:
  """The report's ``drift`` entry from a ``peft_jax.evals.drift.drift_report``."""
  adapters = drift_result['adapters']
  return {
    'adapters': [a['name'] for a in adapters],
    'labels': {a['name']: a['label'] for a in adapters},
    'tasks': drift_result['tasks'],
    'delta': [[a['deltas'][t] for t in drift_result['tasks']] for a in adapters],
    'flagged': {a['name']: a['flags'] for a in adapters if a['flags']},
  }


def write_drift_heatmap(drift_result: Mapping[str, Any], path: str) -> str:
  """The capability-drift heatmap (the report's figure) of a drift report, as a PNG."""
  return figures.plot_capability_drift(drift_entry(drift_result), path)


def assemble_results(
  *,
  title: str,
  target: str,
  tasks,
  base: Mapping[str, Any],
  per_method: Mapping[str, Mapping[str, Any]],
  drift_result: Mapping[str, Any],
  gates: Optional[Mapping[str, Any]],
  config: Mapping[str, Any],
  timing: Mapping[str, Any],
) -> dict:
  """The report's results dict (schema: ``peft_jax.report``).

  Args:
    title, target: the study's title and target task name.
    tasks: the evaluated tasks (``.name``, ``.kind``).
    base: the base model's ``evaluate_scores`` result.
    per_method: ``{method: {'train', 'eval', 'geometry', 'paths'}}`` stage results, and
      optionally ``'sweep'`` and ``'trajectory'``.
    drift_result: the drift stage result.
    gates: gate statistics of the gated method (``None`` when none was trained).
    config: the resolved config as a dict.
    timing: ``{'total_s', 'stages'}``.
  """
  general_tasks = [t.name for t in tasks if t.kind == axes.GENERAL_KIND]
  results = {
    'title': title,
    'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'base': {
      'target': base['tasks'][target],
      'general': base[axes.GENERAL_KIND],
      'tasks': base['tasks'],
      'n': base.get('n'),
      'intervals': _score_intervals(base, target),
    },
    'target_task': target,
    'general_tasks': general_tasks,
    'target_tasks': [t.name for t in tasks if t.kind == axes.TARGET_KIND],
    'methods': {m: method_entry(base, r, target, general_tasks) for m, r in per_method.items()},
    'bootstrap': base.get('bootstrap'),
    'drift': drift_entry(drift_result),
    'claims': claims_lib.compute_claims(base, per_method, target, general_tasks),
    'config': dict(config),
    'versions': versions(),
    'timing': dict(timing),
  }
  if gates is not None:
    results['disel_gates'] = gates
  return results
