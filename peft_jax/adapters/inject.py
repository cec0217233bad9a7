"""Injection by rules, and the tree-level functions over adapted params.

Param paths map to Hugging Face module names (docs/CONVENTIONS.md):
``layers_3/self_attn/q_proj/kernel`` <-> ``model.layers.3.self_attn.q_proj``, ``lm_head/kernel`` <->
``lm_head``; for the encoder ``layers_3/attention/self/query/kernel`` <->
``encoder.layer.3.attention.self.query`` (``BertModel``'s names). Candidates are the 2-D ``kernel`` leaves (the linear layers). Target semantics are
PEFT's (``tuners_utils.check_target_module_exists``):

* a **string** target is a regex that must match the whole module name (``re.fullmatch``);
  ``'all-linear'`` (any case) means every linear layer except ``lm_head``;
* a **list** entry matches a module name exactly or as a dot-boundary suffix (``'q_proj'`` and
  ``'self_attn.q_proj'`` match ``model.layers.0.self_attn.q_proj``; ``'proj'`` does not);
* ``exclude_modules`` uses the same two forms and wins over targets;
* ``layers_to_transform`` (int or list, list targets only) keeps modules whose first numbered
  segment (``model.layers.<i>.``) is in it;
* ``modules_to_save`` (PEFT's field of the same name, list form) names whole modules trained in
  full beside the adapter (a task head): every parameter under them becomes a
  :class:`~peft_jax.adapters.modules_to_save.ModulesToSave` node and no target rule touches them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax

from peft_jax.adapters.core import Adapted, ParamGroup, is_adapted
from peft_jax.adapters.modules_to_save import ModulesToSave
from peft_jax.common import stacking, trees

Array = jax.Array
PyTree = Any
Targets = Union[str, Sequence[str]]

_LAYER_INDEX = re.compile(r'.*?\.[^.]*\.(?P<idx>\d+)\.')


_ENCODER_TOP = ('embeddings', 'pooler', 'classifier')
_ENCODER_BLOCKS = ('attention', 'intermediate', 'output')
_LAYER_PART = re.compile(r'^layers_(\d+)$')


def is_encoder_path(path: str) -> bool:
  """Whether a param path belongs to the encoder's tree (``peft_jax.models.encoder``): its top
  modules (embeddings, pooler, classifier) and block names differ from the decoder's."""
  parts = path.split('/')
  if parts[0] in _ENCODER_TOP:
    return True
  return bool(_LAYER_PART.match(parts[0])) and len(parts) > 1 and parts[1] in _ENCODER_BLOCKS


def encoder_module_name(path: str, base_prefix: str = '') -> str:
  """Encoder param path (without the leaf) -> Hugging Face module name.

  ``'layers_3/attention/self/query'`` -> ``base_prefix + 'encoder.layer.3.attention.self.query'``,
  ``'embeddings/word_embeddings'`` -> ``base_prefix + 'embeddings.word_embeddings'``, the head
  ``'classifier/...'`` -> ``'classifier...'`` (never prefixed). ``base_prefix`` is ``''`` for
  ``BertModel`` / ``RobertaModel`` names, ``'bert.'`` / ``'roberta.'`` for the
  ``*ForSequenceClassification`` models, where the base model is an attribute.
  """
  parts = path.split('/')
  if parts[0] == 'classifier':
    return '.'.join(parts)
  match = _LAYER_PART.match(parts[0])
  if match:
    parts = ['encoder', 'layer', match.group(1)] + parts[1:]
  return base_prefix + '.'.join(parts)


def default_module_name(path: str) -> str:
  """``'layers_3/self_attn/q_proj'`` -> ``'model.layers.3.self_attn.q_proj'``; ``lm_head`` stays;
  encoder paths go through :func:`encoder_module_name` (``BertModel``'s names)."""
  if is_encoder_path(path):
    return encoder_module_name(path)
  parts = [re.sub(r'^layers_(\d+)$', r'layers.\1', p) for p in path.split('/')]
  name = '.'.join(parts)
  return name if parts[0] == 'lm_head' else 'model.' + name


