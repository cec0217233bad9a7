"""Metric writers: JSONL (one object per logged step) and TensorBoard events, process 0 only."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax


class MetricWriter:
  """Appends ``{'step': s, name: value, ...}`` lines to ``<workdir>/metrics.jsonl`` and writes the
  same scalars as TensorBoard events under ``<workdir>/tensorboard``."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._file = None
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # heavy import, process 0 only
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self.path, 'a')
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._file.write(json.dumps({'step': int(step), **values}) + '\n')
    self._file.flush()
    for name, value in values.items():
      self._tb.add_scalar(name, value, int(step))

  def close(self) -> None:
    if self.active:
      self._file.close()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The JSONL metrics of a run; a step logged again after a resume replaces the earlier line."""
  by_step: dict[int, dict] = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      by_step[row['step']] = row
  return [by_step[s] for s in sorted(by_step)]
