"""peak_lr=1e30: the loss stays finite (ln V) while parameters explode; the divergence guard
stops the run at the first exploding step, before it is checkpointed, naming the last good
checkpoint by number or saying that none exists."""

import math
import os

import numpy as np
import pytest
from reliability_support import failure_line, restore_checkpoint, train_args

from peft_jax.train import guard as guard_lib

HUGE_LR = '--config.optimizer.peak_lr=1e30'


def _checkpoint_steps(workdir):
  path = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def test_huge_lr_stops_before_a_ruined_checkpoint(launcher, reference_run, tmp_path):
  _, data = reference_run
  workdir = str(tmp_path / 'run')
  code, _, err = launcher.run(train_args(workdir, data, HUGE_LR, every=1))
  assert code == 1, err[-2000:]
  last = failure_line(err)
  # Step 0 runs at lr 0 (warmup) and is checkpointed; step 1's update explodes (its norm
  # overflows float32: non-finite; a finite explosion trips config.guard.max_update_norm).
  assert last.startswith('DivergenceError: step 1: update_norm is '), last
  assert f'The last good checkpoint (step 1) in {workdir}/checkpoints/1 is intact' in last
  assert _checkpoint_steps(workdir) == [1]
  state, _ = restore_checkpoint(workdir, 1)
  assert all(np.isfinite(v).all() for v in state.values())


def test_huge_lr_with_no_checkpoint_says_none_exists(launcher, reference_run, tmp_path):
  _, data = reference_run
  workdir = str(tmp_path / 'run')
  code, _, err = launcher.run(train_args(workdir, data, HUGE_LR, every=10))
  assert code == 1, err[-2000:]
  last = failure_line(err)
  assert last.startswith('DivergenceError: step 1: update_norm'), last
  assert 'No checkpoint exists yet' in last and 'step None' not in last
  assert _checkpoint_steps(workdir) == []


def test_guard_non_finite_and_thresholds():
  guard = guard_lib.DivergenceGuard({'max_update_norm': 0, 'max_param_norm': 0}, '/w/checkpoints')
  healthy = {'loss': 4.1, 'grad_norm': 0.0, 'update_norm': 1e20, 'param_norm': 3.0}
  assert guard.problem(healthy) is None  # no bounds: only non-finite values stop
  finite_loss = dict(healthy, param_norm=math.inf)  # the loss sits at ln V, params are gone
  with pytest.raises(
    guard_lib.DivergenceError,
    match=r'step 2: param_norm is inf \(non-finite\).*checkpoint \(step 2\) in '
    r'/w/checkpoints/2 is intact',
  ):
    guard.check(2, finite_loss, last_good_step=2)
  bounded = guard_lib.DivergenceGuard({'max_grad_norm': 10.0}, '/w/checkpoints')
  assert 'max_grad_norm=10' in bounded.problem(dict(healthy, grad_norm=11.0))
  assert isinstance(guard_lib.DivergenceError('x'), FloatingPointError)
  with pytest.raises(ValueError, match=r"unknown keys \['max_lr'\]"):
    guard_lib.DivergenceGuard({'max_lr': 1.0})
