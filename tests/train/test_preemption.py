"""A run killed with SIGKILL mid-training and relaunched with the same command ends bit-identical
(params, optimizer state, step, rng, iterator position, every logged loss) to an uninterrupted
run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from peft_jax.train import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _restore_checkpoint(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
  )
  manager.close()
  return {k: np.asarray(v) for k, v in restored['state'].items()}, dict(restored['data'])


def _launch(workdir, data_path, throttle):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.Popen(
    [
      sys.executable,
      '-m',
      'launch.train',
      '--config=configs/train/tiny.py:lora',
      f'--workdir={workdir}',
      f'--config.data.path={data_path}',
      '--config.total_steps=12',
      '--config.checkpoint.every_steps=3',
      f'--config.throttle_s={throttle}',
      '--config.progress_bar=False',
      '--config.mesh_shape=(2,2,2)',
    ],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )


def _finish(proc, timeout=240):
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, out.decode()[-3000:]


def test_sigkill_and_rerun_is_bit_identical(data_path, tmp_path):
  reference, killed = str(tmp_path / 'reference'), str(tmp_path / 'killed')
  _finish(_launch(reference, data_path, throttle=0.2))
  proc = _launch(killed, data_path, throttle=0.2)
  try:
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(killed, 'checkpoints', '6')):
      assert proc.poll() is None, 'run ended before it could be killed'
      assert time.time() < deadline, 'no checkpoint 6 within the time limit'
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.isdir(os.path.join(killed, 'checkpoints', '12'))
  _finish(_launch(killed, data_path, throttle=0.2))  # the same command resumes
  final_reference, data_reference = _restore_checkpoint(reference, 12)
  final_killed, data_killed = _restore_checkpoint(killed, 12)
  assert data_killed == data_reference
  assert sorted(final_killed) == sorted(final_reference)
  for name, value in final_reference.items():
    np.testing.assert_array_equal(final_killed[name], value, err_msg=name)
  losses_reference = [r['loss'] for r in read_metrics(reference)]
  losses_killed = [r['loss'] for r in read_metrics(killed)]
  assert losses_killed == losses_reference and len(losses_reference) == 12
