"""Logical axis names of decoder and encoder params (docs/CONVENTIONS.md), adapters included.

``param_logical_axes(params, config)`` mirrors the params tree; each array leaf becomes a tuple of
logical axis names (one per dimension, ``None`` = replicated). An ``Adapted`` kernel becomes an
``Adapted`` node of tuples, so ``peft_jax.parallel`` can map either tree to shardings with
``jax.tree.map(..., is_leaf=lambda x: isinstance(x, tuple))``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np

from peft_jax.adapters.core import Adapted
from peft_jax.common import stacking
from peft_jax.models.config import ModelConfig
from peft_jax.models.decoder import declared_axes
from peft_jax.models.encoder import EncoderConfig, declared_encoder_axes

Axes = tuple[Optional[str], ...]


class _Shape:
  """A shape standing in for one layer's slice of a stacked array (a pytree leaf)."""

  def __init__(self, shape):
    self.shape = tuple(shape)
    self.ndim = len(self.shape)


def _is_axes(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, 'shape') else tuple(np.shape(x))


def _adapter_array_axes(
  shape: tuple[int, ...], base_shape: tuple[int, ...], base_axes: Axes
) -> Axes:
  """Axes of one adapter array from its shape relative to the base kernel ``[d_in, d_out]``.

  ``[d_in, d_out]`` -> base axes; ``[d_in, r]`` -> (in, 'rank'); ``[r, d_out]`` -> ('rank', out);
  ``[d_out]`` -> (out,); other 1-D -> ('rank',); 3-D (OFT blocks) -> ('blocks', None, None);
  anything else replicated.
  """
  if len(base_shape) != 2 or len(base_axes) != 2:
    return (None,) * len(shape)
  (d_in, d_out), (in_axis, out_axis) = base_shape, base_axes
  if len(shape) == 2:
    if tuple(shape) == (d_in, d_out):
      return (in_axis, out_axis)
    if shape[0] == d_in:
      return (in_axis, 'rank')
    if shape[1] == d_out:
      return ('rank', out_axis)
    return (None, None)
  if len(shape) == 1:
    return (out_axis,) if shape[0] == d_out else ('rank',)
  if len(shape) == 3:
    return ('blocks', None, None)
  return (None,) * len(shape)


def param_logical_axes(params: Mapping[str, Any], config: ModelConfig | EncoderConfig) -> Any:
  """Tree of logical-axis tuples matching ``params`` (plain arrays and ``Adapted`` nodes).

  The axis names of each parameter are the ones its module declares where it creates the
  parameter (``peft_jax.models.decoder`` / ``encoder``, ``nn.with_logical_partitioning``), read
  back from an abstract init of ``Decoder(config)`` (``Encoder(config)`` for an
  ``EncoderConfig``); a parameter the model does not create is an error.

  Args:
    params: decoder params (``{'embed_tokens': {'embedding': [V, d]}, 'layers_0': ...}``),
      possibly holding ``Adapted`` nodes (or abstract ``ShapeDtypeStruct`` leaves).
    config: the decoder's ``ModelConfig`` or the encoder's ``EncoderConfig``.
  Returns:
    The same nesting with a tuple of axis names per array (``('embed', 'heads')`` for q_proj's
    kernel); an ``Adapted`` node whose base/params/frozen leaves are such tuples. Adapter axes
    come from ``node.method.param_axes(node, *base_axes)`` when the method defines it, else from
    the arrays' shapes relative to the base kernel (see ``_adapter_array_axes``).
  Raises:
    KeyError: a parameter the decoder does not declare (naming it and the declared ones).
  """
  is_encoder = isinstance(config, EncoderConfig)
  declared = declared_encoder_axes(config) if is_encoder else declared_axes(config)
  kind = 'encoder' if is_encoder else 'decoder'

  def base_axes(path: tuple[str, ...], ndim: int) -> Axes:
    name = '/'.join(path)
    if name not in declared:
      raise KeyError(
        f'param {name!r} is not a parameter of the {config.model_type} {kind}; '
        f'declared: {sorted(declared)[:12]} ...'
      )
    axes = declared[name]
    if len(axes) != ndim:
      raise ValueError(f'param {name!r} has {ndim} dims but its declared axes are {axes}')
    return axes

  def visit(node: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, Adapted) and path[:1] == (stacking.STACKED_KEY,):
      # A node on a stacked kernel: its axes are one layer's, behind the leading 'layers' axis.
      axes = base_axes(path, len(_shape(node.base)))
      per_layer = jax.tree.map(lambda x: _Shape(_shape(x)[1:]), node)
      inner = visit_node(per_layer, axes[1:])
      return jax.tree.map(lambda a: (axes[0],) + a, inner, is_leaf=_is_axes)
    if isinstance(node, Adapted):
      return visit_node(node, base_axes(path, len(_shape(node.base))))
    if isinstance(node, Mapping):
      return {k: visit(v, path + (k,)) for k, v in node.items()}
    return base_axes(path, len(_shape(node)))

  def visit_node(node: Adapted, base: Axes) -> Any:
    base_shape = _shape(node.base)
    method_axes = getattr(node.method, 'param_axes', None)
    whole = getattr(node.method, 'adapts', '') == 'all' or getattr(
      node.method, 'saved_module', False
    )
    if callable(method_axes) and (len(base) == 2 or whole):
      # The method knows its own layout (peft_jax.adapters methods define param_axes).
      params_axes, frozen_axes = method_axes(node, *base)
      return Adapted(base, params_axes, frozen_axes, node.method)
    sub = lambda d: {k: _adapter_array_axes(_shape(v), base_shape, base) for k, v in d.items()}
    return Adapted(base, sub(node.params), sub(node.frozen), node.method)

  return visit(params, ())
