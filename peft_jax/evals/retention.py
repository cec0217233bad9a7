"""Retention sets and above-chance subtasks: what a base model can do, chosen from its own
per-example records, so that forgetting is measured where there was something to forget
(docs/REAL.md, "Retention").

* :func:`retained_ids` — the ids of the examples the base answered correctly.
* :func:`write_retention_set` — those rows of the task file, in file order, as a task file of the
  same format, plus ``<out>.json`` saying where it came from.
* :func:`retention_spec` — both in one step: the base's rows of a task -> the retention task's
  spec (what the arena's base-evaluation stage computes once).
* :func:`above_chance_subtasks` — the BBH subtasks whose base accuracy is above chance by more
  than its bootstrap noise (the lower end of the 95% interval above the chance level).

"Rows" are the harness's per-example records (``peft_jax.evals.harness.evaluate_task``, the
``<task>.jsonl`` files it writes): dicts with ``'meta'`` (holding ``'id'`` or ``'subtask'``) and
``'scores'``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from peft_jax.common import files
from peft_jax.evals import intervals


def retained_ids(
  rows: Sequence[Mapping[str, Any]], *, metric: str = 'accuracy', threshold: float = 0.5
) -> list[str]:
  """Ids (``meta['id']``) of the rows whose ``scores[metric]`` exceeds ``threshold``, in order."""
  out = []
  for i, row in enumerate(rows):
    meta, scores = row.get('meta') or {}, row.get('scores') or {}
    if 'id' not in meta:
      raise KeyError(f"record {i} has no meta['id']: a retention set needs item ids")
    if metric not in scores:
      raise KeyError(
        f'record {i} (id {meta["id"]!r}) has no score {metric!r}; has {sorted(scores)}'
      )
    if float(scores[metric]) > threshold:
      out.append(str(meta['id']))
  if len(set(out)) != len(out):
    raise ValueError('retained ids repeat: the records hold the same item twice')
  return out


def write_retention_set(
  task_path: str, ids: Sequence[str], out_path: str, *, source: Optional[Mapping] = None
) -> int:
  """Writes the rows of JSONL ``task_path`` whose ``id`` is in ``ids`` to ``out_path``.

  Also writes ``out_path + '.json'``: ``{'task_path', 'num_items', 'num_source_items', 'ids',
  **source}``. Returns the number of items; every id must occur in the task file.
  """
  if not ids:
    raise ValueError(f'the retention set of {task_path} is empty: the base answered no item')
  wanted = set(str(i) for i in ids)
  kept, seen = [], set()
  with open(task_path, encoding='utf-8') as f:
    lines = [line for line in f if line.strip()]
  for number, line in enumerate(lines, start=1):
    row = json.loads(line)
    if 'id' not in row:
      raise KeyError(f'{task_path}:{number}: the row has no "id"')
    if str(row['id']) in wanted:
      kept.append(line if line.endswith('\n') else line + '\n')
      seen.add(str(row['id']))
  missing = sorted(wanted - seen)
  if missing:
    raise KeyError(f'{task_path} lacks the retained ids {missing[:5]} ({len(missing)} in all)')
  files.write_text(out_path, ''.join(kept))
  files.write_json(
    out_path + '.json',
    {
      'task_path': os.path.abspath(task_path),
      'num_items': len(kept),
      'num_source_items': len(lines),
      'ids': [json.loads(line)['id'] for line in kept],
      **dict(source or {}),
    },
    indent=1,
  )
  return len(kept)


def retention_spec(
  spec: Mapping[str, Any],
  rows: Sequence[Mapping[str, Any]],
  out_path: str,
  *,
  name: Optional[str] = None,
  metric: str = 'accuracy',
  source: Optional[Mapping] = None,
) -> dict[str, Any]:
  """The retention task of ``spec`` from the base's ``rows`` of it: writes the file, returns the
  spec (same type and settings, ``path`` = ``out_path``, ``name`` = ``<name>_retention``, no
  ``limit``: the rows already are the evaluated items)."""
  ids = retained_ids(rows, metric=metric)
  base_name = spec.get('name') or spec['type']
  write_retention_set(
    spec['path'], ids, out_path, source=dict(source or {}, from_task=base_name, metric=metric)
  )
  out = {k: v for k, v in dict(spec).items() if k != 'limit'}
  out.update(name=name or f'{base_name}_retention', path=out_path)
  return out


def above_chance_subtasks(
  rows: Sequence[Mapping[str, Any]],
  chance: Mapping[str, float],
  *,
  metric: str = 'accuracy',
  resamples: int = intervals.DEFAULT_RESAMPLES,
  seed: int = intervals.DEFAULT_SEED,
) -> dict[str, dict[str, Any]]:
  """Per subtask (``meta['subtask']``): ``{'accuracy', 'interval', 'chance', 'n', 'above'}``,
  ``above`` when the lower end of the accuracy's 95% bootstrap interval exceeds ``chance``."""
  by_subtask: dict[str, list[float]] = {}
  for i, row in enumerate(rows):
    subtask = (row.get('meta') or {}).get('subtask')
    if subtask is None:
      raise KeyError(f"record {i} has no meta['subtask']")
    by_subtask.setdefault(subtask, []).append(float(row['scores'][metric]))
  unknown = sorted(set(by_subtask) - set(chance))
  if unknown:
    raise KeyError(f'no chance level for subtasks {unknown}; given {sorted(chance)}')
  out = {}
  for subtask, values in sorted(by_subtask.items()):
    units = intervals.parse_units(intervals.unit_stats(values))
    replicates = intervals.estimate(
      units, intervals.resample_indices(units, resamples, intervals.task_rng(seed, subtask))
    )
    interval = intervals.percentile_interval(replicates)
    out[subtask] = {
      'accuracy': float(np.mean(values)),
      'interval': interval,
      'chance': float(chance[subtask]),
      'n': len(values),
      'above': bool(interval is not None and interval[0] > float(chance[subtask])),
    }
  return out
