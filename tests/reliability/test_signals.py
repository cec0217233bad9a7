"""SIGTERM (a preempted job) or SIGINT mid-run: the current step is checkpointed, the process
exits 128 + signal with a message, and rerunning the same command resumes bit-identical."""

import json
import os
import signal

import pytest
from reliability_support import (
  REFERENCE_STEPS,
  assert_same_checkpoint,
  failure_line,
  finish,
  losses,
  train_args,
  wait_for,
)


def _logged_steps(workdir):
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return [json.loads(line)['step'] for line in f if line.endswith('\n')]
  except FileNotFoundError:
    return []


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_current_step_and_resume_is_bit_identical(
  signum, launcher, reference_run, tmp_path
):
  reference, data = reference_run
  workdir = str(tmp_path / 'run')
  # every_steps=5: the checkpoint the signal writes is not one the schedule would have written.
  proc = launcher.popen(train_args(workdir, data, '--config.throttle_s=0.25', every=5))
  wait_for(lambda: len(_logged_steps(workdir)) >= 2, proc, what='two logged steps')
  proc.send_signal(signum)
  code, _, err = finish(proc)
  assert code == 128 + signum, err[-2000:]
  last = failure_line(err)
  name = signal.Signals(signum).name
  assert last.startswith(f'Interrupted: {name}: training stopped after step '), last
  step = int(last.split('after step ')[1].split(';')[0])
  assert 2 <= step < 5, last
  assert f'checkpoint {step} saved in {workdir}/checkpoints/{step}' in last
  assert 'Rerun the same command to resume' in last
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [str(step)]
  if step in REFERENCE_STEPS:  # the reference also holds this step
    assert_same_checkpoint(reference, workdir, step)
  if signum == signal.SIGINT:
    return  # the resume below is the same for either signal; SIGTERM runs it
  code, out, err = finish(launcher.popen(train_args(workdir, data, every=5)))
  assert code == 0, err[-2000:]
  assert f'steps {step}..6 done' in out
  assert_same_checkpoint(reference, workdir, 6)
  assert losses(workdir) == losses(reference)
