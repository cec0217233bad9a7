"""The adapted-weight node and the one matmul every linear layer of our models calls.

This is the contract between models and adapters (DESIGN.md §1.3):

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
from typing import Any, Mapping, Optional, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


class AdapterMethod(Protocol):
  """What every method object provides (one per file in ``peft_jax/adapters/``).

  Method objects are frozen, hashable dataclasses holding hyper-parameters only; all arrays live
  in the :class:`Adapted` node. ``w0`` below is always the *original* pretrained kernel
  ``[d_in, d_out]``; methods that re-base the frozen weight (PiSSA's residual) keep what they need
  in ``node.frozen``.
  """

  name: str

  def init(self, key: Array, w0: Array) -> "Adapted":
    """Returns the adapted node for base kernel ``w0`` (identity map at init)."""

  def apply(self, node: "Adapted", x: Array, *, dropout_rng: Optional[Array] = None,
            dtype: Any = None) -> Array:
    """Efficient forward: ``x [..., d_in] -> [..., d_out]`` (never a dense ΔW where avoidable)."""

  def delta(self, node: "Adapted") -> Array:
    """ΔW ``[d_in, d_out]`` relative to the original pretrained kernel."""

  def merge(self, node: "Adapted") -> Array:
    """Plain kernel ``W0 + ΔW`` (or ``W0 R`` for multiplicative methods)."""

  def path(self, node: "Adapted", t: Array) -> Array:
    """Dense kernel at position ``t`` of the method's own path: ``t=0`` base, ``t=1`` merged."""


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


def dense_matmul(x: Array, kernel: Array, dtype: Any = None) -> Array:
  """``x [..., d_in] @ kernel [d_in, d_out]`` on 2-D operands, in ``dtype`` (default: x's)."""
  dtype = dtype or x.dtype
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
  y = jnp.dot(x2, kernel.astype(dtype), preferred_element_type=jnp.float32
              if dtype == jnp.bfloat16 else None)
  return y.astype(dtype).reshape(*lead, kernel.shape[-1])


def matmul(x: Array, kernel: Array | Adapted, *, dropout_rng: Optional[Array] = None,
           dtype: Any = None) -> Array:
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
