"""Divergence guard: stops a run whose loss, gradient, update or parameters blow up.

A diverged run can keep its loss finite: with a huge learning rate the parameters overflow to
inf, the gradients underflow to 0 and the loss sits at ln(vocab) while every later checkpoint
holds ruined weights. So each step's ``loss``, ``grad_norm``, ``update_norm`` and ``param_norm``
are checked before the state they describe can be checkpointed: non-finite always stops the run;
so does a value above its configured threshold (``config.guard.max_<metric>``, 0 = no bound).

The error names the step, the metric and its value, and the last good checkpoint by number (or
says that none exists yet), so the user knows what a rerun resumes from.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from peft_jax.common.errors import RunFailure

GUARDED_METRICS = ('loss', 'grad_norm', 'update_norm', 'param_norm')


class DivergenceError(RunFailure, FloatingPointError):
  """The run diverged (non-finite or exploding metric); nothing after the last good step was
  checkpointed."""


class DivergenceGuard:
  """Checks each step's metrics (see module docstring).

  Args:
    thresholds: ``{metric: max value}`` for metrics of :data:`GUARDED_METRICS`; 0 or ``None``
      means non-finite only.
    checkpoint_dir: where the run's checkpoints live (named in the error).
  """

  def __init__(self, thresholds: Optional[Mapping[str, Any]] = None, checkpoint_dir: str = ''):
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - {f'max_{m}' for m in GUARDED_METRICS})
    if unknown:
      raise ValueError(
        f'config.guard has unknown keys {unknown}; valid: {[f"max_{m}" for m in GUARDED_METRICS]}'
      )
    self.limits = {m: float(thresholds.get(f'max_{m}') or 0.0) for m in GUARDED_METRICS}
    for metric, limit in self.limits.items():
      if limit < 0 or math.isnan(limit):
        raise ValueError(f'config.guard.max_{metric}={limit} must be >= 0 (0: no bound)')
    self.checkpoint_dir = checkpoint_dir

  def problem(self, metrics: Mapping[str, Any]) -> Optional[str]:
    """A description of the first bad metric, or ``None`` when the step is healthy."""
    for metric in GUARDED_METRICS:
      if metric not in metrics:
        continue
      value = float(metrics[metric])
      if not math.isfinite(value):
        return f'{metric} is {value} (non-finite)'
      limit = self.limits[metric]
      if limit and value > limit:
        return (
          f'{metric} is {value:.4g}, above the explosion threshold '
          f'config.guard.max_{metric}={limit:.4g}'
        )
    return None

  def check(self, step: int, metrics: Mapping[str, Any], last_good_step: Optional[int]) -> None:
    """Raises :class:`DivergenceError` when step ``step``'s metrics are bad.

    Args:
      step: the 0-based step whose metrics these are.
      metrics: the step's host metrics.
      last_good_step: the newest complete checkpoint (``None``: none yet).
    """
    problem = self.problem(metrics)
    if problem is None:
      return
    if last_good_step is None:
      where = (
        'No checkpoint exists yet (none was written before this step), so there is '
        'nothing to resume: start again in a new workdir with a lower '
        'optimizer.peak_lr (or a longer warmup).'
      )
    else:
      where = (
        f'The last good checkpoint (step {last_good_step}) in '
        f'{os.path.join(self.checkpoint_dir, str(last_good_step))} is intact: rerunning '
        'the same command resumes from it; to change the learning rate, start a new '
        'workdir.'
      )
    raise DivergenceError(
      f'step {step}: {problem}; the run diverged and stops before checkpointing it. {where}'
    )