def saved_module_paths(
  params: Mapping,
  modules_to_save: Sequence[str],
  module_name_fn: Callable[[str], str] = default_module_name,
) -> dict[str, str]:
  """``{param path: modules_to_save entry}`` for every parameter under a named module.

  A parameter is under entry ``m`` when the module name of one of its ancestors (its own module
  included) equals ``m`` or ends with ``'.' + m`` (``'classifier'`` covers ``classifier/kernel``
  and RoBERTa's ``classifier/dense/kernel``).

  Raises:
    ValueError: an entry matching no parameter (listing the module names there are).
  """
  if isinstance(modules_to_save, str):
    raise ValueError(
      f'modules_to_save={modules_to_save!r} must be a list of module names, not a string'
    )
  out: dict[str, str] = {}
  found = {m: False for m in modules_to_save}
  names_seen = set()
  for path in trees.flatten_names(params):
    parts = path.split('/')
    for k in range(1, len(parts)):
      name = module_name_fn('/'.join(parts[:k]))
      names_seen.add(name)
      hit = next((m for m in modules_to_save if name == m or name.endswith('.' + m)), None)
      if hit is not None:
        out[path] = hit
        found[hit] = True
        break
  missing = [m for m, ok in found.items() if not ok]
  if missing:
    raise ValueError(
      f'modules_to_save {missing} match no module of the params; module names there include: '
      f'{", ".join(sorted(names_seen)[:24])}'
    )
  return out


def linear_modules(
  params: Mapping, module_name_fn: Callable[[str], str] = default_module_name
) -> dict[str, str]:
  """``{module_name: kernel_path}`` for every 2-D ``kernel`` leaf (plain or already adapted)."""
  out = {}
  for path, leaf in trees.flatten_names(params).items():
    if path.endswith('/kernel') and (is_adapted(leaf) or getattr(leaf, 'ndim', 0) == 2):
      out[module_name_fn(path[: -len('/kernel')])] = path
  return out


def _matches(name: str, targets: Targets) -> bool:
  if isinstance(targets, str):
    if targets.lower() == 'all-linear':
      return name != 'lm_head' and not name.endswith('.lm_head')
    return re.fullmatch(targets, name) is not None
  return any(name == t or name.endswith('.' + t) for t in targets)


def _layer_ok(name: str, layers_to_transform) -> bool:
  if layers_to_transform is None:
    return True
  m = _LAYER_INDEX.match(name)
  if m is None:
    return False
  idx = int(m.group('idx'))
  if isinstance(layers_to_transform, int):
    return idx == layers_to_transform
  return idx in layers_to_transform


def select_modules(
  params: Mapping,
  targets: Targets,
  *,
  layers_to_transform=None,
  exclude_modules: Optional[Targets] = None,
  module_name_fn: Callable[[str], str] = default_module_name,
) -> dict[str, str]:
  """``{module_name: kernel_path}`` selected by PEFT's rules (module docstring)."""
  if (
    isinstance(targets, str)
    and layers_to_transform is not None
    and (targets.lower() != 'all-linear')
  ):
    raise ValueError(
      'layers_to_transform cannot be combined with a regex-string target '
      f'({targets!r}); use a list of names'
    )
  modules = linear_modules(params, module_name_fn)
  chosen = {}
  for name, path in modules.items():
    if exclude_modules is not None and _matches(name, exclude_modules):
      continue
    if _matches(name, targets) and _layer_ok(name, layers_to_transform):
      chosen[name] = path
  return chosen


def _as_rules(method_or_rules, targets) -> list[tuple[Any, Targets]]:
  if isinstance(method_or_rules, (list, tuple)) and targets is None:
    rules = list(method_or_rules)
    for i, rule in enumerate(rules):
      if not (isinstance(rule, (list, tuple)) and len(rule) == 2):
        raise ValueError(f'rule {i} must be a (method, targets) pair, got {rule!r}')
    return [tuple(r) for r in rules]
  if targets is None and getattr(method_or_rules, 'adapts', 'targets') == 'all':
    return [(method_or_rules, None)]  # adapts every parameter: no targets needed
  if targets is None:
    raise ValueError(
      'inject: give `targets` with a single method, or a list of (method, targets) pairs'
    )
  return [(method_or_rules, targets)]


