"""Whole modules trained beside an adapter: PEFT's ``modules_to_save`` (a task head, typically).

A classification or regression head is new (random or freshly initialised), so no low-rank
update of it makes sense: PEFT trains a full copy of it next to the adapter
(``ModulesToSaveWrapper``) and saves that copy in the adapter file. Here every parameter of such
a module (kernel and bias alike) becomes an :class:`~peft_jax.adapters.core.Adapted` node of
:class:`ModulesToSave`: ``base`` = the weight as it was before training (frozen), ``params =
{'weight': W}`` trainable, initialised to a copy. The model multiplies by / reads ``W`` through
the same ``matmul`` / ``weight_of`` dispatch as every other node, so ``partition`` puts the head
in the trainable half, the optimizer updates it like the adapter, and ``merge`` gives the
trained head back as a plain weight.

``inject(..., modules_to_save=['classifier'])`` creates these nodes (and keeps the adapter
method off those modules); ``hub.save_adapter`` writes them as PEFT does
(``base_model.model.classifier.weight``, ``modules_to_save`` in the config) and
``hub.load_adapter`` reads them back. The class attribute ``saved_module = True`` lets callers
tell a head node from an adapter node (geometry of *the adapter's* update skips them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters.core import Adapted, MethodBase, dense_matmul

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModulesToSave(MethodBase):
  """A fully trained copy of one parameter of a saved module (see the module docstring).

  Attributes:
    module: the ``modules_to_save`` entry that selected the parameter (e.g. ``'classifier'``);
      written back to ``adapter_config.json``.
  """

  module: str = ''
  name: str = 'modules_to_save'
  saved_module: ClassVar[bool] = True
  peft_type: ClassVar[Optional[str]] = None

  def init(self, key: Array, w0: Array) -> Adapted:
    del key
    # An explicit copy: the trainable weight is donated by the train step, the base is not.
    return Adapted(w0, {'weight': jnp.array(w0, dtype=jnp.float32, copy=True)}, {}, self)

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x [..., d_in] -> x W`` with the trained weight."""
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
    return int(node.params['weight'].size)  # the trained copy replaces the base

  def param_axes(self, node: Adapted, *base_axes):
    del node
    return {'weight': tuple(base_axes)}, {}
