"""The logical-axis rule semantics, shared by parameter shardings (``parallel.sharding``) and
activation constraints (``models.activation_sharding``), so both read one rules table the same
way.

A rules table is an ordered sequence of ``(logical_name, mesh_axes)`` pairs (``mesh_axes`` a mesh
axis name, a tuple of them, or ``None``: replicated). For each dimension of an array, in order, the
first rule for its logical name whose mesh axes are not yet used by another dimension of the same
array *and* whose mesh-axis size product divides the dimension is taken; if the full tuple does
not divide, its longest dividing prefix is tried; a repeated logical name is a fallback. A
dimension no rule can shard is replicated.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

Rules = tuple[tuple[str, tuple[str, ...]], ...]


def as_mesh_axes(mesh_axes: Any) -> tuple[str, ...]:
  """``None`` -> ``()``, ``'fsdp'`` -> ``('fsdp',)``, a sequence -> a tuple."""
  if mesh_axes is None:
    return ()
  if isinstance(mesh_axes, str):
    return (mesh_axes,)
  return tuple(mesh_axes)


def normalize(rules: Iterable[Sequence[Any]]) -> Rules:
  """Turns a rules list (e.g. from a config) into ``((logical, (mesh axes...)), ...)``.

  Raises:
    ValueError: an entry that is not a ``(name, mesh_axes)`` pair.
  """
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f'logical-axis rule {rule!r} must be a pair (logical_name, mesh_axes)')
    out.append((rule[0], as_mesh_axes(rule[1])))
  return tuple(out)


def resolve(
  axes: Sequence[Optional[str]],
  shape: Optional[Sequence[int]],
  mesh_shape: Mapping[str, int],
  rules: Rules,
) -> tuple[Optional[tuple[str, ...]], ...]:
  """The mesh axes of each dimension (``None``: replicated) by the module docstring's rules.

  Args:
    axes: one logical name (or ``None``) per dimension.
    shape: the array shape, for divisibility (``None``: assume everything divides).
    mesh_shape: ``{mesh axis: size}``.
    rules: normalized rules (:func:`normalize`).
  Raises:
    ValueError: ``axes`` and ``shape`` differ in length, or a rule names a mesh axis the mesh
      lacks.
  """
  if shape is not None and len(axes) != len(shape):
    raise ValueError(f'logical axes {tuple(axes)} do not match array shape {tuple(shape)}')
  for mesh_axis in (a for _, r in rules for a in r):
    if mesh_axis not in mesh_shape:
      raise ValueError(f'rule mesh axis {mesh_axis!r} is not in the mesh axes {tuple(mesh_shape)}')
  used: set[str] = set()
  out = []
  for dim, name in enumerate(axes):
    chosen = None
    for logical, mesh_axes in rules:
      if logical != name or not mesh_axes or used.intersection(mesh_axes):
        continue
      for n in range(len(mesh_axes), 0, -1):
        prefix = mesh_axes[:n]
        size = math.prod(mesh_shape[a] for a in prefix)
        if shape is None or shape[dim] % size == 0:
          chosen = prefix
          break
      if chosen is not None:
        break
    if chosen is not None:
      used.update(chosen)
    out.append(chosen)
  return tuple(out)


def spec_entries(resolved: Sequence[Optional[tuple[str, ...]]]) -> tuple[Any, ...]:
  """:func:`resolve`'s output as ``PartitionSpec`` entries (one axis as a bare name)."""
  return tuple(None if r is None else r[0] if len(r) == 1 else r for r in resolved)
