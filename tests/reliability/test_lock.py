"""The workdir lock: two runs never write one workdir; a dead run's lock is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from reliability_support import REPO, TIMEOUT_S, finish, train_args, wait_for

from peft_jax.common import lock


def test_two_concurrent_runs_one_refused(launcher, reference_run, tmp_path):
  _, data = reference_run
  workdir = str(tmp_path / 'run')
  args = train_args(workdir, data, '--config.throttle_s=1.0', every=10)
  first = launcher.popen(args)
  # The second starts while the first holds the lock (it takes it before anything else).
  wait_for(lambda: os.path.exists(os.path.join(workdir, '.lock')), first, what='the lock file')
  owner = lock.read_owner(workdir)
  second = launcher.popen(args)
  code2, _, err2 = finish(second)
  assert code2 == 1, err2[-2000:]
  assert owner['pid'] == first.pid and owner['host'] == socket.gethostname()
  assert f'workdir {workdir} is locked by pid {first.pid} on host {owner["host"]}' in err2
  assert 'Traceback' not in err2
  metrics = os.path.join(workdir, 'metrics.jsonl')
  wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics), first, what='a step')
  first.send_signal(signal.SIGTERM)  # done with it: stop it gracefully (it checkpoints)
  code1, _, err1 = finish(first)
  assert code1 == 128 + signal.SIGTERM, err1[-2000:]
  # Only the first run wrote: each step logged once, in order; no lock left behind.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps == list(range(1, len(steps) + 1)) and steps, steps
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(steps[-1])]
  assert not os.path.exists(os.path.join(workdir, '.lock'))


_HOLD = """
import sys, time
from peft_jax.common import lock
lock.acquire(sys.argv[1])
print('locked', flush=True)
time.sleep(60)
"""


def _holder(workdir):
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(
    [sys.executable, '-c', _HOLD, workdir],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline().strip() == 'locked', proc.stderr.read()
  return proc


def test_live_lock_refused_stale_lock_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  holder = _holder(workdir)
  try:
    with pytest.raises(lock.WorkdirLocked, match=rf'locked by pid {holder.pid} on host'):
      lock.acquire(workdir)
    holder.send_signal(signal.SIGKILL)  # dies without releasing: the file stays behind
    holder.wait(timeout=TIMEOUT_S)
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
  assert lock.read_owner(workdir)['pid'] == holder.pid
  caplog.set_level('WARNING')
  with lock.workdir_lock(workdir):
    assert lock.read_owner(workdir)['pid'] == os.getpid()
    with lock.workdir_lock(workdir):  # re-entrant within a process
      assert lock.is_held(workdir)
    assert lock.is_held(workdir)
  assert not lock.is_held(workdir)
  warning = ' '.join(r.getMessage() for r in caplog.records)
  assert f'taking over a stale lock left by pid {holder.pid}' in warning
  assert 'is no longer running' in warning
  assert not os.path.exists(os.path.join(workdir, '.lock'))


LAUNCHERS = {
  'arena': ['--config=configs/arena/quick.py', '--workdir={w}'],
  'evaluate': ['--config=configs/eval/suite.py:{w}/suite', '--workdir={w}'],
  'pretrain': ['--config=configs/pretrain/tiny.py', '--workdir={w}'],
  'make_suite': ['--out_dir={w}'],
  'analyze': ['--workdir={w}'],
}


def test_every_launcher_refuses_a_locked_workdir(tmp_path):
  """Each launcher that writes a workdir takes its lock first (run side by side; launch.train:
  test_two_concurrent_runs_one_refused)."""
  workdir = str(tmp_path / 'run')
  holder = _holder(workdir)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  try:
    procs = {
      name: subprocess.Popen(
        [sys.executable, '-m', f'launch.{name}', *(a.format(w=workdir) for a in args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for name, args in LAUNCHERS.items()
    }
    for name, proc in procs.items():
      code, _, err = finish(proc)
      assert code == 1, (name, err[-2000:])
      assert f'WorkdirLocked: workdir {workdir} is locked by pid {holder.pid}' in err, (name, err)
  finally:
    holder.kill()
    holder.wait()
  assert os.listdir(workdir) == ['.lock']  # nothing but the dead holder's lock file


def test_failed_start_leaves_no_workdir(tmp_path):
  workdir = str(tmp_path / 'fresh')
  with pytest.raises(ValueError):
    with lock.workdir_lock(workdir):
      raise ValueError('validation failed')
  assert not os.path.exists(workdir)  # the lock created it, nothing else was written
