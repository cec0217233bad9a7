"""Helpers shared by the adapter methods: initialisers, dropout, dtype handling."""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def kaiming_uniform_a_sqrt5(
  key: Array, shape: tuple[int, int], fan_in: int, dtype: Any = jnp.float32
) -> Array:
  """PyTorch's ``nn.Linear`` default, ``kaiming_uniform_(a=sqrt(5))``: ``U(±1/sqrt(fan_in))``.

  With gain ``sqrt(2 / (1 + a^2)) = sqrt(1/3)`` the bound ``gain * sqrt(3 / fan_in)`` is
  ``1 / sqrt(fan_in)``.
  """
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def dropout(x: Array, rate: float, rng: Optional[Array]) -> Array:
  """Inverted dropout (``torch.nn.Dropout``): zero with prob ``rate``, scale kept by ``1/(1-rate)``.

  Deterministic (identity) when ``rng`` is None or ``rate == 0``.
  """
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def compute_dtype(x: Array, dtype: Any) -> Any:
  return dtype or x.dtype


def flat2d(x: Array) -> tuple[Array, tuple[int, ...]]:
  """``[..., d] -> [tokens, d]`` plus the leading shape (2-D dots are fastest on XLA CPU)."""
  return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def dot(a: Array, b: Array, dtype: Any) -> Array:
  """``a @ b`` in ``dtype``, accumulating in float32 for bfloat16 inputs."""
  a = a.astype(dtype)
  b = b.astype(dtype)
  if dtype == jnp.bfloat16:
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(dtype)
  return jnp.dot(a, b)


def check_rank(rank: int, w0: Array, name: str) -> None:
  """Raises if ``rank`` is not in ``[1, min(d_in, d_out)]`` for kernel ``w0 [d_in, d_out]``."""
  if w0.ndim != 2:
    raise ValueError(f'{name}: expected a 2-D kernel [d_in, d_out], got shape {w0.shape}')
  limit = min(w0.shape)
  if not 1 <= rank <= limit:
    raise ValueError(
      f'{name}: rank={rank} is invalid for a kernel of shape {tuple(w0.shape)}; '
      f'valid ranks are 1..{limit} (min(d_in, d_out))'
    )


def num_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


class AdditiveUpdate:
  """Mixin of methods whose update adds to the frozen kernel: ``node.base + ΔW``.

  A subclass defines ``delta(node)`` (relative to ``node.base``); merging, the method's own path
  ``W0 + t ΔW`` and the trainable count follow from it.
  """

  def merge(self, node) -> jax.Array:
    return (node.base + self.delta(node)).astype(node.base.dtype)

  def path(self, node, t: jax.Array) -> jax.Array:
    """Linear path ``W0 + t ΔW`` (t=0 base, t=1 merged)."""
    return (node.base + t * self.delta(node)).astype(node.base.dtype)

  def num_trainable(self, node) -> int:
    return num_params(node.params)