def inject(
  params: Mapping,
  method_or_rules,
  targets: Optional[Targets] = None,
  key: Optional[Array] = None,
  *,
  layers_to_transform=None,
  exclude_modules: Optional[Targets] = None,
  modules_to_save: Optional[Sequence[str]] = None,
  module_name_fn: Callable[[str], str] = default_module_name,
) -> dict:
  """Replaces each selected ``kernel`` leaf by ``method.init(key_i, kernel)`` (an :class:`Adapted`).

  Args:
    params: the model's param tree (nested dicts, kernels ``[d_in, d_out]``).
    method_or_rules: a method object (with ``targets``), or a list of ``(method, targets)`` pairs.
      A module selected by several rules takes the first one, so per-module overrides go first:
      ``[(LoRA(rank=16), ['q_proj']), (LoRA(rank=4), 'all-linear')]``.
    targets: PEFT ``target_modules`` semantics (list / regex string / ``'all-linear'``).
    key: PRNG key; module ``i`` (sorted by path) gets ``split(key, n)[i]``.
    layers_to_transform: int or list of layer indices (list targets only).
    exclude_modules: names never adapted (same forms as targets).
    modules_to_save: module names (exact or dot-suffix, e.g. ``['classifier']``) whose every
      parameter is trained in full beside the adapter (``ModulesToSave`` nodes); the rules
      never adapt them.
    module_name_fn: param path (without ``/kernel``) -> HF module name.
  Returns:
    A new tree; untouched leaves are shared with ``params``. Stacked layers
    (``peft_jax.common.stacking``) give stacked nodes: a node's arrays carry the leading layer
    axis and the model's scan hands each layer its slice.
  Raises:
    ValueError: a rule matching nothing (listing available module names), or a method's own
      shape errors (rank too large, OFT block size not dividing d_in, ...).
  """
  if stacking.is_stacked(params):
    # Stacked (scanned) layers: inject on the unrolled view (the same keys per module path as an
    # unrolled model, so both give the same adapter) and stack the nodes back.
    unrolled = inject(
      stacking.unstack_layers(params),
      method_or_rules,
      targets,
      key,
      layers_to_transform=layers_to_transform,
      exclude_modules=exclude_modules,
      modules_to_save=modules_to_save,
      module_name_fn=module_name_fn,
    )
    return stacking.stack_layers(unrolled, stacking.stack_period(params))
  rules = _as_rules(method_or_rules, targets)
  if key is None:
    key = jax.random.key(0)
  flat = trees.flatten_names(params)
  saved = saved_module_paths(params, modules_to_save, module_name_fn) if modules_to_save else {}
  for path in saved:
    if is_adapted(flat[path]):
      raise ValueError(f'modules_to_save: {path} is already adapted by {flat[path].method!r}')
  assignment: dict[str, tuple[Any, str]] = {}
  for method, rule_targets in rules:
    if getattr(method, 'adapts', 'targets') == 'all':
      # Every parameter (full fine-tuning of everything): targets do not restrict it.
      chosen = {path: path for path in flat if path not in saved}
    else:
      chosen = select_modules(
        params,
        rule_targets,
        layers_to_transform=layers_to_transform,
        exclude_modules=exclude_modules,
        module_name_fn=module_name_fn,
      )
      chosen = {n: p for n, p in chosen.items() if p not in saved}
    if not chosen:
      available = sorted(linear_modules(params, module_name_fn))
      raise ValueError(
        f'target_modules {rule_targets!r} (method {getattr(method, "name", method)!r}, '
        f'layers_to_transform={layers_to_transform!r}, exclude_modules={exclude_modules!r}) '
        f'matched no linear weight; available module names are: {", ".join(available)}'
      )
    for name, path in chosen.items():
      if path in assignment:
        continue  # the first matching rule wins (per-module overrides go first)
      if is_adapted(flat[path]):
        raise ValueError(
          f'module {name!r} ({path}) is already adapted by {flat[path].method!r}; merge it first'
        )
      assignment[path] = (method, name)
  paths = sorted(assignment)
  keys = jax.random.split(key, len(paths))
  shared_by_method: dict[Any, dict] = {}
  for method in {m for m, _ in assignment.values()}:
    shapes = [flat[p].shape for p in paths if assignment[p][0] == method]
    shared = method.init_shared(jax.random.fold_in(key, 0x5EA), shapes)
    if shared is not None:
      shared_by_method[method] = shared
  out = dict(params)
  for path, k in zip(paths, keys):
    method = assignment[path][0]
    if method in shared_by_method:
      node = method.init(k, flat[path], shared=shared_by_method[method])
    else:
      node = method.init(k, flat[path])
    out = trees.set_path(out, path, node)
  for path, module in sorted(saved.items()):
    out = trees.set_path(out, path, ModulesToSave(module=module).init(None, flat[path]))
  return out


