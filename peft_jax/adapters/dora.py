"""DoRA, weight-decomposed LoRA (Liu et al., 2024), as PEFT 0.21 implements it (``use_dora=True``).

Flax layout, kernel ``W0: [d_in, d_out]``; PEFT's per-output-row norm of the ``[d_out, d_in]``
weight is our per-column norm (over ``d_in``):

.. math::

  V = W_0 + s\\, a b, \\quad
  n = \\mathrm{sg}(\\lVert V \\rVert_{\\text{col}}) \\in \\mathbb{R}^{d_{out}},
  \\quad W' = (m / n) \\odot V

with ``sg`` = stop-gradient (DoRA §4.3; PEFT ``.detach()``) and ``m: [d_out]`` initialised to
``||W0 + s a b||_col``. PEFT's forward, with ``x_d = drop(x)``:

.. math::

  y = x W_0 + (m/n - 1) \\odot (x_d W_0) + (m/n) \\odot s (x_d a) b

(which is ``(m/n) ⊙ (x W0 + s (x a) b)`` without dropout). The norm needs the dense
``V: [d_in, d_out]``, as in PEFT; the low-rank product itself uses thin matmuls.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters import _common, lora
from peft_jax.adapters.core import Adapted

Array = jax.Array


def column_norm(w: Array) -> Array:
  """``||w[:, j]||_2`` for ``w: [d_in, d_out]`` -> ``[d_out]`` (PEFT: ``norm(dim=1)`` of w^T)."""
  return jnp.linalg.norm(w, axis=0)


@dataclasses.dataclass(frozen=True)
class DoRA(lora.LoraFamily):
  """DoRA hyper-parameters (PEFT ``LoraConfig(use_dora=True, ...)``).

  Node layout: ``params = {'lora_a': [d_in, r], 'lora_b': [r, d_out], 'magnitude': [d_out]}``,
  ``frozen = {}``, ``base = W0``.
  """

  init_weights: str = 'default'
  name: str = 'dora'
  path_kind: ClassVar[str] = 'magnitude_direction'
  use_dora: ClassVar[bool] = True

  def init(self, key: Array, w0: Array) -> Adapted:
    self.check(w0)
    params = lora.init_lora_factors(key, w0, self.rank, self.init_weights)
    direction = w0.astype(jnp.float32) + self.scale * (params['lora_a'] @ params['lora_b'])
    params['magnitude'] = column_norm(direction)
    return Adapted(w0, params, {}, self)

  def _magnitude_ratio(self, node: Adapted) -> Array:
    """``m / sg(||W0 + s a b||_col)``: ``[d_out]``."""
    direction = node.base.astype(jnp.float32) + self.scale * (
      node.params['lora_a'].astype(jnp.float32) @ node.params['lora_b'].astype(jnp.float32)
    )
    weight_norm = jax.lax.stop_gradient(column_norm(direction))
    return node.params['magnitude'] / weight_norm

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> [..., d_out]`` by PEFT's DoRA forward (see module docstring)."""
    dtype = _common.compute_dtype(x, dtype)
    ratio = self._magnitude_ratio(node).astype(dtype)
    x2, lead = _common.flat2d(x)
    d_out = node.base.shape[-1]
    base_out = _common.dot(x2, node.base, dtype).reshape(*lead, d_out)
    x_d = _common.dropout(x, self.dropout, dropout_rng)
    update = lora.low_rank_update(
      x_d, node.params['lora_a'], node.params['lora_b'], self.scale, dtype
    )
    if x_d is x:
      return ratio * (base_out + update)
    base_d = _common.dot(x_d.reshape(-1, x.shape[-1]), node.base, dtype).reshape(*lead, d_out)
    return base_out + (ratio - 1) * base_d + ratio * update

  def merge(self, node: Adapted) -> Array:
    """``W' = (m / ||V||_col) ⊙ V`` with ``V = W0 + s a b``."""
    direction = node.base.astype(jnp.float32) + self.scale * (
      node.params['lora_a'] @ node.params['lora_b']
    )
    return ((node.params['magnitude'] / column_norm(direction)) * direction).astype(node.base.dtype)

  def delta(self, node: Adapted) -> Array:
    return self.merge(node).astype(jnp.float32) - node.base.astype(jnp.float32)

  def path(self, node: Adapted, t: Array) -> Array:
    """Magnitude and direction interpolated separately (DoRA's own decomposition).

    ``V(t) = W0 + t s a b``, ``m(t) = (1-t) ||W0||_col + t m``,
    ``W(t) = m(t) ⊙ V(t) / ||V(t)||_col``: ``W(0) = W0``, ``W(1) = merge``.
    """
    w0 = node.base.astype(jnp.float32)
    direction = w0 + t * self.scale * (node.params['lora_a'] @ node.params['lora_b'])
    magnitude = (1 - t) * column_norm(w0) + t * node.params['magnitude']
    return (magnitude / column_norm(direction) * direction).astype(node.base.dtype)

  def param_axes(self, node: Adapted, in_axis, out_axis):
    params_axes, frozen_axes = super().param_axes(node, in_axis, out_axis)
    return {**params_axes, 'magnitude': (out_axis,)}, frozen_axes

  def scale_update(self, node: Adapted, t: Array) -> Adapted:
    raise TypeError('DoRA has an exact merge; use path(node, t)')
