"""Tree helpers: one definition of a parameter's '/'-joined name, and nested-dict (un)flattening.

A parameter's name is its key path joined with '/', e.g. ``layers_0/self_attn/q_proj/kernel``.
Inside an ``Adapted`` node (``peft_jax.adapters.core``), whose children flatten as
``(base, params, frozen)``, the name continues with the child, e.g.
``layers_0/self_attn/q_proj/kernel/params/lora_a``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax

PyTree = Any
ADAPTED_CHILDREN = ('base', 'params', 'frozen')


def path_name(path: Sequence[Any]) -> str:
  """'/'-joined name of a ``jax.tree_util`` key path."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      # Adapted flattens to (base, params, frozen); nothing else of ours uses flattened indices.
      parts.append(ADAPTED_CHILDREN[key.key] if key.key < 3 else str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return '/'.join(parts)


def named_leaves(tree: PyTree, is_leaf: Optional[Callable[[Any], bool]] = None) -> dict[str, Any]:
  """``{'/'-joined path: leaf}`` for every leaf (``None`` subtrees have no leaves)."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {path_name(p): x for p, x in flat}


def flatten_dict(
  tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], Any]:
  """Nested dicts -> ``{('a', 'b', 'c'): leaf}``; anything not a Mapping is a leaf."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten_dict(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten_dict(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  """Inverse of :func:`flatten_dict`."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def flatten_names(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dicts -> ``{'a/b/c': leaf}`` (non-Mapping values such as ``Adapted`` are leaves)."""
  return {'/'.join(path): value for path, value in flatten_dict(tree).items()}


def get_path(tree: Mapping[str, Any], path: str) -> Any:
  """The subtree at ``'a/b/c'`` of nested dicts."""
  node = tree
  for part in path.split('/'):
    node = node[part]
  return node


def set_path(tree: Mapping[str, Any], path: str, value: Any) -> dict:
  """Functional update of nested dicts at ``'a/b/c'`` (copies only along the path)."""
  head, _, rest = path.partition('/')
  out = dict(tree)
  out[head] = set_path(tree[head], rest, value) if rest else value
  return out
