"""Stacked (scanned) and unrolled layer params: one convention, two conversions.

The unrolled decoder keeps layer ``i`` under ``layers_{i}`` (``layers_3/self_attn/q_proj/kernel``,
docs/CONVENTIONS.md). A decoder that scans over its layers (``ModelConfig.scan_layers``) keeps
them stacked on a leading axis under one key, grouped in blocks of ``period`` consecutive layers
(``period`` 1 for a uniform stack, 2 for Gemma 2's alternating local/global layers)::

  {'layers': {'block_0': <layer tree, every leaf [L/period, ...]>, ..., 'block_{p-1}': ...}}

Layer ``i`` is ``block_{i % period}`` at index ``i // period``. Every other top-level entry
(``embed_tokens``, ``norm``, ``lm_head``) is the same in both forms.

The conversions are plain pytree maps, so they carry any registered node (an adapter's
``Adapted`` node stacks its base, params and frozen arrays alike) and work on NumPy arrays, jax
arrays, tracers and ``jax.ShapeDtypeStruct`` leaves. Everything outside the model (files, GGUF,
geometry, adapter export) sees the unrolled form; :func:`unstack_layers` is the identity on it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
STACKED_KEY = 'layers'
_LAYER_KEY = re.compile(r'^layers_(\d+)$')
_BLOCK_KEY = re.compile(r'^block_(\d+)$')


def block_name(j: int) -> str:
  return f'block_{j}'


def is_stacked(tree: Any) -> bool:
  """Whether ``tree`` holds its layers in the stacked form (module docstring)."""
  if not isinstance(tree, Mapping) or not isinstance(tree.get(STACKED_KEY), Mapping):
    return False
  blocks = tree[STACKED_KEY]
  return bool(blocks) and all(_BLOCK_KEY.match(str(k)) for k in blocks)


def num_unrolled_layers(tree: Mapping[str, Any]) -> int:
  """The number of ``layers_{i}`` entries (``layers_0 .. layers_{n-1}``, checked contiguous)."""
  indices = sorted(int(m.group(1)) for m in map(_LAYER_KEY.match, map(str, tree)) if m)
  if indices != list(range(len(indices))):
    raise ValueError(f'layer params are not layers_0 .. layers_{{n-1}}: found indices {indices}')
  return len(indices)


def _stack(leaves):
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype)
  return jnp.stack(leaves)


def _index(x, i):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)
  return x[i]


def _eager_device_arrays(leaves) -> bool:
  """Concrete jax arrays (not NumPy, tracers or shapes): converted in one compiled program
  rather than op by op (an eager slice per layer and leaf compiles one program each)."""
  return any(isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) for x in leaves) and (
    not any(isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer)) for x in leaves)
  )


def _stack_trees(members: list) -> Any:
  return jax.tree.map(lambda *xs: _stack(xs), *members)


_jit_stack_trees = jax.jit(_stack_trees)


def _unstack_tree(block: Any, n: int) -> list:
  return [jax.tree.map(lambda x, i=i: _index(x, i), block) for i in range(n)]


_jit_unstack_tree = jax.jit(_unstack_tree, static_argnums=1)


def stack_layers(tree: Mapping[str, Any], period: int = 1) -> dict:
  """Unrolled ``{'layers_0': ..., 'layers_{L-1}': ...}`` -> the stacked form (``period`` blocks).

  A tree already stacked is returned unchanged.

  Raises:
    ValueError: the number of layers is not a multiple of ``period``, or layers ``i`` and ``j``
      of one block differ in structure (e.g. an adapter on some layers only:
      ``layers_to_transform``), naming both; such a tree can only run unrolled.
  """
  if is_stacked(tree):
    return dict(tree)
  if period < 1:
    raise ValueError(f'stack_layers: period must be >= 1, got {period}')
  n = num_unrolled_layers(tree)
  if n == 0 or n % period:
    raise ValueError(f'stack_layers: {n} layers do not form blocks of {period}')
  out = {k: v for k, v in tree.items() if not _LAYER_KEY.match(str(k))}
  blocks = {}
  for j in range(period):
    members = [tree[f'layers_{i}'] for i in range(j, n, period)]
    first = jax.tree_util.tree_structure(members[0])
    for k, member in enumerate(members[1:], start=1):
      if jax.tree_util.tree_structure(member) != first:
        raise ValueError(
          f'stack_layers: layers_{j + k * period} differs in structure from layers_{j} (a '
          'parameter or adapter present in some layers only); a scanned model needs every '
          'layer alike, run it unrolled (ModelConfig.scan_layers=False)'
        )
    eager = _eager_device_arrays(jax.tree.leaves(members))
    blocks[block_name(j)] = (_jit_stack_trees if eager else _stack_trees)(members)
  out[STACKED_KEY] = blocks
  return out


def stack_period(tree: Mapping[str, Any]) -> int:
  """The ``period`` of a stacked tree (its number of blocks)."""
  if not is_stacked(tree):
    raise ValueError('stack_period: the tree is not in the stacked form')
  return len(tree[STACKED_KEY])


def unstack_layers(tree: Mapping[str, Any]) -> dict:
  """The stacked form -> unrolled ``layers_{i}`` entries (identity on an unrolled tree)."""
  if not is_stacked(tree):
    return tree if isinstance(tree, dict) else dict(tree)
  blocks = tree[STACKED_KEY]
  period = len(blocks)
  names = sorted(blocks, key=lambda k: int(_BLOCK_KEY.match(str(k)).group(1)))
  if names != [block_name(j) for j in range(period)]:
    raise ValueError(f'stacked layers have blocks {names}, expected block_0 .. block_{period - 1}')
  lengths = {
    j: {int(np.shape(x)[0]) for x in jax.tree.leaves(blocks[block_name(j)])} for j in range(period)
  }
  sizes = set().union(*lengths.values())
  if len(sizes) != 1:
    raise ValueError(f'stacked layer blocks have different leading sizes: {sorted(sizes)}')
  per_block = sizes.pop()
  out = {k: v for k, v in tree.items() if k != STACKED_KEY}
  for j in range(period):
    block = blocks[block_name(j)]
    eager = _eager_device_arrays(jax.tree.leaves(block))
    layers = (_jit_unstack_tree if eager else _unstack_tree)(block, per_block)
    for k, layer in enumerate(layers):
      out[f'layers_{j + period * k}'] = layer
  return out


def stacked_path(path: str, period: int) -> tuple[str, int]:
  """``'layers_5/mlp/up_proj/kernel'`` -> ``('layers/block_1/mlp/up_proj/kernel', 2)`` for
  ``period`` 2 (the stacked path and the index on the leading axis); other paths unchanged with
  index -1."""
  head, _, rest = path.partition('/')
  match = _LAYER_KEY.match(head)
  if not match:
    return path, -1
  i = int(match.group(1))
  stacked = f'{STACKED_KEY}/{block_name(i % period)}'
  return (stacked + '/' + rest if rest else stacked), i // period
