"""Where a model name points: a local directory, or ``'bundled:NAME'`` inside the package."""

from __future__ import annotations

import os
import pathlib

_BUNDLED_DIR = pathlib.Path(__file__).resolve().parent.parent / 'bundled'


def resolve_path(path: str | os.PathLike) -> pathlib.Path:
  """A local directory; ``'bundled:NAME'`` -> ``peft_jax/bundled/NAME/``."""
  text = str(path)
  if text.startswith('bundled:'):
    name = text[len('bundled:') :]
    resolved = _BUNDLED_DIR / name
    if not resolved.is_dir():
      available = sorted(p.name for p in _BUNDLED_DIR.iterdir()) if _BUNDLED_DIR.is_dir() else []
      raise FileNotFoundError(
        f'bundled model {name!r} not found at {resolved}; bundled models: {available or "none"}'
      )
    return resolved
  resolved = pathlib.Path(text)
  if not resolved.is_dir():
    raise FileNotFoundError(f'checkpoint directory {resolved} does not exist')
  return resolved
