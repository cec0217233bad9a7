"""Capability drift: does an adapter's nominal label predict where it actually gains?

Definitions (docs/METRICS.md, "Capability drift"; reconstructed from the abstract of
arXiv:2603.22379, labelled so):

* Cross-task matrix ``M[a, t]``: score of model ``a`` (base or an adapter) on task ``t``, in the
  metric's native units (0-1).
* Realised gain ``Δ[a, t] = M[a, t] - M[base, t]``.
* Nominal target ``τ(a)``: the task the adapter's label names; nominal gain ``Δ[a, τ(a)]``.
* Drift score ``drift(a) = max_{t != τ(a)} Δ[a, t] - Δ[a, τ(a)]`` (positive: gains landed
  off-target).
* Flags (the measured profile disagrees with the label):
  ``nominal_not_improved``: ``Δ[a, τ(a)] <= 0``;
  ``off_target_exceeds_nominal``: some ``t != τ(a)`` with ``|Δ[a, t]| > Δ[a, τ(a)]``.
* Configuration sensitivity: per label, across adapters of that label (seeds, ranks, base
  models...), the mean / std (population, ddof 0) / min / max of the nominal gain and of the
  drift, and whether the nominal gain changes sign.

The analysis is pure functions of score dicts; :func:`evaluate_adapters` is the driver that
produces those dicts with the harness, and :func:`write_drift_outputs` writes JSON, CSV and a
heatmap PNG.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from peft_jax.adapters.inject import merge as merge_tree
from peft_jax.common import files
from peft_jax.evals import harness
from peft_jax.evals.tasks import Task
from peft_jax.hub.peft_format import load_adapter


@dataclasses.dataclass(frozen=True)
class AdapterScores:
  """Scores of one adapter.

  Attributes:
    name: unique adapter name (row of the matrix).
    label: the capability the adapter claims (e.g. ``'instruction'``).
    nominal_task: the task that label names (``τ(a)``); must be one of the scored tasks.
    scores: ``{task: score}`` in native units, the same tasks as the base.
    config_id: optional seed/config identifier (for configuration sensitivity).
  """

  name: str
  label: str
  nominal_task: str
  scores: Mapping[str, float]
  config_id: Optional[str] = None


def delta_matrix(
  base_scores: Mapping[str, float], adapters: Sequence[AdapterScores]
) -> tuple[list[str], list[str], np.ndarray]:
  """``Δ[a, t] = M[a, t] - M[base, t]``.

  Returns:
    ``(adapter_names, task_names, deltas [A, T] float64)``; tasks in the base's order.
  Raises:
    ValueError: no adapters, duplicate names, or an adapter whose tasks differ from the base's.
  """
  if not adapters:
    raise ValueError('delta_matrix needs at least one adapter')
  names = [a.name for a in adapters]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'adapter names must be unique; repeated: {duplicates}')
  task_names = list(base_scores)
  for adapter in adapters:
    if set(adapter.scores) != set(task_names):
      raise ValueError(
        f'adapter {adapter.name!r} has scores for {sorted(adapter.scores)} but the '
        f'base has {sorted(task_names)}; they must match'
      )
    if adapter.nominal_task not in base_scores:
      raise ValueError(
        f'adapter {adapter.name!r}: nominal task {adapter.nominal_task!r} is not a '
        f'scored task; tasks are {task_names}'
      )
  deltas = np.array(
    [[float(a.scores[t]) - float(base_scores[t]) for t in task_names] for a in adapters],
    dtype=np.float64,
  )
  return names, task_names, deltas


def _summary_stats(values: np.ndarray) -> dict[str, float]:
  return {
    'mean': float(np.mean(values)),
    'std': float(np.std(values)),
    'min': float(np.min(values)),
    'max': float(np.max(values)),
  }


def drift_report(
  base_scores: Mapping[str, float], adapters: Sequence[AdapterScores]
) -> dict[str, Any]:
  """The full drift analysis as a JSON-ready dict.

  Returns:
    ``{'tasks': [...], 'base': {...}, 'adapters': [{'name', 'label', 'nominal_task',
    'config_id', 'scores', 'deltas': {task: Δ}, 'nominal_gain', 'off_target_gains': {t: Δ > 0},
    'off_target_losses': {t: Δ < 0}, 'drift', 'flags': [...], 'flagged'}], 'by_label':
    {label: {'adapters', 'nominal_gain': stats, 'drift': stats, 'num_nominal_gain_positive',
    'num_nominal_gain_nonpositive', 'sign_change', 'num_flagged'}}}``.
  """
  _, task_names, deltas = delta_matrix(base_scores, adapters)
  rows = []
  for adapter, row in zip(adapters, deltas):
    nominal_index = task_names.index(adapter.nominal_task)
    nominal_gain = float(row[nominal_index])
    off_target = {
      t: float(d) for i, (t, d) in enumerate(zip(task_names, row)) if i != nominal_index
    }
    flags = []
    if nominal_gain <= 0:
      flags.append('nominal_not_improved')
    if any(abs(d) > nominal_gain for d in off_target.values()):
      flags.append('off_target_exceeds_nominal')
    rows.append(
      {
        'name': adapter.name,
        'label': adapter.label,
        'nominal_task': adapter.nominal_task,
        'config_id': adapter.config_id,
        'scores': {t: float(adapter.scores[t]) for t in task_names},
        'deltas': dict(zip(task_names, map(float, row))),
        'nominal_gain': nominal_gain,
        'off_target_gains': {t: d for t, d in off_target.items() if d > 0},
        'off_target_losses': {t: d for t, d in off_target.items() if d < 0},
        # With a single task there is no off-target change; drift is then defined as 0 - gain.
        'drift': (max(off_target.values()) if off_target else 0.0) - nominal_gain,
        'flags': flags,
        'flagged': bool(flags),
      }
    )
  by_label: dict[str, Any] = {}
  for label in sorted({a.label for a in adapters}):
    members = [r for r in rows if r['label'] == label]
    gains = np.array([r['nominal_gain'] for r in members])
    positive = int(np.sum(gains > 0))
    by_label[label] = {
      'adapters': [r['name'] for r in members],
      'nominal_gain': _summary_stats(gains),
      'drift': _summary_stats(np.array([r['drift'] for r in members])),
      'num_nominal_gain_positive': positive,
      'num_nominal_gain_nonpositive': len(members) - positive,
      'sign_change': bool(0 < positive < len(members)),
      'num_flagged': sum(r['flagged'] for r in members),
    }
  return {
    'tasks': task_names,
    'base': {t: float(base_scores[t]) for t in task_names},
    'adapters': rows,
    'by_label': by_label,
  }


def drift_csv(report: Mapping[str, Any]) -> str:
  """CSV text: the base row, then one row per adapter.

  Columns: ``adapter, label, config_id, nominal_task``, then ``score/<task>`` (the model's score
  ``M[a, t]``) and ``delta/<task>`` (``Δ[a, t]``) per task, then ``nominal_gain, drift, flags``.
  The base row has its scores, deltas of exactly 0 (``Δ[base, t] = 0`` by definition) and empty
  label, nominal task, gain, drift and flags (it has no nominal label).
  """
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  tasks = list(report['tasks'])
  writer.writerow(
    ['adapter', 'label', 'config_id', 'nominal_task']
    + [f'score/{t}' for t in tasks]
    + [f'delta/{t}' for t in tasks]
    + ['nominal_gain', 'drift', 'flags']
  )
  writer.writerow(
    ['base', '', '', '']
    + [repr(float(report['base'][t])) for t in tasks]
    + [repr(0.0) for _ in tasks]
    + ['', '', '']
  )
  for row in report['adapters']:
    writer.writerow(
      [row['name'], row['label'], row['config_id'] or '', row['nominal_task']]
      + [repr(float(row['scores'][t])) for t in tasks]
      + [repr(float(row['deltas'][t])) for t in tasks]
      + [repr(row['nominal_gain']), repr(row['drift']), ';'.join(row['flags'])]
    )
  return buffer.getvalue()


def write_drift_outputs(report: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Writes ``drift.json`` and ``drift.csv``; returns their paths. The heatmap is the report's
  (``peft_jax.report.write_drift_heatmap``), drawn by the launcher or the arena report."""
  paths = {'json': os.path.join(out_dir, 'drift.json'), 'csv': os.path.join(out_dir, 'drift.csv')}
  files.write_json(paths['json'], report, indent=2, sort_keys=True)
  files.write_text(paths['csv'], drift_csv(report))
  return paths


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  """An adapter to evaluate: a PEFT directory (or an adapted param tree) with its label."""

  name: str
  label: str
  nominal_task: str
  adapter: Any  # a PEFT adapter directory path, or an adapted param tree
  config_id: Optional[str] = None


