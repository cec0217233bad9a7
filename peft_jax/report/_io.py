"""Atomic file writes for the report: a temporary file in the target directory, then os.replace."""

from __future__ import annotations

import os
import tempfile


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
  """Writes `text` (UTF-8) to `path` so that readers see the old or the new file, never half.

  Args:
    path: destination file; its directory is created when missing.
    text: the full contents.

  Returns:
    `path` as a string.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                       suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
      stream.write(text)
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
