"""Mesh, logical-axis rules and the shardings of params, adapters, optimizer state and batches.

This module is the one place that decides placement (docs/ARCHITECTURE.md, "Sharding"). Model code names the axes
of every parameter with logical names (``'embed'``, ``'mlp'``, ``'heads'``, ``'kv'``, ``'vocab'``,
``'rank'``, ``'norm'``, ``'blocks'``, ``'layers'``: the stacked axis of scanned layers); a rules table maps each logical name to mesh axes of the
3-D mesh ``('data', 'fsdp', 'tensor')``.

Rule semantics (as Flax's ``logical_to_mesh_axes``, plus divisibility; ``common.axis_rules``, shared
with the decoder's activation constraints): rules are read in order, a repeated logical name is a
fallback. For each array dimension we take the first rule for its logical name whose mesh axes are
not yet used by another dimension of the same array *and* whose mesh-axis size product divides the
dimension. If the full tuple of mesh axes does not divide, its longest dividing prefix is tried. A
dimension no rule can shard is replicated, so a tiny model still runs on 8 devices.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from peft_jax.common import axis_rules
from peft_jax.common.trees import named_leaves, path_name

PyTree = Any
MESH_AXES = ('data', 'fsdp', 'tensor')
# The mesh axes the default rules split the batch dimension of every input over.
BATCH_MESH_AXES = ('data', 'fsdp')

# Logical axis -> mesh axes, in precedence order. ``None`` means replicated.
# Weights: FSDP shards the model dimension, tensor parallelism the wide projections.
# Adapter ranks, norms and OFT blocks are small: replicated.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
  # activations / inputs
  ('batch', ('data', 'fsdp')),
  ('length', None),
  # weights
  ('embed', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('kv', 'tensor'),
  ('vocab', 'tensor'),
  ('rank', None),
  ('norm', None),
  ('blocks', None),
  # the leading axis of layers stacked for a scan (ModelConfig.scan_layers)
  ('layers', None),
)


def make_mesh(
  shape: Sequence[int] = (-1, 1, 1),
  devices: Optional[Sequence[Any]] = None,
  axis_names: Sequence[str] = MESH_AXES,
) -> Mesh:
  """Builds a ``('data', 'fsdp', 'tensor')`` mesh over ``devices`` (default: all devices).

  Args:
    shape: sizes of the three mesh axes; one entry may be ``-1`` (filled with what is left).
    devices: the devices to use, in order (default ``jax.devices()``: process 0's devices first,
      so each process's slice of the batch dimension is contiguous).
    axis_names: mesh axis names.
  Returns:
    A ``jax.sharding.Mesh`` with ``Auto`` axis types.
  Raises:
    ValueError: if the product of ``shape`` differs from the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [int(s) for s in shape]
  if len(shape) != len(axis_names):
    raise ValueError(f'mesh shape {tuple(shape)} must have one size per axis {tuple(axis_names)}')
  if shape.count(-1) > 1:
    raise ValueError(f'mesh shape {tuple(shape)}: at most one axis may be -1')
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or len(devices) % known:
      raise ValueError(f'mesh shape {tuple(shape)} cannot be filled from {len(devices)} devices')
    shape[shape.index(-1)] = len(devices) // known
  if any(s <= 0 for s in shape) or math.prod(shape) != len(devices):
    raise ValueError(
      f'mesh shape {dict(zip(axis_names, shape))} has product {math.prod(shape)} but there are '
      f'{len(devices)} devices; the product of (data, fsdp, tensor) must equal the device count'
    )
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), tuple(axis_names))


def normalize_rules(rules: Optional[Iterable[Sequence[Any]]]) -> axis_rules.Rules:
  """Turns a rules list (e.g. from a config) into ``((logical, (mesh axes...)), ...)``;
  ``None`` gives :data:`DEFAULT_LOGICAL_AXIS_RULES`."""
  return axis_rules.normalize(DEFAULT_LOGICAL_AXIS_RULES if rules is None else rules)


def logical_to_spec(
  axes: Sequence[Optional[str]],
  shape: Optional[Sequence[int]],
  mesh: Mesh,
  rules: Optional[Iterable[Sequence[Any]]] = None,
) -> PartitionSpec:
  """The ``PartitionSpec`` of one array from its logical axis names (module docstring rules).

  Args:
    axes: one logical name (or ``None``) per dimension.
    shape: the array shape, for divisibility (``None``: assume everything divides).
    mesh: the mesh (its axis sizes decide divisibility).
    rules: logical-axis rules (default :data:`DEFAULT_LOGICAL_AXIS_RULES`).
  """
  resolved = axis_rules.resolve(axes, shape, dict(mesh.shape), normalize_rules(rules))
  return PartitionSpec(*axis_rules.spec_entries(resolved))


