"""The adapted-weight node and the one matmul every linear layer of our models calls.

This is the contract between models and adapters (docs/ARCHITECTURE.md, "Adapters"):

* A model's linear layer holds a ``kernel`` leaf of shape ``[d_in, d_out]`` (Flax layout; Hugging
  Face stores the transpose ``[d_out, d_in]``). It never multiplies by hand: it calls
  ``matmul(x, kernel, ...)``.
* For a plain array ``kernel`` that is ``x @ kernel``, computed on 2-D operands
  ``[tokens, d_in] @ [d_in, d_out]`` (XLA CPU is much faster on 2-D dots) in the requested dtype.
* ``inject`` replaces selected kernel leaves with an :class:`Adapted` node. ``matmul`` then runs
  the method's efficient forward ``method.apply(node, x)``; a model never needs to know which
  method is there.

An :class:`Adapted` node is a pytree: its children are arrays, its method object is static
(hashable) aux data, so a tree of nodes goes through ``jax.jit``, ``jax.grad``, ``vmap`` and
shardings like any other params tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """Optimizer treatment of one trainable array of a method's node.

  Attributes:
    lr_multiplier: factor on the schedule's learning rate (DISeL's gates: 5x in the reference).
    weight_decay: ``True``/``False`` forces decoupled weight decay on/off for the array; ``None``
      leaves it to the trainer's default rule (rank >= 2 and no no-decay name pattern).
  """

  lr_multiplier: float = 1.0
  weight_decay: Optional[bool] = None


class AdapterMethod(Protocol):
  """The whole contract of a method object (one per file in ``peft_jax/adapters/``).

  Method objects are frozen, hashable dataclasses holding hyper-parameters only; all arrays live
  in the :class:`Adapted` node. ``w0`` below is always the *original* pretrained weight; methods
  that re-base the frozen weight (PiSSA's residual) keep what they need in ``node.frozen``.
  Callers (trainer, arena, report, hub) use nothing else, so a new method is one file plus one
  ``register_method`` line. :class:`MethodBase` gives the defaults of the optional parts.

  Class-level properties:
    name: the registry name (``config.adapter.method``).
    adapts: ``'targets'`` (the linear kernels selected by PEFT target rules) or ``'all'`` (every
      parameter of the model, whatever the targets: full fine-tuning).
    exact_merge: whether :meth:`merge` gives a plain weight with the same forward as the node.
      ``False`` for input-dependent updates (DISeL's gates): evaluation then runs the node itself.
    path_kind: how the method's own path moves from base to fine-tuned: ``'additive'``
      (``W0 + t ΔW``), ``'cayley'`` (a rotation with scaled generator), ``'magnitude_direction'``
      (DoRA), ``'gated'`` (the gated update scaled, evaluated unmerged).
    has_gates: whether :meth:`gate_values` is defined (the arena's gate diagnostic).
    peft_type: the Hugging Face PEFT ``peft_type`` this method saves as (``None``: no format).
    shared_frozen: names of frozen arrays shared by all nodes of the method (VeRA's
      projections), built once by :meth:`init_shared` and counted once.
    needs_rng: whether the forward needs a dropout rng in training.
    saved_module: the node is a fully trained copy of a task-head parameter (PEFT's
      ``modules_to_save``, ``adapters.modules_to_save``), not an adapter's update.
  """

  name: str
  adapts: str
  exact_merge: bool
  path_kind: str
  has_gates: bool
  peft_type: Optional[str]
  shared_frozen: tuple[str, ...]

  @property
  def needs_rng(self) -> bool: ...

  def init_shared(self, key: Array, shapes: Any) -> Optional[dict[str, Array]]:
    """Arrays shared by every node of this method in one model (``None``: nothing shared)."""

  def init(self, key: Array, w0: Array, **shared: Any) -> 'Adapted':
    """Returns the adapted node for base weight ``w0`` (identity map at init)."""

  def apply(
    self, node: 'Adapted', x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """Efficient forward: ``x [..., d_in] -> [..., d_out]`` (never a dense ΔW where avoidable)."""

  def delta(self, node: 'Adapted') -> Array:
    """ΔW ``[d_in, d_out]`` relative to the original pretrained weight."""

  def merge(self, node: 'Adapted') -> Array:
    """Plain weight ``W0 + ΔW`` (or ``R W0`` for multiplicative methods)."""

  def path(self, node: 'Adapted', t: Array) -> Array:
    """Dense weight at position ``t`` of the method's own path: ``t=0`` base, ``t=1`` merged."""

  def scale_update(self, node: 'Adapted', t: Array) -> 'Adapted':
    """A node whose update is ``t`` times this node's, evaluated unmerged (``path_kind='gated'``)."""

  def param_axes(self, node: 'Adapted', *base_axes: Optional[str]) -> tuple[dict, dict]:
    """Logical axis names ``(params_axes, frozen_axes)`` given the base weight's axes."""

  def param_groups(self) -> Mapping[str, ParamGroup]:
    """Optimizer groups by trainable array name (absent names: the default group)."""

  def num_trainable(self, node: 'Adapted') -> int:
    """Trainable scalars of the node."""

  def num_stored(self, node: 'Adapted') -> int:
    """Scalars of the base and trainable arrays (frozen extras are counted by the caller)."""

  def gate_values(self, node: 'Adapted', x: Array) -> Array:
    """Gates ``g(x) [..., r]`` (``has_gates`` methods)."""

  def expected_delta(self, node: 'Adapted', xs: Array) -> Array:
    """ΔW averaged over inputs ``xs`` (equals :meth:`delta` for input-independent updates)."""


class MethodBase:
  """Defaults of the optional parts of :class:`AdapterMethod` (a method inherits what it keeps)."""

  adapts: ClassVar[str] = 'targets'
  exact_merge: ClassVar[bool] = True
  path_kind: ClassVar[str] = 'additive'
  has_gates: ClassVar[bool] = False
  peft_type: ClassVar[Optional[str]] = None
  shared_frozen: ClassVar[tuple[str, ...]] = ()
  saved_module: ClassVar[bool] = False

  @property
  def needs_rng(self) -> bool:
    return float(getattr(self, 'dropout', 0.0)) > 0.0

  def init_shared(self, key: Array, shapes: Any) -> Optional[dict[str, Array]]:
    del key, shapes
    return None

  def param_groups(self) -> Mapping[str, ParamGroup]:
    return {}

  def num_trainable(self, node: 'Adapted') -> int:
    return int(sum(x.size for x in jax.tree.leaves(node.params)))

  def num_stored(self, node: 'Adapted') -> int:
    return int(node.base.size) + self.num_trainable(node)

  def scale_update(self, node: 'Adapted', t: Array) -> 'Adapted':
    raise TypeError(
      f'{type(self).__name__} has an exact merge; use path(node, t) instead of scale_update'
    )

  def gate_values(self, node: 'Adapted', x: Array) -> Array:
    raise TypeError(f'{type(self).__name__} has no gates (has_gates is False)')

  def expected_delta(self, node: 'Adapted', xs: Array) -> Array:
    del xs
    return self.delta(node)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Adapted:
  """A selected weight with its adapter.

  Attributes:
    base: the frozen kernel the forward multiplies by, ``[d_in, d_out]`` (the pretrained ``W0``,
      or PiSSA's residual). Never trained by a PEFT method.
    params: dict of trainable arrays (e.g. ``{'lora_a': [d_in, r], 'lora_b': [r, d_out]}``).
    frozen: dict of frozen arrays the method also needs (VeRA's projections, PiSSA's initial
      factors, ...). May be empty.
    method: the static method object (hyper-parameters).
  """

  base: Array
  params: Mapping[str, Array]
  frozen: Mapping[str, Array]
  method: Any

  def tree_flatten(self):
    return (self.base, self.params, self.frozen), self.method

  @classmethod
  def tree_unflatten(cls, method, children):
    base, params, frozen = children
    return cls(base, params, frozen, method)

  @property
  def shape(self):
    """Shape of the kernel this node stands for, ``(d_in, d_out)``."""
    return self.base.shape

  @property
  def dtype(self):
    return self.base.dtype


def is_adapted(x: Any) -> bool:
  return isinstance(x, Adapted)


def weight_of(leaf: Any) -> Any:
  """The plain weight a model reads for a parameter leaf: the leaf itself, or, for an
  :class:`Adapted` node (full fine-tuning wraps biases, norms and embeddings too), its merge."""
  if isinstance(leaf, Adapted):
    return leaf.method.merge(leaf)
  return leaf


def dense_matmul(x: Array, kernel: Array, dtype: Any = None) -> Array:
  """``x [..., d_in] @ kernel [d_in, d_out]`` on 2-D operands, in ``dtype`` (default: x's)."""
  dtype = dtype or x.dtype
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
  y = jnp.dot(
    x2, kernel.astype(dtype), preferred_element_type=jnp.float32 if dtype == jnp.bfloat16 else None
  )
  return y.astype(dtype).reshape(*lead, kernel.shape[-1])


def matmul(
  x: Array, kernel: Array | Adapted, *, dropout_rng: Optional[Array] = None, dtype: Any = None
) -> Array:
  """The one linear-layer multiply: plain ``x @ kernel`` or the adapter's efficient forward.

  Args:
    x: ``[..., d_in]`` activations.
    kernel: ``[d_in, d_out]`` array, or an :class:`Adapted` node standing for one.
    dropout_rng: key for adapter-input dropout (LoRA ``lora_dropout``); ``None`` = deterministic.
    dtype: compute dtype (``None``: x's dtype). Trainable params stay in their own dtype.
  Returns:
    ``[..., d_out]``.
  """
  if isinstance(kernel, Adapted):
    return kernel.method.apply(kernel, x, dropout_rng=dropout_rng, dtype=dtype)
  return dense_matmul(x, kernel, dtype)
