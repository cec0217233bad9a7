"""JAX's persistent compilation cache for one job: compiled programs kept on disk, keyed by the
program (its HLO), the compile options, the devices and the JAX/XLA version.

A program compiled again with the same key, later in the same process (a new ``jax.jit`` of
an identical function: a rerun stage, the same evaluation program in another stage) or in a
later run, is read back instead of compiled. :func:`persistent_cache` turns it on for a block,
caching every program that took at least ``min_compile_s`` to compile whatever its size, and
restores the previous settings afterwards.

Safety: JAX writes an entry in place, once (an existing key is never rewritten) and reads
entries without a lock, so a cache folder must have one writer at a time. The arena keeps its
cache inside its workdir (``<workdir>/jax_cache``), which the launcher locks
(``peft_jax.common.lock``). An entry that fails to load (e.g. a write cut short by a kill) costs a
warning and a normal compilation, never a wrong program; deleting the folder is always safe.
A cache folder configured by the user (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.jax_compilation_cache_dir``) is left in charge.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import jax

_SETTINGS = (
  'jax_compilation_cache_dir',
  'jax_persistent_cache_min_compile_time_secs',
  'jax_persistent_cache_min_entry_size_bytes',
)


def _reset() -> None:
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  compilation_cache.reset_cache()  # the next compilation reads the settings again


@contextlib.contextmanager
def persistent_cache(path: Optional[str], min_compile_s: float = 0.1) -> Iterator[Optional[str]]:
  """Compiled programs cached in ``path`` inside the block (see the module docstring).

  Args:
    path: the cache folder (created); empty or None: no cache.
    min_compile_s: programs that compiled faster are not written (a disk round trip costs more
      than compiling an elementwise op).
  Yields:
    The folder in use: ``path``, the user's own cache folder, or None.
  """
  configured = jax.config.jax_compilation_cache_dir or os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if configured or not path:
    yield configured or None
    return
  os.makedirs(path, exist_ok=True)
  saved = {name: getattr(jax.config, name) for name in _SETTINGS}
  jax.config.update('jax_compilation_cache_dir', os.path.abspath(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_s))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)  # any size
  _reset()
  try:
    yield os.path.abspath(path)
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    _reset()
