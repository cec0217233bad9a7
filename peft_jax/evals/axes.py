"""PEFT-Arena's two axes, defined once (docs/METRICS.md, "Target, General, Forget").

On the 0-1 scale of the task scores:

* ``Target``  = mean main score of the ``'target'`` tasks;
* ``General`` = mean main score of the ``'general'`` tasks (IFEval instruction-level strict
  accuracy, BBH's unweighted subtask mean, NQ-open exact match);
* ``Forget``  = ``General_base − General_ft`` and ``Target gain`` = ``Target_ft − Target_base``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from peft_jax.evals import harness

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
  generate_fn, tasks: Sequence[Any], batch_size: int, out_dir: Optional[str] = None
) -> dict[str, Any]:
  """Scores of ``generate_fn`` on ``tasks``: ``{'tasks': {name: score}, 'target', 'general'}``."""
  summary = harness.evaluate(
    None,
    None,
    None,
    tasks,
    key=jax.random.key(0),
    batch_size=batch_size,
    out_dir=out_dir,
    generate_fn=generate_fn,
  )
  scores = {name: float(r['score']) for name, r in summary['tasks'].items()}
  return {'tasks': scores, **axes_from_scores(tasks, scores)}
