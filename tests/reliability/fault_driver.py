"""Runs ``launch.train`` with one injected fault (used by the reliability tests).

  python fault_driver.py FAULT -- <launch.train flags>

FAULT is one of:
  metrics_enospc:K     the K-th and later writes to metrics.jsonl raise ENOSPC (disk full);
  metrics_stall        writes to metrics.jsonl block forever (a hung filesystem);
  checkpoint_enospc:S  orbax's write of checkpoint step S raises ENOSPC, in its background
                       commit thread, as a full disk does.
"""

import builtins
import errno
import os
import re
import runpy
import sys
import threading


def _enospc(path):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class _FaultyFile:
  """A real file whose writes fail (or block) from the K-th on."""

  def __init__(self, file, fail_from, stall):
    self._file, self._fail_from, self._stall, self._writes = file, fail_from, stall, 0

  def write(self, text):
    self._writes += 1
    if self._stall:
      threading.Event().wait()
    if self._fail_from is not None and self._writes >= self._fail_from:
      raise _enospc(self._file.name)
    return self._file.write(text)

  def __getattr__(self, name):
    return getattr(self._file, name)


def _patch_metrics(fail_from=None, stall=False):
  from peft_jax.train import metrics  # pylint: disable=g-import-not-at-top

  def faulty_open(path, *args, **kwargs):
    file = builtins.open(path, *args, **kwargs)
    if str(path).endswith('metrics.jsonl'):
      return _FaultyFile(file, fail_from, stall)
    return file

  metrics.open = faulty_open  # shadows the builtin inside peft_jax.train.metrics only


def _patch_checkpoint(step):
  # pylint: disable-next=g-import-not-at-top
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

  original = handler.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access
  pattern = re.compile(rf'/checkpoints/{step}\.orbax-checkpoint-tmp')

  async def save_fn(self, x, directory):
    if pattern.search(str(directory)):
      raise _enospc(directory)
    return await original(self, x, directory)

  handler.JsonCheckpointHandler._save_fn = save_fn  # pylint: disable=protected-access


def main():
  fault, separator, *args = sys.argv[1:]
  assert separator == '--', sys.argv
  kind, _, value = fault.partition(':')
  if kind == 'metrics_enospc':
    _patch_metrics(fail_from=int(value))
  elif kind == 'metrics_stall':
    _patch_metrics(stall=True)
  elif kind == 'checkpoint_enospc':
    _patch_checkpoint(int(value))
  else:
    raise SystemExit(f'unknown fault {fault!r}')
  sys.argv = ['launch.train', *args]
  runpy.run_module('launch.train', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
