"""Full fine-tuning as a method: the weight itself is trainable, the pretrained copy kept frozen.

``Full(scope='everything')`` (the default, as PEFT-Arena's full FT) adapts every parameter of the
model, kernels, biases, norm scales and embeddings alike, whatever the targets;
``Full(scope='linear')`` adapts only the linear kernels the target rules select (PEFT target
semantics), leaving embeddings and norms frozen.

Node layout: ``base = W0`` (frozen), ``params = {'weight': W}`` with ``W`` initialised to a copy of
``W0``. The forward multiplies by ``W`` exactly as an unadapted layer multiplies by its kernel,
and AdamW updates ``W`` exactly as it would update the plain parameter (the same array name
rules decide its weight decay), so training through ``Full`` is training the weights directly;
the frozen copy gives ``ΔW = W − W0``, the linear path ``W0 + t ΔW`` and the reference policy
for free, at the cost of one extra copy of the adapted weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters.core import Adapted, MethodBase, dense_matmul

Array = jax.Array
SCOPES = ('everything', 'linear')


@dataclasses.dataclass(frozen=True)
class Full(MethodBase):
  """Full fine-tuning (``scope``: ``'everything'`` or ``'linear'``; see the module docstring)."""

  scope: str = 'everything'
  name: str = 'full'
  peft_type: ClassVar[Optional[str]] = None

  def __post_init__(self):
    if self.scope not in SCOPES:
      raise ValueError(f'Full: scope={self.scope!r}; valid: {SCOPES}')

  @property
  def adapts(self) -> str:  # type: ignore[override]
    return 'all' if self.scope == 'everything' else 'targets'

  def init(self, key: Array, w0: Array) -> Adapted:
    del key
    # An explicit copy: the trainable weight is donated by the train step, the base is not.
    weight = jnp.array(w0, dtype=jnp.float32, copy=True)
    return Adapted(w0, {'weight': weight}, {}, self)

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> x W`` (the plain layer's matmul on the trained weight)."""
    del dropout_rng
    return dense_matmul(x, node.params['weight'], dtype)

  def merge(self, node: Adapted) -> Array:
    return node.params['weight'].astype(node.base.dtype)

  def delta(self, node: Adapted) -> Array:
    return node.params['weight'].astype(jnp.float32) - node.base.astype(jnp.float32)

  def path(self, node: Adapted, t: Array) -> Array:
    """``W0 + t (W − W0)``."""
    return (node.base + t * self.delta(node)).astype(node.base.dtype)

  def num_stored(self, node: Adapted) -> int:
    return int(node.params['weight'].size)  # the trained weight replaces the base

  def param_axes(self, node: Adapted, *base_axes):
    del node
    return {'weight': tuple(base_axes)}, {}
