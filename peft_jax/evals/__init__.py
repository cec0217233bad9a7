"""Evaluation: tasks, scorers (numeric match, IFEval, BBH, NQ-open, pass@k), the harness with
PEFT-Arena's Target / General / Forget axes, and the capability-drift matrix."""

from peft_jax.evals.drift import AdapterScores
from peft_jax.evals.drift import AdapterSpec
from peft_jax.evals.drift import delta_matrix
from peft_jax.evals.drift import drift_csv
from peft_jax.evals.drift import drift_report
from peft_jax.evals.drift import evaluate_adapters
from peft_jax.evals.drift import write_drift_outputs
from peft_jax.evals.harness import evaluate
from peft_jax.evals.harness import evaluate_task
from peft_jax.evals.axes import forget
from peft_jax.evals.axes import target_gain
from peft_jax.evals.harness import model_generate_fn
from peft_jax.evals.harness import summarize
from peft_jax.evals.harness import truncate_at_stop
from peft_jax.evals.ifeval import INSTRUCTIONS as IFEVAL_INSTRUCTIONS
from peft_jax.evals.ifeval import ifeval_accuracies
from peft_jax.evals.ifeval import score_ifeval_example
from peft_jax.evals.scorers import extract_bbh_answer
from peft_jax.evals.scorers import extract_boxed
from peft_jax.evals.scorers import extract_gsm8k_reference
from peft_jax.evals.scorers import extract_last_number
from peft_jax.evals.scorers import extract_numeric_answer
from peft_jax.evals.scorers import mean_pass_at_k
from peft_jax.evals.scorers import normalize_squad
from peft_jax.evals.scorers import numeric_match
from peft_jax.evals.scorers import pass_at_k
from peft_jax.evals.scorers import score_bbh
from peft_jax.evals.scorers import score_nq
from peft_jax.evals.scorers import score_numeric
from peft_jax.evals.tasks import Example
from peft_jax.evals.tasks import Scorer
from peft_jax.evals.tasks import Task
from peft_jax.evals.tasks import load_task
from peft_jax.evals.runner import run_drift
from peft_jax.evals.runner import run_evaluation

__all__ = [
    "AdapterScores", "AdapterSpec", "delta_matrix", "drift_csv", "drift_report",
    "evaluate_adapters", "write_drift_outputs", "evaluate", "evaluate_task",
    "forget", "model_generate_fn", "summarize", "target_gain", "truncate_at_stop",
    "IFEVAL_INSTRUCTIONS",
    "ifeval_accuracies", "score_ifeval_example", "extract_bbh_answer", "extract_boxed",
    "extract_gsm8k_reference", "extract_last_number", "extract_numeric_answer", "mean_pass_at_k",
    "normalize_squad", "numeric_match", "pass_at_k", "score_bbh", "score_nq", "score_numeric",
    "Example", "Scorer", "Task", "load_task", "run_drift", "run_evaluation",
]
