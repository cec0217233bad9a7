"""Evaluation: tasks, scorers (numeric match, IFEval, BBH, NQ-open, pass@k), the harness with
PEFT-Arena's Target / General / Forget axes, and the capability-drift matrix."""

from peft_jax.evals.axes import forget, target_gain
from peft_jax.evals.drift import (
  AdapterScores,
  AdapterSpec,
  delta_matrix,
  drift_csv,
  drift_report,
  evaluate_adapters,
  write_drift_outputs,
)
from peft_jax.evals.harness import (
  evaluate,
  evaluate_task,
  model_generate_fn,
  summarize,
  truncate_at_stop,
)
from peft_jax.evals.ifeval import INSTRUCTIONS as IFEVAL_INSTRUCTIONS
from peft_jax.evals.ifeval import ifeval_accuracies, score_ifeval_example
from peft_jax.evals.runner import run_drift, run_evaluation
from peft_jax.evals.scorers import (
  extract_bbh_answer,
  extract_boxed,
  extract_gsm8k_reference,
  extract_last_number,
  extract_numeric_answer,
  mean_pass_at_k,
  normalize_squad,
  numeric_match,
  pass_at_k,
  score_bbh,
  score_nq,
  score_numeric,
)
from peft_jax.evals.tasks import Example, Scorer, Task, load_task

__all__ = [
  'AdapterScores',
  'AdapterSpec',
  'delta_matrix',
  'drift_csv',
  'drift_report',
  'evaluate_adapters',
  'write_drift_outputs',
  'evaluate',
  'evaluate_task',
  'forget',
  'model_generate_fn',
  'summarize',
  'target_gain',
  'truncate_at_stop',
  'IFEVAL_INSTRUCTIONS',
  'ifeval_accuracies',
  'score_ifeval_example',
  'extract_bbh_answer',
  'extract_boxed',
  'extract_gsm8k_reference',
  'extract_last_number',
  'extract_numeric_answer',
  'mean_pass_at_k',
  'normalize_squad',
  'numeric_match',
  'pass_at_k',
  'score_bbh',
  'score_nq',
  'score_numeric',
  'Example',
  'Scorer',
  'Task',
  'load_task',
  'run_drift',
  'run_evaluation',
]