def evaluate_adapters(
  model: Any,
  base_params: Any,
  tokenizer: Any,
  tasks: Sequence[Task],
  adapters: Sequence[AdapterSpec],
  *,
  key: jax.Array,
  batch_size: int,
  out_dir: Optional[str] = None,
  generate_fn_for: Optional[Callable[[Any], harness.GenerateFn]] = None,
  merge: bool = False,
) -> tuple[dict[str, float], list[AdapterScores], dict[str, Any]]:
  """Evaluates the base and every adapter on ``tasks`` with the harness, then the drift report.

  Args:
    model, base_params, tokenizer: the base model.
    tasks: the tasks (each adapter's ``nominal_task`` must be one of their names).
    adapters: what to evaluate; ``adapter`` is a PEFT directory (loaded with
      :func:`peft_jax.hub.peft_format.load_adapter` onto ``base_params``) or a ready tree.
    key, batch_size: as in :func:`peft_jax.evals.harness.evaluate` (same key for every model, so
      sampling noise is shared).
    out_dir: if set, per-model harness outputs go to ``<out_dir>/<name>/`` and the drift files
      to ``out_dir``.
    generate_fn_for: ``params -> generate_fn`` (default: :func:`harness.model_generate_fn`).
    merge: fold each adapter into plain weights before generating (same outputs, faster).
  Returns:
    ``(base_scores, adapter_scores, report)``; scores are each task's main metric (0-1).
  """
  names = [spec.name for spec in adapters]
  if 'base' in names or len(set(names)) != len(names):
    raise ValueError(
      f"adapter names must be unique and not 'base' (its output folder); got {names}"
    )
  if generate_fn_for is None:

    def generate_fn_for(params):
      return harness.model_generate_fn(model, params, tokenizer)

  def scores_of(params, name):
    summary = harness.evaluate(
      model,
      params,
      tokenizer,
      tasks,
      key=key,
      batch_size=batch_size,
      out_dir=os.path.join(out_dir, name) if out_dir else None,
      generate_fn=generate_fn_for(params),
    )
    return {task: result['score'] for task, result in summary['tasks'].items()}

  base_scores = scores_of(base_params, 'base')
  adapter_scores = []
  for spec in adapters:
    tree = spec.adapter
    if isinstance(tree, (str, os.PathLike)):
      tree = load_adapter(base_params, os.fspath(tree))
    if merge:
      tree = merge_tree(tree)
    adapter_scores.append(
      AdapterScores(
        name=spec.name,
        label=spec.label,
        nominal_task=spec.nominal_task,
        scores=scores_of(tree, spec.name),
        config_id=spec.config_id,
      )
    )
  report = drift_report(base_scores, adapter_scores)
  if out_dir:
    write_drift_outputs(report, out_dir)
  return base_scores, adapter_scores, report
