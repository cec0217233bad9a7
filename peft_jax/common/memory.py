"""What a long job's process holds in memory, and handing freed memory back to the OS.

A study runs dozens of stages in one process; each loads or trains a model and frees it before
the next (``arena.pipeline._Graph.hold``). Freed host buffers go back to the C allocator, which
keeps much of it: glibc's ``free`` returns a large block to the OS only when it was mapped on
its own, and its mmap threshold grows with the blocks freed, so later model-sized buffers come
from the heap and stay resident after they are freed. :func:`release` collects Python garbage
and asks glibc to trim (``malloc_trim(0)``), so the resident size follows what is alive.
:func:`snapshot` reports resident, peak resident and live JAX array bytes, for progress lines
and stage records.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import sys
from typing import Optional

import jax

_LIBC = None


def _libc():
  global _LIBC
  if _LIBC is None:
    name = ctypes.util.find_library('c') if sys.platform.startswith('linux') else None
    try:
      _LIBC = ctypes.CDLL(name) if name else False
    except OSError:
      _LIBC = False
  return _LIBC


def rss_bytes() -> Optional[int]:
  """The process's resident set size now (Linux ``/proc/self/statm``), or None elsewhere."""
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except (OSError, ValueError, IndexError):
    return None


def peak_rss_bytes() -> int:
  """The process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == 'darwin' else peak * 1024


def live_array_bytes() -> int:
  """Bytes of every live JAX array of this process (all devices, each shard once)."""
  total = 0
  for array in jax.live_arrays():
    try:
      total += sum(s.data.nbytes for s in array.addressable_shards)
    except Exception:  # pylint: disable=broad-except  (a deleted or donated array)
      continue
  return total


def release() -> None:
  """Collects garbage and returns the C heap's free memory to the OS (glibc only)."""
  gc.collect()
  libc = _libc()
  trim = getattr(libc, 'malloc_trim', None) if libc else None
  if trim is not None:
    trim(0)


def snapshot() -> dict:
  """``{'rss': bytes or None, 'peak_rss': bytes, 'jax_arrays': bytes}``."""
  return {'rss': rss_bytes(), 'peak_rss': peak_rss_bytes(), 'jax_arrays': live_array_bytes()}


def describe(snap: dict) -> str:
  """``rss 5.2 GB (peak 9.1 GB), arrays 1.3 GB`` (decimal GB)."""
  rss = '?' if snap.get('rss') is None else f'{snap["rss"] / 1e9:.1f}'
  return (
    f'rss {rss} GB (peak {snap["peak_rss"] / 1e9:.1f} GB), arrays {snap["jax_arrays"] / 1e9:.1f} GB'
  )
