"""Accounting of a sharded program from shapes and shardings alone: bytes per device, the
placement of every parameter group, how much is left replicated, and XLA's compiled memory and
cost analysis as plain dicts.

Everything here reads ``jax.ShapeDtypeStruct`` (or arrays) and ``NamedSharding`` trees; nothing
is allocated, so a 7B model over 256 fake devices is counted in milliseconds.
``peft_jax.train.plan`` builds those trees for a train step and compiles it (docs/SCALE.md).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from peft_jax.common.trees import path_name
from peft_jax.parallel.sharding import MESH_AXES

PyTree = Any

# Fields of jax's CompiledMemoryStats reported per device.
MEMORY_FIELDS = (
  'argument_size_in_bytes',
  'output_size_in_bytes',
  'alias_size_in_bytes',
  'temp_size_in_bytes',
  'generated_code_size_in_bytes',
  'peak_memory_in_bytes',
)


def parse_mesh(text: str, axis_names: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
  """``'data:32,fsdp:8'`` -> ``(32, 8, 1)``: sizes of ``axis_names``, absent axes 1.

  Raises:
    ValueError: an unknown or repeated axis, or a size that is not a positive integer.
  """
  sizes = {name: 1 for name in axis_names}
  seen = set()
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, sep, value = part.partition(':')
    if not sep or name not in sizes:
      raise ValueError(
        f'mesh {text!r}: entry {part!r} must be AXIS:SIZE with AXIS one of {tuple(axis_names)}'
      )
    if name in seen:
      raise ValueError(f'mesh {text!r}: axis {name!r} is given twice')
    if not value.isdigit() or int(value) <= 0:
      raise ValueError(f'mesh {text!r}: size of {name!r} must be a positive integer, got {value!r}')
    seen.add(name)
    sizes[name] = int(value)
  if not seen:
    raise ValueError(f'mesh {text!r} names no axis; e.g. data:32,fsdp:8')
  return tuple(sizes[name] for name in axis_names)


def named_shards(shapes: PyTree, shardings: PyTree) -> list[tuple[str, Any, NamedSharding]]:
  """``[(name, shape leaf, sharding)]`` in tree order; the two trees must match."""
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  if len(flat_shapes) != len(flat_shardings):
    raise ValueError(
      f'{len(flat_shapes)} arrays but {len(flat_shardings)} shardings: the trees do not match'
    )
  return [(path_name(p), x, s) for (p, x), s in zip(flat_shapes, flat_shardings)]


def shard_bytes(x: Any, sharding: NamedSharding) -> int:
  """Bytes of the largest shard of ``x`` on one device (``shard_shape`` of its sharding)."""
  shape = sharding.shard_shape(tuple(x.shape))
  return int(math.prod(shape)) * np.dtype(x.dtype).itemsize


def global_bytes(x: Any) -> int:
  return int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize


def bytes_per_device(shapes: PyTree, shardings: PyTree) -> int:
  """Bytes of ``shapes`` each device holds when placed by ``shardings``."""
  return sum(shard_bytes(x, s) for _, x, s in named_shards(shapes, shardings))


def total_bytes(shapes: PyTree) -> int:
  """Bytes of one copy of every array in ``shapes``."""
  return sum(global_bytes(x) for x in jax.tree.leaves(shapes))


def group_name(name: str) -> str:
  """A parameter name with its layer index folded: ``layers_3/mlp/...`` -> ``layers_*/mlp/...``."""
  return re.sub(r'layers_\d+', 'layers_*', name)


def sharding_groups(shapes: PyTree, shardings: PyTree) -> list[dict[str, Any]]:
  """One row per parameter group (layer index folded): its shape, dtype, ``PartitionSpec``, the
  per-device shard shape, how many arrays it holds and their bytes (global, per device).

  Arrays of one group with different placements (which the rules never produce for equal shapes)
  get one row each.
  """
  rows: dict[tuple, dict[str, Any]] = {}
  for name, x, s in named_shards(shapes, shardings):
    spec = tuple(s.spec) + (None,) * (len(x.shape) - len(s.spec))
    key = (group_name(name), tuple(x.shape), str(np.dtype(x.dtype)), spec)
    row = rows.setdefault(
      key,
      dict(
        group=key[0],
        shape=list(x.shape),
        dtype=key[2],
        spec=[list(a) if isinstance(a, tuple) else a for a in spec],
        shard_shape=list(s.shard_shape(tuple(x.shape))),
        count=0,
        bytes=0,
        bytes_per_device=0,
      ),
    )
    row['count'] += 1
    row['bytes'] += global_bytes(x)
    row['bytes_per_device'] += shard_bytes(x, s)
  return list(rows.values())


def replication(shapes: PyTree, shardings: PyTree) -> dict[str, float]:
  """How much of ``shapes`` is not split over the mesh.

  Returns:
    ``replicated_fraction``: the fraction of elements in arrays that every device holds whole;
    ``redundancy``: ``bytes_per_device * devices / total_bytes`` (1 when everything is split
    over all devices, ``devices`` when everything is replicated).
  """
  leaves = named_shards(shapes, shardings)
  if not leaves:
    return dict(replicated_fraction=0.0, redundancy=0.0)
  elements = sum(math.prod(x.shape) for _, x, _ in leaves)
  replicated = sum(math.prod(x.shape) for _, x, s in leaves if s.is_fully_replicated)
  devices = leaves[0][2].mesh.size
  per_device = sum(shard_bytes(x, s) for _, x, s in leaves)
  total = sum(global_bytes(x) for _, x, _ in leaves)
  return dict(
    replicated_fraction=replicated / max(elements, 1),
    redundancy=per_device * devices / max(total, 1),
  )


def memory_stats(compiled: Any) -> dict[str, int]:
  """Per-device bytes of a compiled program (``compiled.memory_analysis()``).

  Adds ``total_size_in_bytes = argument + output - alias + temp``: every buffer the program
  holds at once if none were freed early, the figure to compare with a device's memory.
  """
  analysis = compiled.memory_analysis()
  if analysis is None:
    raise RuntimeError('this backend gives no memory analysis of the compiled program')
  out = {f: int(getattr(analysis, f)) for f in MEMORY_FIELDS if hasattr(analysis, f)}
  out['total_size_in_bytes'] = (
    out['argument_size_in_bytes']
    + out['output_size_in_bytes']
    - out['alias_size_in_bytes']
    + out['temp_size_in_bytes']
  )
  return out


def cost_stats(compiled: Any) -> dict[str, float]:
  """``flops`` and ``bytes accessed`` of one device's program (``compiled.cost_analysis()``)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, Sequence):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  analysis = dict(analysis or {})
  return {
    'flops': float(analysis.get('flops', float('nan'))),
    'bytes_accessed': float(analysis.get('bytes accessed', float('nan'))),
  }


def format_bytes(n: float) -> str:
  """``1536`` -> ``'1.50 KiB'`` (binary units)."""
  n = float(n)
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
    if abs(n) < 1024 or unit == 'TiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.2f} {unit}'
    n /= 1024
  return f'{n:.2f} TiB'
