"""PEFT-Arena's two axes, defined once (docs/METRICS.md, "Target, General, Forget").

On the 0-1 scale of the task scores:

* ``Target``  = mean main score of the ``'target'`` tasks;
* ``General`` = mean main score of the ``'general'`` tasks (IFEval instruction-level strict
  accuracy, BBH's unweighted subtask mean, NQ-open exact match);
* ``Forget``  = ``General_base − General_ft`` and ``Target gain`` = ``Target_ft − Target_base``.

Every score comes with a 95% percentile-bootstrap interval (docs/METRICS.md, "Intervals";
``peft_jax.evals.intervals``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from peft_jax.evals import harness, intervals

TARGET_KIND, GENERAL_KIND = 'target', 'general'
KINDS = (TARGET_KIND, GENERAL_KIND)


def axes_from_scores(tasks: Sequence[Any], scores: Mapping[str, float]) -> dict[str, float]:
  """``{'target': mean target score, 'general': mean general score}`` (NaN for no such task)."""
  out = {}
  for kind in KINDS:
    values = [scores[t.name] for t in tasks if t.kind == kind]
    out[kind] = float(np.mean(values)) if values else float('nan')
  return out


def forget(general_base: float, general_ft: float) -> float:
  """``General_base − General_ft`` (positive: general capability lost)."""
  return float(general_base) - float(general_ft)


def target_gain(target_base: float, target_ft: float) -> float:
  """``Target_ft − Target_base``."""
  return float(target_ft) - float(target_base)


def evaluate_scores(
  generate_fn,
  tasks: Sequence[Any],
  batch_size: int,
  out_dir: Optional[str] = None,
  *,
  resamples: int = intervals.DEFAULT_RESAMPLES,
  seed: int = intervals.DEFAULT_SEED,
  loglik_fn=None,
) -> dict[str, Any]:
  """Scores of ``generate_fn`` on ``tasks``, with their bootstrap intervals (``loglik_fn``:
  the same model's log-likelihoods, for perplexity tasks; ``peft_jax.evals.loglik``).

  Returns:
    ``{'tasks': {name: score}, 'target': float, 'general': float, 'per_example': {name:
    unit_stats dict with 'kind', or None}, 'n': {name: examples}, 'intervals': {'tasks': {name:
    [lo, hi] or None}, 'target': [lo, hi] or None, 'general': ...}, 'bootstrap': {'resamples',
    'seed', 'confidence'}}``. ``per_example`` is what paired intervals of differences between
    two such results need (``peft_jax.evals.intervals.paired_intervals``).
  """
  summary = harness.evaluate(
    None,
    None,
    None,
    tasks,
    key=jax.random.key(0),
    batch_size=batch_size,
    out_dir=out_dir,
    generate_fn=generate_fn,
    loglik_fn=loglik_fn,
  )
  scores = {name: float(r['score']) for name, r in summary['tasks'].items()}
  per_example = {name: r['per_example'] for name, r in summary['tasks'].items()}
  return {
    'tasks': scores,
    **axes_from_scores(tasks, scores),
    'per_example': per_example,
    'n': {name: int(r['num_examples']) for name, r in summary['tasks'].items()},
    'intervals': intervals.score_intervals(
      per_example,
      target_tasks=[t.name for t in tasks if t.kind == TARGET_KIND],
      general_tasks=[t.name for t in tasks if t.kind == GENERAL_KIND],
      resamples=resamples,
      seed=seed,
    ),
    'bootstrap': {'resamples': resamples, 'seed': seed, 'confidence': intervals.CONFIDENCE},
  }
