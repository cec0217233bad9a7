"""Disk-backed activation stores: token rows ``[n, d]`` streamed to ``.npy`` chunks.

docs/SAE.md, "Streaming collection". A store is a directory::

  manifest.json      {'n', 'd', 'dtype', 'chunks': [{'file', 'rows'}], 'sums': {...}, 'meta'}
  chunk_00000.npy    rows [0, rows_0), ...

:class:`StoreWriter` buffers at most ``chunk_rows`` rows in memory and writes each full buffer
as one chunk file (atomic: written under a temporary name, then renamed); ``close()`` writes the
manifest last, so a store without a manifest is incomplete and is never read. While writing it
accumulates, in float64, the sums the SAE study needs without a second pass: ``Σ x``,
``Σ ||x||²`` and ``Σ ||x||`` (mean, total variance, mean norm).

:class:`ActivationStore` reads a complete store. Its reads hold at most one chunk (or one
requested range) in memory at a time; :class:`TokenSampler` draws training batches uniformly
from a row range, either from the whole range held in memory (when it fits the given budget) or
from a buffer of randomly chosen chunks that fits the budget (a shuffle buffer, as SAELens'
activation store), deterministically from ``(seed, draw index)`` so a resumed run draws the
same batches.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from peft_jax.common import files

MANIFEST = 'manifest.json'


def _chunk_name(index: int) -> str:
  return f'chunk_{index:05d}.npy'


def _save_npy(path: str, array: np.ndarray) -> None:
  files.atomic_write(path, lambda f: np.save(f, array), binary=True)


class StoreWriter:
  """Appends token rows ``[n, d]`` to a store directory in chunks of ``chunk_rows`` rows.

  Args:
    directory: the store directory (created; must not hold a complete store).
    d: row width.
    chunk_rows: rows per chunk file (and the most rows buffered in memory).
    dtype: stored dtype (float32 by default).
    meta: JSON-ready metadata written into the manifest.
  """

  def __init__(
    self,
    directory: str,
    d: int,
    chunk_rows: int,
    *,
    dtype: Any = np.float32,
    meta: Optional[Mapping[str, Any]] = None,
  ):
    if int(d) < 1 or int(chunk_rows) < 1:
      raise ValueError(f'StoreWriter needs d >= 1 and chunk_rows >= 1, got {d}, {chunk_rows}')
    if os.path.exists(os.path.join(directory, MANIFEST)):
      raise FileExistsError(f'{directory} already holds a complete activation store')
    os.makedirs(directory, exist_ok=True)
    self.directory = directory
    self.d = int(d)
    self.chunk_rows = int(chunk_rows)
    self.dtype = np.dtype(dtype)
    self.meta = dict(meta or {})
    self._buffer = np.empty((self.chunk_rows, self.d), self.dtype)
    self._filled = 0
    self._chunks: list[dict] = []
    self._n = 0
    self._sum = np.zeros(self.d, np.float64)
    self._sum_sq = 0.0
    self._sum_norm = 0.0
    self._closed = False

  @property
  def num_rows(self) -> int:
    return self._n + self._filled

  def append(self, rows: np.ndarray) -> None:
    """Adds rows ``[k, d]`` (any float dtype; stored as ``dtype``)."""
    if self._closed:
      raise RuntimeError(f'StoreWriter for {self.directory} is closed')
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != self.d:
      raise ValueError(f'{self.directory}: rows must be [k, {self.d}], got shape {rows.shape}')
    if not np.all(np.isfinite(rows)):
      raise ValueError(f'{self.directory}: rows contain NaN or inf')
    start = 0
    while start < rows.shape[0]:
      take = min(self.chunk_rows - self._filled, rows.shape[0] - start)
      self._buffer[self._filled : self._filled + take] = rows[start : start + take]
      self._filled += take
      start += take
      if self._filled == self.chunk_rows:
        self._flush()

  def _flush(self) -> None:
    if not self._filled:
      return
    block = self._buffer[: self._filled]
    wide = block.astype(np.float64)
    self._sum += wide.sum(0)
    norms_sq = np.einsum('ij,ij->i', wide, wide)
    self._sum_sq += float(norms_sq.sum())
    self._sum_norm += float(np.sqrt(norms_sq).sum())
    name = _chunk_name(len(self._chunks))
    _save_npy(os.path.join(self.directory, name), block)
    self._chunks.append({'file': name, 'rows': int(self._filled)})
    self._n += self._filled
    self._filled = 0

  def close(self) -> dict:
    """Writes the last chunk and the manifest (the completion marker); returns the manifest."""
    if self._closed:
      raise RuntimeError(f'StoreWriter for {self.directory} is already closed')
    self._flush()
    self._closed = True
    if self._n == 0:
      raise ValueError(f'{self.directory}: no rows were written')
    manifest = {
      'n': int(self._n),
      'd': self.d,
      'dtype': self.dtype.name,
      'chunks': self._chunks,
      'sums': {
        'sum': [float(v) for v in self._sum],
        'sum_sq': self._sum_sq,
        'sum_norm': self._sum_norm,
      },
      'meta': self.meta,
    }
    files.write_json(os.path.join(self.directory, MANIFEST), manifest)
    self._buffer = None
    return manifest


class ActivationStore:
  """A complete store written by :class:`StoreWriter` (see the module docstring)."""

  def __init__(self, directory: str):
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f'{path} is missing: {directory} is not a complete activation store (collection did '
        'not finish; rerun it)'
      )
    with open(path) as f:
      manifest = json.load(f)
    for key in ('n', 'd', 'dtype', 'chunks', 'sums'):
      if key not in manifest:
        raise ValueError(f'{path}: manifest has no {key!r}; keys are {sorted(manifest)}')
    self.directory = directory
    self.manifest = manifest
    self.n = int(manifest['n'])
    self.d = int(manifest['d'])
    self.dtype = np.dtype(manifest['dtype'])
    self.meta = manifest.get('meta', {})
    rows = [int(c['rows']) for c in manifest['chunks']]
    if sum(rows) != self.n:
      raise ValueError(f'{path}: chunk rows sum to {sum(rows)}, manifest says n={self.n}')
    self.chunk_files = [os.path.join(directory, c['file']) for c in manifest['chunks']]
    self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)

  @property
  def row_bytes(self) -> int:
    return self.d * self.dtype.itemsize

  @property
  def nbytes(self) -> int:
    return self.n * self.row_bytes

  @property
  def max_chunk_rows(self) -> int:
    return int(np.max(np.diff(self.offsets)))

  # Statistics from the writer's float64 sums (all rows).
  @property
  def mean(self) -> np.ndarray:
    return np.asarray(self.manifest['sums']['sum'], np.float64) / self.n

  @property
  def mean_norm(self) -> float:
    return float(self.manifest['sums']['sum_norm']) / self.n

  def chunk(self, index: int) -> np.ndarray:
    path = self.chunk_files[index]
    array = np.load(path)
    expected = (int(self.offsets[index + 1] - self.offsets[index]), self.d)
    if array.shape != expected:
      raise ValueError(f'{path}: shape {array.shape}, the manifest says {expected}')
    return array

  def read(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """Rows ``[start, stop)`` as one in-memory array."""
    stop = self.n if stop is None else int(stop)
    if not 0 <= start <= stop <= self.n:
      raise ValueError(f'{self.directory}: rows [{start}, {stop}) outside [0, {self.n})')
    out = np.empty((stop - start, self.d), self.dtype)
    for block_start, block in self.blocks(start, stop, self.max_chunk_rows):
      out[block_start - start : block_start - start + block.shape[0]] = block
    return out

  def blocks(self, start: int = 0, stop: Optional[int] = None, block_rows: int = 4096):
    """Yields ``(first row, rows [k, d])`` over ``[start, stop)`` in blocks of ``block_rows``
    (the last one shorter), reading at most one chunk at a time."""
    stop = self.n if stop is None else int(stop)
    if block_rows < 1:
      raise ValueError(f'block_rows must be >= 1, got {block_rows}')
    pending: list[np.ndarray] = []
    pending_rows = 0
    first = start
    for index in range(len(self.chunk_files)):
      lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
      if hi <= start or lo >= stop:
        continue
      rows = self.chunk(index)[max(start, lo) - lo : min(stop, hi) - lo]
      while rows.shape[0]:
        take = min(block_rows - pending_rows, rows.shape[0])
        pending.append(rows[:take])
        pending_rows += take
        rows = rows[take:]
        if pending_rows == block_rows:
          yield first, np.concatenate(pending) if len(pending) > 1 else pending[0].copy()
          first += pending_rows
          pending, pending_rows = [], 0
    if pending_rows:
      yield first, np.concatenate(pending) if len(pending) > 1 else pending[0].copy()


def aligned_blocks(
  stores: list[ActivationStore], start: int, stop: int, block_rows: int
) -> Iterator[tuple[int, list[np.ndarray]]]:
  """Blocks of the same rows of several stores (on the same tokens)."""
  if len({s.n for s in stores}) != 1:
    raise ValueError(
      'stores are not aligned token by token: row counts '
      + ', '.join(f'{s.directory}: {s.n}' for s in stores)
    )
  iterators = [s.blocks(start, stop, block_rows) for s in stores]
  for items in zip(*iterators):
    yield items[0][0], [block for _, block in items]


class TokenSampler:
  """Uniform token batches from rows ``[0, stop)`` of a store, within a memory budget.

  When the range fits ``budget_bytes`` it is read once and every draw samples rows uniformly
  with replacement from all of it. Otherwise each draw fills a buffer of whole chunks (chosen
  at random, with probability proportional to their rows in range, without replacement, as many
  as fit the budget) and samples uniformly within the buffer: every row still has the same
  marginal probability, but rows of one draw come from few chunks.

  ``draw(index, count)`` depends only on ``(seed, index)``: a resumed run repeats the draws.
  """

  def __init__(self, store: ActivationStore, stop: int, budget_bytes: int, seed: int):
    if not 1 <= stop <= store.n:
      raise ValueError(f'{store.directory}: sampling range [0, {stop}) outside [0, {store.n}]')
    self.store = store
    self.stop = int(stop)
    self.seed = int(seed)
    self.budget_bytes = int(budget_bytes)
    self.in_memory = self.stop * store.row_bytes <= self.budget_bytes
    self._data = store.read(0, self.stop) if self.in_memory else None
    chunk_bytes = store.max_chunk_rows * store.row_bytes
    self.buffer_chunks = max(1, self.budget_bytes // max(chunk_bytes, 1))
    if not self.in_memory and chunk_bytes > self.budget_bytes:
      raise ValueError(
        f'{store.directory}: one chunk ({chunk_bytes} bytes) exceeds the sampling budget '
        f'({self.budget_bytes} bytes); write smaller chunks or raise the budget'
      )
    in_range = np.clip(np.minimum(store.offsets[1:], self.stop) - store.offsets[:-1], 0, None)
    self._in_range = in_range.astype(np.int64)

  def draw(self, index: Any, count: int) -> np.ndarray:
    """``[count, d]`` rows; ``index`` is an int or a tuple of ints (e.g. ``(1, chunk)``)."""
    key = [self.seed] + (list(index) if isinstance(index, tuple) else [int(index)])
    rng = np.random.default_rng(key)
    if self.in_memory:
      return self._data[rng.integers(0, self.stop, size=count)]
    available = np.flatnonzero(self._in_range)
    k = min(self.buffer_chunks, available.size)
    weights = self._in_range[available] / self._in_range[available].sum()
    chosen = np.sort(rng.choice(available, size=k, replace=False, p=weights))
    buffer = np.concatenate([self.store.chunk(c)[: self._in_range[c]] for c in chosen])
    return buffer[rng.integers(0, buffer.shape[0], size=count)]


def chunk_rows_for(budget_bytes: int, row_bytes: int, num_writers: int) -> int:
  """Rows per chunk so that ``num_writers`` full buffers take at most half of ``budget_bytes``
  (the other half is left to the batch being captured and to reading)."""
  rows = budget_bytes // (2 * max(num_writers, 1) * max(row_bytes, 1))
  if rows < 1:
    raise ValueError(
      f'a memory budget of {budget_bytes} bytes cannot buffer one row of {row_bytes} bytes for '
      f'{num_writers} stores; raise it'
    )
  return int(rows)