def _is_axes_leaf(x: Any) -> bool:
  return x is None or (isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x))


def logical_to_sharding(
  axes_tree: PyTree,
  mesh: Mesh,
  rules: Optional[Iterable[Sequence[Any]]] = None,
  shapes: Optional[PyTree] = None,
) -> PyTree:
  """``NamedSharding`` tree from a tree of logical-axis tuples (divisibility-aware).

  Args:
    axes_tree: tree whose leaves are tuples of logical names, one per dimension (e.g. the output
      of ``peft_jax.models.param_logical_axes(params, config)``; ``Adapted`` nodes are traversed).
    mesh: the device mesh.
    rules: logical-axis rules (default :data:`DEFAULT_LOGICAL_AXIS_RULES`).
    shapes: optional tree of arrays / ``ShapeDtypeStruct`` with the same structure; with it a
      dimension the mesh axes do not divide falls back (see module docstring).
  Returns:
    A tree of ``NamedSharding`` with the structure of ``axes_tree``.
  """
  rules = normalize_rules(rules)
  if shapes is None:
    return jax.tree.map(
      lambda axes: NamedSharding(mesh, logical_to_spec(axes, None, mesh, rules)),
      axes_tree,
      is_leaf=_is_axes_leaf,
    )
  axes_by_path = dict(jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=_is_axes_leaf)[0])

  def one(path, leaf):
    if path not in axes_by_path:
      raise KeyError(
        f'no logical axes for parameter {path_name(path)!r}; axes are given for: '
        f'{sorted(path_name(p) for p in axes_by_path)[:20]}'
      )
    return NamedSharding(mesh, logical_to_spec(axes_by_path[path], leaf.shape, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, shapes)


def shardings_like(tree: PyTree, full_shardings: PyTree) -> PyTree:
  """Picks, for each leaf of ``tree`` (e.g. the trainable partition), the sharding of the leaf at
  the same path in ``full_shardings`` (e.g. computed for the whole params tree)."""
  by_name = named_leaves(full_shardings)

  def one(path, _):
    name = path_name(path)
    if name not in by_name:
      raise KeyError(f'parameter {name!r} has no sharding; known: {sorted(by_name)[:20]}')
    return by_name[name]

  return jax.tree_util.tree_map_with_path(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(
  optimizer: optax.GradientTransformation,
  params_shape: PyTree,
  params_shardings: PyTree,
  mesh: Mesh,
) -> PyTree:
  """Shardings of ``optimizer.init(params)``: each moment mirrors the param it belongs to; scalars
  (counts) and anything not shaped like a param are replicated.

  Args:
    optimizer: the optax transformation.
    params_shape: tree of ``ShapeDtypeStruct`` (or arrays) of the trainable params.
    params_shardings: matching tree of ``NamedSharding``.
    mesh: the mesh (for the replicated sharding).
  """
  state_shape = jax.eval_shape(optimizer.init, params_shape)
  shardings = optax.tree_map_params(
    optimizer,
    lambda _, sharding: sharding,
    state_shape,
    params_shardings,
    transform_non_params=lambda _: replicated(mesh),
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )
  # Anything tree_map_params left as a shape (e.g. masked-out nodes) is replicated.
  return jax.tree.map(
    lambda s: s if isinstance(s, NamedSharding) else replicated(mesh),
    shardings,
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )


def batch_logical_axes(ndim: int = 2) -> tuple[Optional[str], ...]:
  """Logical names of an input ``[batch, length, ...]``: ``('batch', 'length', None, ...)``."""
  if ndim < 1:
    raise ValueError(f'a batch input has at least one dimension, got ndim={ndim}')
  return (('batch', 'length') + (None,) * max(ndim - 2, 0))[:ndim]


def batch_sharding(
  mesh: Mesh, ndim: int = 2, rules: Optional[Iterable[Sequence[Any]]] = None
) -> NamedSharding:
  """Inputs ``[batch, length, ...]`` placed by the rules for ``'batch'`` and ``'length'``
  (default table: the batch dimension split over ``('data', 'fsdp')``, length replicated).

  The batch size is not checked here: the step's global batch must divide the mesh axes the
  rules give ``'batch'`` (``jax.jit`` and ``global_batch`` say so when it does not).
  """
  return NamedSharding(mesh, logical_to_spec(batch_logical_axes(ndim), None, mesh, rules))
