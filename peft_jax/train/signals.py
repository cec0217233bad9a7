"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint it, exit non-zero.

SIGTERM is what a preempted TPU/GPU job receives (then SIGKILL after a grace period). While the
training loop runs inside :class:`StopOnSignal`, the first SIGTERM or SIGINT only sets a flag;
the loop checks it after each step, saves a checkpoint at the current step (waiting until it is
complete) and raises :class:`Interrupted`, which launchers turn into exit code ``128 + signal``
(143 for SIGTERM, 130 for SIGINT) with a message. Rerunning the same command resumes from that
checkpoint, bit-identical to a run never stopped. A second signal while stopping restores the
default handler and re-delivers it (a second Ctrl-C stops at once).

With several processes the flag is agreed by all of them every step (any process stopping stops
all), since the save is collective.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import numpy as np

from peft_jax.common.errors import RunFailure

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(RunFailure, RuntimeError):
  """Training stopped on a signal after checkpointing the current step."""

  def __init__(self, message: str, signum: int, step: int):
    super().__init__(message)
    self.signum, self.step = signum, step

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopOnSignal:
  """Context manager that turns SIGTERM/SIGINT into a stop request (see module docstring).

  Outside the main thread (where Python cannot install handlers) it does nothing.
  """

  def __init__(self, signals=STOP_SIGNALS):
    self.signals = tuple(signals)
    self.received: Optional[int] = None
    self._previous: dict[int, object] = {}

  def _handler(self, signum, frame):
    del frame
    if self.received is not None:  # second signal: give up on stopping gracefully
      for s, previous in self._previous.items():
        signal.signal(s, previous)
      self._previous = {}
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = signum
    sys.stderr.write(
      f'\n{signal.Signals(signum).name} received: finishing the current step, '
      'saving a checkpoint, then exiting (send it again to stop at once).\n'
    )
    sys.stderr.flush()

  def install(self) -> 'StopOnSignal':
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def uninstall(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}

  def __enter__(self) -> 'StopOnSignal':
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def requested(self) -> Optional[int]:
    """The signal that asked to stop (agreed across processes), or ``None``."""
    import jax  # pylint: disable=g-import-not-at-top

    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(np.int32(self.received or 0))
    received = int(np.max(flags))
    return received or None

  def interrupted(self, signum: int, step: int, checkpoint_dir: str) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(
      f'{name}: training stopped after step {step}; checkpoint {step} saved in '
      f'{os.path.join(checkpoint_dir, str(step))}. Rerun the same command to '
      'resume from it.',
      signum,
      step,
    )