def adapted_nodes(tree: Mapping) -> dict[str, Adapted]:
  """``{kernel path: node}`` for every adapted leaf (of the unrolled view of stacked layers)."""
  tree = stacking.unstack_layers(tree)
  return {p: v for p, v in trees.flatten_names(tree).items() if is_adapted(v)}


def _map_tree(tree: Mapping, fn: Callable[[str, Any], Any], prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else str(k)
    out[k] = _map_tree(v, fn, path) if isinstance(v, Mapping) else fn(path, v)
  return out


def partition(tree: Mapping) -> tuple[dict, dict]:
  """Splits into ``(trainable, frozen)`` with the same structure, ``None`` where absent.

  Trainable: each node's ``params`` (inside an ``Adapted`` with ``base=None`` and frozen entries
  ``None``). Frozen: every plain leaf, and each node's ``base`` and ``frozen`` (params ``None``).
  ``combine(trainable, frozen)`` rebuilds the tree; ``None`` leaves are empty pytrees, so optax
  and ``jax.tree`` functions see only the trainable arrays.
  """

  def train_fn(path, v):
    del path
    if is_adapted(v):
      return Adapted(None, dict(v.params), {k: None for k in v.frozen}, v.method)
    return None

  def frozen_fn(path, v):
    del path
    if is_adapted(v):
      return Adapted(v.base, {k: None for k in v.params}, dict(v.frozen), v.method)
    return v

  return _map_tree(tree, train_fn), _map_tree(tree, frozen_fn)


def combine(trainable: Mapping, frozen: Mapping) -> dict:
  """Inverse of :func:`partition`."""
  out = {}
  for k, f in frozen.items():
    t = trainable.get(k) if trainable is not None else None
    if isinstance(f, Mapping):
      out[k] = combine(t if isinstance(t, Mapping) else {}, f)
    elif is_adapted(f):
      if not is_adapted(t):
        raise ValueError(
          f'combine: {k!r} is adapted in the frozen tree but the trainable tree '
          f'holds {type(t).__name__}'
        )
      params = {n: t.params[n] for n in f.params}
      out[k] = Adapted(f.base, params, dict(f.frozen), f.method)
    else:
      out[k] = f if t is None else t
  return out


def merge(tree: Mapping) -> dict:
  """Plain params: every adapted node replaced by ``method.merge(node)`` (per layer of stacked
  layers, which stay stacked)."""
  if stacking.is_stacked(tree):
    return stacking.stack_layers(merge(stacking.unstack_layers(tree)), stacking.stack_period(tree))
  return _map_tree(tree, lambda p, v: v.method.merge(v) if is_adapted(v) else v)


def delta(tree: Mapping) -> dict[str, Array]:
  """``{kernel path: ΔW [d_in, d_out]}`` relative to each original pretrained kernel."""
  return {p: n.method.delta(n) for p, n in adapted_nodes(tree).items()}


def path(
  tree: Mapping,
  t: Array,
  *,
  layer_scales: Optional[Mapping[str, Array]] = None,
  method_fn: str = 'path',
) -> dict:
  """Plain params at position ``t`` of each method's own path (``t=0`` base, ``t=1`` merged).

  Args:
    tree: adapted tree.
    t: scalar position (may be traced, so ``vmap`` over ``t`` works).
    layer_scales: optional ``{kernel path: factor}``; that node uses ``t * factor``
      (per-layer rewinding / scaling).
    method_fn: the node method to call (``'path'``, or e.g. ``'dense_path'`` for OFT; nodes
      without it use ``'path'``).
  """
  if stacking.is_stacked(tree):
    out = path(stacking.unstack_layers(tree), t, layer_scales=layer_scales, method_fn=method_fn)
    return stacking.stack_layers(out, stacking.stack_period(tree))
  layer_scales = layer_scales or {}
  unknown = set(layer_scales) - set(adapted_nodes(tree))
  if unknown:
    raise ValueError(
      f'layer_scales keys {sorted(unknown)} are not adapted kernels; adapted: '
      f'{sorted(adapted_nodes(tree))}'
    )

  def fn(p, v):
    if not is_adapted(v):
      return v
    tp = t * layer_scales[p] if p in layer_scales else t
    return getattr(v.method, method_fn, v.method.path)(v, tp)

  return _map_tree(tree, fn)


def count_params(tree: Mapping) -> dict[str, int]:
  """``{'trainable': adapter params, 'total': every distinct array}``.

  Arrays shared across nodes (a method's ``shared_frozen``, e.g. VeRA's projections) are counted
  once per (method, name), even when a transformation (jit, device_put) returned separate copies.
  A node's base and trainable arrays count as ``method.num_stored(node)`` (full fine-tuning's
  trained weight replaces its base, so the model is counted once).
  """
  tree = stacking.unstack_layers(tree)
  total = 0
  trainable = 0
  shared_seen: set = set()
  for leaf in jax.tree.leaves(tree, is_leaf=is_adapted):
    if not is_adapted(leaf):
      total += int(leaf.size)
      continue
    total += int(leaf.method.num_stored(leaf))
    trainable += int(leaf.method.num_trainable(leaf))
    for name, value in leaf.frozen.items():
      if name in leaf.method.shared_frozen:
        if (leaf.method, name) in shared_seen:
          continue
        shared_seen.add((leaf.method, name))
      total += int(value.size)
  return {'trainable': trainable, 'total': total}


def adapter_logical_axes(node: Adapted, base_axes: tuple) -> Adapted:
  """Logical axis names of a node's arrays, derived from its base kernel's ``(in, out)`` axes.

  Returns an ``Adapted`` whose ``base`` is ``base_axes`` and whose ``params``/``frozen`` hold one
  axis-name tuple per array (A-like: ``(in, 'rank')``, B-like: ``('rank', out)``, DoRA magnitude:
  ``(out,)``, OFT: ``('blocks', None)``, VeRA: ``('rank',)``/``(out,)``).
  """
  if len(base_axes) != node.base.ndim:
    raise ValueError(
      f"base_axes {base_axes!r} must name each of the base's {node.base.ndim} "
      'dimensions ((input_axis, output_axis) for a kernel)'
    )
  params_axes, frozen_axes = node.method.param_axes(node, *base_axes)
  return Adapted(tuple(base_axes), params_axes, frozen_axes, node.method)


def param_groups(tree: Any) -> Any:
  """Tree of :class:`~peft_jax.adapters.core.ParamGroup` (or ``None``: default group) for every
  array of ``tree`` (a params tree or its trainable partition), from each node's
  ``method.param_groups()``; plain leaves are ``None``. Same structure as ``tree``."""

  def visit(leaf):
    if not is_adapted(leaf):
      return None if leaf is None else _NO_GROUP
    groups = leaf.method.param_groups()
    params = {k: (None if v is None else groups.get(k, _NO_GROUP)) for k, v in leaf.params.items()}
    frozen = {k: (None if v is None else _NO_GROUP) for k, v in leaf.frozen.items()}
    base = None if leaf.base is None else _NO_GROUP
    return Adapted(base, params, frozen, leaf.method)

  return jax.tree.map(visit, tree, is_leaf=lambda x: is_adapted(x) or x is None)


_NO_GROUP = ParamGroup()


def methods_of(tree: Mapping) -> tuple:
  """The distinct method objects of a tree's adapted nodes, in path order."""
  seen: dict = {}
  for node in adapted_nodes(tree).values():
    seen.setdefault(node.method, None)
  return tuple(seen)


def merge_exact(tree: Mapping) -> Optional[dict]:
  """:func:`merge` when every node's method merges exactly, else ``None`` (an input-dependent
  update, such as DISeL's gates, must be evaluated unmerged)."""
  if all(m.exact_merge for m in methods_of(tree)):
    return merge(tree)
  return None


def scale_updates(tree: Mapping, t: Array) -> dict:
  """Every node replaced by ``method.scale_update(node, t)``: the update scaled by ``t``,
  still unmerged (the path of methods without an exact merge)."""
  return _map_tree(tree, lambda p, v: v.method.scale_update(v, t) if is_adapted(v) else v)
