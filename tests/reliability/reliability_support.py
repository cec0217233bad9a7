"""Shared fixtures and helpers of the reliability tests: real ``launch.train`` processes on real
files. Imported by this unique name (every test directory has a conftest, so ``from conftest
import ...`` would pick whichever comes first on sys.path).

Every subprocess gets ``PYTHONPATH`` = this checkout (so a fresh clone tests its own code), a
hard timeout (a hang fails the test), and one persistent JAX compilation cache per session (the
tiny run's step compiles once for the whole directory instead of once per process).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fault_driver.py')
TIMEOUT_S = 120  # per process: a hang fails; generous for 2 parallel pytest workers on 2 cores
TOTAL_STEPS, EVERY = 6, 2
REFERENCE_STEPS = [3, 4, 5, 6]  # the checkpoints reference_run keeps

# The training tests' data fixture (64 {"prompt", "completion"} rows), reused as is.
_spec = importlib.util.spec_from_file_location(
  'train_conftest', os.path.join(REPO, 'tests', 'train', 'conftest.py')
)
_train_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train_conftest)
data_path = _train_conftest.data_path


@pytest.fixture(scope='session')
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('jax_cache'))


def train_args(workdir, data, *extra, steps=TOTAL_STEPS, every=EVERY):
  return [
    '--config=configs/train/tiny.py:lora',
    f'--workdir={workdir}',
    f'--config.data.path={data}',
    f'--config.total_steps={steps}',
    f'--config.checkpoint.every_steps={every}',
    '--config.progress_bar=False',
    *extra,
  ]


class Launcher:
  """Starts ``launch.train`` (optionally under ``fault_driver.py FAULT``) as a subprocess."""

  def __init__(self, cache_dir):
    self.env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHONPATH=REPO,
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )

  def popen(self, args, fault=None):
    command = (
      [sys.executable, DRIVER, fault, '--'] if fault else [sys.executable, '-m', 'launch.train']
    )
    return subprocess.Popen(
      command + list(args),
      cwd=REPO,
      env=self.env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )

  def run(self, args, fault=None, timeout=TIMEOUT_S):
    """``(returncode, stdout, stderr)``; a process past ``timeout`` is killed and fails."""
    return finish(self.popen(args, fault), timeout)


def finish(proc, timeout=TIMEOUT_S):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f'process hung (> {timeout} s); stderr tail:\n{err[-3000:]}')
  return proc.returncode, out, err


@pytest.fixture(scope='session')
def launcher(jax_cache):
  return Launcher(jax_cache)


@pytest.fixture(scope='session')
def reference_run(launcher, tmp_path_factory):
  """An uninterrupted tiny run, checkpointed every step, the last four kept (3, 4, 5, 6); tests
  copy it and never modify it."""
  rows = tmp_path_factory.mktemp('ref_data') / 'train.jsonl'
  with open(rows, 'w') as f:
    for i in range(64):
      f.write(
        json.dumps({'prompt': f'What is {i} plus {i % 7}? ', 'completion': f'{i + i % 7}.'}) + '\n'
      )
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  code, out, err = launcher.run(train_args(workdir, rows, '--config.checkpoint.keep=4', every=1))
  assert code == 0, err[-3000:]
  return workdir, str(rows)


_FAILURE_TYPES = (
  'DivergenceError',
  'CheckpointSaveError',
  'CheckpointCorruptError',
  'MetricWriteError',
  'WorkdirLocked',
  'Interrupted',
)


def failure_line(err):
  """The launcher's one-line report of a RunFailure (background threads such as orbax's may log
  more after it, so it need not be the last line)."""
  lines = [l for l in err.splitlines() if l.startswith(tuple(t + ': ' for t in _FAILURE_TYPES))]
  assert lines, f'no failure report in stderr:\n{err[-3000:]}'
  return lines[-1]


def restore_checkpoint(workdir, step):
  """``({leaf name: array}, data state)`` of checkpoint ``step``, read with plain orbax."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
    )
  finally:
    manager.close()
  return {k: np.asarray(v) for k, v in restored['state'].items()}, dict(restored['data'])


def assert_same_checkpoint(workdir_a, workdir_b, step):
  state_a, data_a = restore_checkpoint(workdir_a, step)
  state_b, data_b = restore_checkpoint(workdir_b, step)
  assert data_a == data_b
  assert sorted(state_a) == sorted(state_b)
  for name, value in state_a.items():
    np.testing.assert_array_equal(state_b[name], value, err_msg=name)


def losses(workdir):
  from peft_jax.train import read_metrics  # pylint: disable=g-import-not-at-top

  return [row['loss'] for row in read_metrics(workdir)]


def wait_for(predicate, proc, timeout=TIMEOUT_S, what='condition'):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      pytest.fail(
        f'process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}'
      )
    if time.time() > deadline:
      proc.send_signal(signal.SIGKILL)
      pytest.fail(f'no {what} within {timeout} s')
    time.sleep(0.05)
