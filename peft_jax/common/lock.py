"""An OS-level lock on a run directory, so two runs never write one workdir.

``<workdir>/.lock`` is locked with ``fcntl.flock(LOCK_EX | LOCK_NB)`` and holds the owner's pid,
host and start time as JSON. The kernel drops a flock when its process dies (SIGKILL included),
so a lock file whose flock can be taken is stale by construction: it is taken over with a
warning naming the dead owner. A live owner makes :class:`WorkdirLocked` say who holds it.

The lock is re-entrant within a process (a launcher and the library function it calls may both
take it), and released when the last holder leaves. On release the lock file is removed, and so
is the workdir itself when the lock created it and nothing else was written (a start that failed
its validation leaves no trace).

  with workdir_lock('/tmp/run'):
    ...write the run...
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Iterator, Optional

from absl import logging

from peft_jax.common.errors import RunFailure

LOCK_FILE = '.lock'

_held: dict[str, '_Held'] = {}
_held_guard = threading.Lock()


class WorkdirLocked(RunFailure, RuntimeError):
  """Another live process holds the workdir lock."""


class _Held:
  def __init__(self, fd: int, path: str, created_dir: bool):
    self.fd, self.path, self.created_dir, self.count = fd, path, created_dir, 1


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_FILE)


def read_owner(workdir: str) -> Optional[dict]:
  """The ``{'pid', 'host', 'started'}`` recorded in the lock file (``None``: none or unreadable)."""
  try:
    with open(lock_path(workdir)) as f:
      text = f.read()
  except OSError:
    return None
  try:
    owner = json.loads(text)
  except ValueError:
    return None
  return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[dict]) -> str:
  if not owner:
    return 'an unknown process (the lock file holds no owner)'
  started = owner.get('started')
  when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)) if started else '?'
  return f'pid {owner.get("pid")} on host {owner.get("host")} (since {when})'


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _acquire(workdir: str) -> _Held:
  created_dir = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      os.close(fd)
      if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise WorkdirLocked(
        f'workdir {workdir} is locked by {_describe(read_owner(workdir))}: another run is '
        f'writing it. Wait for that run to finish, stop it, or use another --workdir. '
        f'(lock file {path})'
      ) from None
    # A holder that was releasing may have unlinked the file between our open and flock: then
    # we hold a lock on a deleted inode and must retry on the current file.
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  previous = os.read(fd, 65536).decode('utf-8', 'replace').strip()
  if previous:
    try:
      owner = json.loads(previous)
    except ValueError:
      owner = None
    host = socket.gethostname()
    if isinstance(owner, dict) and owner.get('host') == host and isinstance(owner.get('pid'), int):
      state = (
        'is no longer running'
        if not _pid_alive(owner['pid'])
        else 'is running but no longer holds the lock'
      )
    else:
      state = 'no longer holds the lock'
    logging.warning(
      'workdir %s: taking over a stale lock left by %s, which %s (it ended '
      'without releasing it, e.g. killed).',
      workdir,
      _describe(owner),
      state,
    )
  record = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()})
  os.ftruncate(fd, 0)
  os.pwrite(fd, record.encode() + b'\n', 0)
  os.fsync(fd)
  return _Held(fd, path, created_dir)


def _release(held: _Held) -> None:
  workdir = os.path.dirname(held.path)
  try:
    os.unlink(held.path)  # while still locked: a waiter re-checks the inode (see _acquire)
  except FileNotFoundError:
    pass
  finally:
    os.close(held.fd)
  if held.created_dir:
    try:
      os.rmdir(workdir)  # only succeeds when the failed start wrote nothing else
    except OSError:
      pass


def acquire(workdir: str) -> str:
  """Takes the lock on ``workdir`` (creating it); returns the absolute workdir. See module doc.

  Raises:
    WorkdirLocked: a live process holds it (names its pid and host).
  """
  workdir = os.path.abspath(workdir)
  with _held_guard:
    if workdir in _held:
      _held[workdir].count += 1
    else:
      _held[workdir] = _acquire(workdir)
  return workdir


def release(workdir: str) -> None:
  workdir = os.path.abspath(workdir)
  with _held_guard:
    held = _held.get(workdir)
    if held is None:
      return
    held.count -= 1
    if held.count == 0:
      del _held[workdir]
      _release(held)


def is_held(workdir: str) -> bool:
  """Whether this process holds the lock on ``workdir``."""
  return os.path.abspath(workdir) in _held


@contextlib.contextmanager
def workdir_lock(workdir: str, *, enabled: bool = True) -> Iterator[str]:
  """Holds the lock on ``workdir`` for the ``with`` block (``enabled=False``: a no-op, e.g. on
  the non-zero processes of a multi-process run, where process 0 holds it for all)."""
  if not enabled:
    yield os.path.abspath(workdir)
    return
  path = acquire(workdir)
  try:
    yield path
  finally:
    release(path)
