"""Metric writers: JSONL (one object per logged step) and TensorBoard events, process 0 only.

Writes never block the training loop: ``write`` hands the scalars to one background thread
through a bounded queue and returns. A write that fails there (``ENOSPC`` on a full disk, a
read-only or vanished directory) fails the run at the next ``write``/``close`` with a
:class:`MetricWriteError` naming the file; a writer that makes no progress for ``timeout_s``
(a hung filesystem) fails it too, instead of hanging the loop forever.

TensorBoard event files are written here directly (TFRecord framing around ``Event`` protocol
buffers holding ``simple_value`` scalars, the format TensorBoard reads), which keeps the
import of a TensorBoard writer library, and its worker thread, out of every training run.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import socket
import struct
import threading
import time
from typing import Any, Mapping, Optional

import jax

from peft_jax.common.errors import RunFailure


class MetricWriteError(RunFailure, RuntimeError):
  """A metric file could not be written (disk full, unwritable, or stalled)."""


def _write_error(path: str, error: BaseException) -> MetricWriteError:
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return MetricWriteError(
      f'disk full / cannot write {path}: {error}. The run stops; free '
      'space (or use another --workdir) and rerun to resume from the last '
      'complete checkpoint.'
    )
  return MetricWriteError(
    f'cannot write {path}: {type(error).__name__}: {error}. The run stops; '
    'rerun to resume from the last complete checkpoint.'
  )


# ------------------------------------------------------------------------------------------------
# TensorBoard event files: TFRecord framing with masked CRC-32C, Event/Summary protobufs.
# ------------------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
  return _varint((number << 3) | wire_type)


def _delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(
  wall_time: float,
  step: Optional[int] = None,
  *,
  file_version: Optional[str] = None,
  scalars: Optional[Mapping[str, float]] = None,
) -> bytes:
  """A serialized ``tensorboard Event``: wall_time (1, double), step (2, int64), file_version
  (3, string), summary (5) with one ``Value{tag (1), simple_value (2, float)}`` per scalar."""
  out = _field(1, 1) + struct.pack('<d', wall_time)
  if step is not None:
    out += _field(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _delimited(3, file_version.encode())
  if scalars:
    summary = b''.join(
      _delimited(1, _delimited(1, tag.encode()) + _field(2, 5) + struct.pack('<f', value))
      for tag, value in scalars.items()
    )
    out += _delimited(5, summary)
  return out


def frame_record(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack('<Q', len(data))
  return (
    length + struct.pack('<I', _masked_crc(length)) + data + struct.pack('<I', _masked_crc(data))
  )


# ------------------------------------------------------------------------------------------------
# The writer
# ------------------------------------------------------------------------------------------------

_CLOSE = object()


class MetricWriter:
  """Appends ``{'step': s, name: value, ...}`` lines to ``<workdir>/metrics.jsonl`` and writes the
  same scalars as TensorBoard events under ``<workdir>/tensorboard``, from a background thread.

  Args:
    workdir: the run directory.
    queue_size: logged steps that may wait for the writer thread.
    timeout_s: seconds the writer thread may go without finishing a pending write before the
      run is failed as stalled (and the longest ``close`` waits).
  Raises (from ``__init__``, ``write`` or ``close``):
    MetricWriteError: naming the file ("disk full / cannot write <path>: ...").
  """

  def __init__(self, workdir: str, *, queue_size: int = 64, timeout_s: float = 60.0):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.timeout_s = float(timeout_s)
    self._error: Optional[MetricWriteError] = None
    self._closed = False
    if not self.active:
      return
    tb_dir = os.path.join(workdir, 'tensorboard')
    self.events_path = os.path.join(
      tb_dir, f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    )
    current = self.path
    try:
      os.makedirs(tb_dir, exist_ok=True)
      self._file = open(self.path, 'a')
      current = self.events_path
      self._events = open(self.events_path, 'ab')
      self._events.write(frame_record(encode_event(time.time(), file_version='brain.Event:2')))
      self._events.flush()
    except OSError as error:
      raise _write_error(current, error) from error
    self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
    self._pending = 0  # steps put and not yet written
    self._pending_lock = threading.Lock()
    self._last_progress = time.monotonic()
    self._thread = threading.Thread(target=self._run, name='MetricWriter', daemon=True)
    self._thread.start()

  # ---- writer thread -----------------------------------------------------------------------
  def _write_one(self, step: int, values: Mapping[str, float]) -> None:
    current = self.path
    try:
      self._file.write(json.dumps({'step': int(step), **values}) + '\n')
      self._file.flush()
      current = self.events_path
      self._events.write(frame_record(encode_event(time.time(), step, scalars=values)))
      self._events.flush()
    except Exception as error:  # pylint: disable=broad-except
      self._error = _write_error(current, error)

  def _run(self) -> None:
    while True:
      item = self._queue.get()
      if item is _CLOSE:
        for f, path in ((self._file, self.path), (self._events, self.events_path)):
          try:
            f.close()
          except Exception as error:  # pylint: disable=broad-except
            if self._error is None:
              self._error = _write_error(path, error)
        self._last_progress = time.monotonic()
        return
      if self._error is None:  # after a failure, drain without writing: put never blocks
        self._write_one(*item)
      with self._pending_lock:
        self._pending -= 1
        self._last_progress = time.monotonic()

  # ---- caller side -------------------------------------------------------------------------
  def _check(self) -> None:
    if self._error is not None:
      raise self._error
    with self._pending_lock:
      stalled = self._pending and time.monotonic() - self._last_progress > self.timeout_s
    if stalled:
      raise MetricWriteError(
        f'cannot write {self.path}: the metric writer made no progress for more than '
        f'{self.timeout_s:.0f} s with {self._pending} step(s) pending (disk full or a hung '
        'filesystem?). The run stops; rerun to resume from the last complete checkpoint.'
      )

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.active:
      return
    self._check()
    values = {k: float(v) for k, v in scalars.items()}
    with self._pending_lock:
      if not self._pending:
        self._last_progress = time.monotonic()  # the stall clock runs only while work waits
      self._pending += 1
    try:
      self._queue.put((step, values), timeout=self.timeout_s)
    except queue.Full:
      with self._pending_lock:
        self._pending -= 1
      self._check()
      raise MetricWriteError(
        f'cannot write {self.path}: {self._queue.maxsize} logged steps are '
        f'waiting and none was written for {self.timeout_s:.0f} s'
      ) from None

  def close(self) -> None:
    """Writes what is pending (waiting at most ``timeout_s``) and closes the files."""
    if not self.active or self._closed:
      return
    self._closed = True
    try:
      self._queue.put(_CLOSE, timeout=self.timeout_s)
    except queue.Full:
      pass
    self._thread.join(self.timeout_s)
    if self._error is not None:
      raise self._error
    if self._thread.is_alive():
      raise MetricWriteError(
        f'cannot write {self.path}: the metric writer did not finish its '
        f'pending writes within {self.timeout_s:.0f} s (disk full or a hung '
        'filesystem?)'
      )


def read_metrics(workdir: str) -> list[dict]:
  """The JSONL metrics of a run; a step logged again after a resume replaces the earlier line.

  A last line cut short (a run killed mid-write) is skipped; any other malformed line is an
  error naming the file and line.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  by_step: dict[int, dict] = {}
  with open(path) as f:
    lines = f.readlines()
  for number, line in enumerate(lines, start=1):
    try:
      row = json.loads(line)
    except ValueError as error:
      if number == len(lines) and not line.endswith('\n'):
        break
      raise ValueError(
        f'{path} line {number}: not a JSON object ({error}); found {line[:80]!r}'
      ) from error
    by_step[row['step']] = row
  return [by_step[s] for s in sorted(by_step)]
