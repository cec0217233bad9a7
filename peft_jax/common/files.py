"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every writer goes through a temporary file in the destination directory (same filesystem), is
flushed and fsync'd, then moved into place with ``os.replace``. A directory is built under a
temporary name beside its destination and swapped in by rename (:func:`replace_directory`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable


def json_default(value: Any) -> Any:
  """``json.dump`` fallback for NumPy / JAX scalars and arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top  (keeps this module import-light)

  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if hasattr(value, '__array__'):
    return np.asarray(value).tolist()
  raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def atomic_write(
  path: str | os.PathLike, write: Callable[[Any], Any], *, binary: bool = False
) -> str:
  """Writes ``path`` through ``write(stream)`` on a temporary file, then ``os.replace``.

  Args:
    path: destination file; its directory is created when missing.
    write: fills the open temporary stream.
    binary: binary stream (else UTF-8 text with ``\\n`` newlines).
  Returns:
    ``path`` as a string.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.basename(path))
  try:
    mode = {'mode': 'wb'} if binary else {'mode': 'w', 'encoding': 'utf-8', 'newline': '\n'}
    with os.fdopen(handle, **mode) as stream:
      write(stream)
      stream.flush()
      os.fsync(stream.fileno())
    os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path


def write_text(path: str | os.PathLike, text: str) -> str:
  """``text`` (UTF-8) to ``path``, atomically."""
  return atomic_write(path, lambda stream: stream.write(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
  """``data`` to ``path``, atomically."""
  return atomic_write(path, lambda stream: stream.write(data), binary=True)


def write_json(
  path: str | os.PathLike, obj: Any, *, indent: int = 1, sort_keys: bool = False
) -> str:
  """``obj`` as JSON (NumPy values converted), atomically."""
  return write_text(
    path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default) + '\n'
  )


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any], *, sort_keys: bool = False) -> str:
  """One JSON object per line, atomically."""
  return write_text(
    path, ''.join(json.dumps(row, sort_keys=sort_keys, default=json_default) + '\n' for row in rows)
  )


def temporary_directory_for(path: str | os.PathLike) -> str:
  """A fresh, empty directory beside ``path`` (same filesystem) named ``.<name>.tmp-<pid>``."""
  path = os.path.abspath(os.fspath(path))
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  temporary = os.path.join(parent, f'.{name}.tmp-{os.getpid()}')
  if os.path.exists(temporary):
    shutil.rmtree(temporary)
  os.makedirs(temporary)
  return temporary


def replace_directory(temporary: str | os.PathLike, path: str | os.PathLike) -> str:
  """Moves the finished directory ``temporary`` to ``path`` (replacing an old one).

  The old directory is first renamed aside, then removed, so ``path`` is at every moment either
  the complete old directory, absent, or the complete new one.
  """
  temporary, path = os.fspath(temporary), os.fspath(path)
  if os.path.exists(path):
    aside = f'{temporary}.old'
    os.replace(path, aside)
    os.replace(temporary, path)
    shutil.rmtree(aside)
  else:
    os.replace(temporary, path)
  return path
