"""Training: state, SFT loss, optimizer, the jitted sharded step, checkpoints and the loop."""

from peft_jax.train.checkpoint import (
  RESUME_SAFE_KEYS,
  StateCheckpointer,
  TrajectoryWriter,
  check_or_write_config,
  load_trajectory,
)
from peft_jax.train.config import default_config, validate_config
from peft_jax.train.loss import make_sft_loss, masked_cross_entropy_sum, next_token_targets
from peft_jax.train.metrics import MetricWriter, read_metrics
from peft_jax.train.optimizer import (
  PeakLRState,
  PeakSchedule,
  decay_mask,
  lr_multipliers,
  lr_schedule,
  make_optimizer,
  peak_lr_of,
  scale_by_tree,
  with_peak_lr,
)
from peft_jax.train.setup import ShardedTraining, TrainingPlan, setup_training
from peft_jax.train.step import (
  TrainState,
  init_train_state,
  jit_train_step,
  make_train_step,
  per_layer_norms,
  train_state_shardings,
)
from peft_jax.train.trainer import (
  ProgramCache,
  TrainResult,
  build_model,
  make_method,
  program_key,
  train,
)
