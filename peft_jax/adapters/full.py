"""Full fine-tuning as an adapter: a trainable dense ``ΔW`` on top of the frozen ``W0``.

``y = x (W0 + ΔW)``, ``ΔW: [d_in, d_out]`` initialised to zero, so the arena can treat full
fine-tuning like every other method (same partition / delta / path machinery).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters import _common
from peft_jax.adapters.core import Adapted

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Full(_common.AdditiveUpdate):
  """Full fine-tuning. Node layout: ``params = {'delta': [d_in, d_out]}``, ``frozen = {}``."""

  name: str = "full"

  def init(self, key: Array, w0: Array) -> Adapted:
    del key
    if w0.ndim != 2:
      raise ValueError(f"Full: expected a 2-D kernel [d_in, d_out], got shape {w0.shape}")
    return Adapted(w0, {"delta": jnp.zeros(w0.shape, jnp.float32)}, {}, self)

  def apply(self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None,
            dtype: Any = None) -> Array:
    """``x: [..., d_in] -> x (W0 + ΔW)`` (one dense matmul)."""
    del dropout_rng
    dtype = _common.compute_dtype(x, dtype)
    x2, lead = _common.flat2d(x)
    w = node.base.astype(jnp.float32) + node.params["delta"]
    return _common.dot(x2, w, dtype).reshape(*lead, node.base.shape[-1])

  def delta(self, node: Adapted) -> Array:
    return node.params["delta"]

  def param_axes(self, node: Adapted, in_axis, out_axis):
    del node
    return {"delta": (in_axis, out_axis)}, {}
