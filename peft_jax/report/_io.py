"""Atomic file writes for the report: a temporary file in the target directory, then os.replace."""

from __future__ import annotations

import os
import tempfile


def atomic_write(path: str | os.PathLike, write, *, binary: bool = False) -> str:
  """Writes `path` so that readers see the old or the new file, never half.

  Args:
    path: destination file; its directory is created when missing.
    write: ``write(stream)`` fills the open temporary file.
    binary: open the temporary file in binary mode (else UTF-8 text, ``\n`` newlines).

  Returns:
    `path` as a string.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                       suffix=os.path.splitext(path)[1])
  try:
    mode = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": "\n"}
    with os.fdopen(handle, **mode) as stream:
      write(stream)
      stream.flush()
      os.fsync(stream.fileno())
    # mkstemp creates 0600 files; a report is meant to be read by others.
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
  """Writes `text` (UTF-8) to `path` atomically (see :func:`atomic_write`)."""
  return atomic_write(path, lambda stream: stream.write(text))
