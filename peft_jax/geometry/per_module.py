"""Metrics for every weight of a params tree / every captured module, batched by shape.

The analysis stage compares whole models: every 2-D kernel of the base and the merged fine-tuned
params (:func:`spectral_summary_tree`), or every activation captured by
``model.apply(..., capture=...)`` (:func:`activation_geometry_dict`, keys such as
``'layers_3/self_attn/q_proj/out'``). Entries of equal shape are stacked and go through one
``jax.vmap``-ed, jitted program per shape, so the cost of tracing does not grow with depth.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from peft_jax.common import stacking
from peft_jax.common.trees import path_name
from peft_jax.geometry import activations, spectral

Array = jax.Array
PyTree = Any


def flat_kernels(params: PyTree) -> dict[str, Array]:
  """``{'/'-joined path: leaf}`` for every 2-D leaf named ``kernel`` (Flax ``[d_in, d_out]``);
  stacked (scanned) layers are read per layer, under the unrolled names (``layers_3/...``)."""
  params = stacking.unstack_layers(params) if stacking.is_stacked(params) else params
  out = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = path_name(key_path)
    if name.split('/')[-1] == 'kernel' and jnp.ndim(leaf) == 2:
      out[name] = leaf
  return out


def _grouped_apply(fn: Callable, named_args: Mapping[str, tuple]) -> dict[str, Any]:
  """Applies ``fn`` to every entry, stacking entries whose argument shapes agree into one vmap."""
  groups: dict[tuple, list[str]] = {}
  for name, args in named_args.items():
    signature = tuple((jnp.shape(a), jnp.result_type(a)) for a in args)
    groups.setdefault(signature, []).append(name)
  batched = jax.jit(jax.vmap(fn))
  out = {}
  for names in groups.values():
    stacked = [
      jnp.stack([named_args[n][i] for n in names]) for i in range(len(named_args[names[0]]))
    ]
    result = batched(*stacked)
    for index, name in enumerate(names):
      out[name] = jax.tree.map(lambda leaf, index=index: leaf[index], result)
  return out


def spectral_summary_tree(
  theta0: PyTree,
  theta1: PyTree,
  *,
  include: Optional[Callable[[str], bool]] = None,
  window: int = 5,
) -> dict[str, spectral.SpectralSummary]:
  """:func:`spectral.spectral_summary` of every 2-D ``kernel`` of a params tree.

  Args:
    theta0: base params (plain arrays; kernels ``[d_in, d_out]``).
    theta1: fine-tuned params, merged to plain kernels (``peft_jax.adapters.api.merge``).
    include: optional predicate on the kernel path (e.g. ``lambda p: 'mlp' in p``); default all.
    window: smoothness window.
  Returns:
    ``{kernel path: SpectralSummary}``.
  Raises:
    ValueError: a kernel missing from ``theta1`` or with another shape, or nothing selected.
  """
  kernels0, kernels1 = flat_kernels(theta0), flat_kernels(theta1)
  selected = [p for p in sorted(kernels0) if include is None or include(p)]
  if not selected:
    raise ValueError(f'no kernel selected; kernels are: {", ".join(sorted(kernels0))}')
  for path in selected:
    if path not in kernels1:
      raise ValueError(
        f'kernel {path!r} is missing from theta1 (merge adapted trees first); '
        f'theta1 kernels: {", ".join(sorted(kernels1))}'
      )
    if jnp.shape(kernels0[path]) != jnp.shape(kernels1[path]):
      raise ValueError(
        f'kernel {path!r} has shape {jnp.shape(kernels0[path])} in theta0 but '
        f'{jnp.shape(kernels1[path])} in theta1.'
      )
  fn = functools.partial(spectral.spectral_summary, window=window)
  return _grouped_apply(fn, {p: (kernels0[p], kernels1[p]) for p in selected})


def activation_geometry_dict(
  captures0: Mapping[str, Array],
  captures1: Mapping[str, Array],
  *,
  mask: Optional[Array] = None,
  pca_ks: Sequence[int] = (32, 64),
  max_pair_tokens: int = activations.MAX_PAIR_TOKENS,
  key: Optional[Array] = None,
  keys: Optional[Sequence[str]] = None,
) -> dict[str, dict]:
  """:func:`activations.activation_geometry` for every captured module, batched by shape.

  Args:
    captures0: base model captures ``{name: [B, T, d]}`` (``model.apply(..., capture=...)``).
    captures1: fine-tuned model captures on the same tokens.
    mask: ``[B, T]`` attention mask (1 = real token) shared by all captures.
    pca_ks: PCA subspace sizes (static).
    max_pair_tokens: Gram-distortion subsample size.
    key: subsample key (default ``jax.random.key(0)``; the same subset for every module).
    keys: capture names to analyse (default: every name present in both).
  Returns:
    ``{capture name: {metric: scalar}}``.
  """
  names = sorted(set(captures0) & set(captures1)) if keys is None else list(keys)
  for name in names:
    if name not in captures0 or name not in captures1:
      raise ValueError(
        f'capture {name!r} is missing; base has {sorted(captures0)}, fine-tuned '
        f'has {sorted(captures1)}.'
      )
  if not names:
    raise ValueError(
      f'no common capture names between {sorted(captures0)} and {sorted(captures1)}.'
    )
  key = jax.random.key(0) if key is None else key

  def fn(x0, x1):
    return activations.activation_geometry(
      x0, x1, mask=mask, pca_ks=pca_ks, max_pair_tokens=max_pair_tokens, key=key
    )

  return _grouped_apply(fn, {n: (captures0[n], captures1[n]) for n in names})
