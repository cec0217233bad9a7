"""LoRA (Hu et al., 2021) and rsLoRA (Kalajdzievski, 2023), as PEFT implements them.

In PyTorch layout PEFT computes ``y = x W^T + s * (drop(x) A^T) B^T`` with ``A: [r, d_in]``,
``B: [d_out, r]``. We keep Flax layout, ``lora_a = A^T: [d_in, r]`` and
``lora_b = B^T: [r, d_out]``, so

.. math::

  y = x W_0 + s \\, (\\mathrm{drop}(x)\\, a)\\, b, \\qquad
  s = \\alpha / r \\;(\\text{rsLoRA: } \\alpha / \\sqrt{r}), \\qquad \\Delta W = s\\, a b.

The forward is two thin matmuls ``[T, d_in] @ [d_in, r] @ [r, d_out]``; the dense
``[d_in, d_out]`` product is never formed in ``apply``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters import _common
from peft_jax.adapters.core import Adapted, MethodBase

Array = jax.Array

_INITS = ('default', 'gaussian')


def lora_scaling(rank: int, alpha: float, use_rslora: bool) -> float:
  """PEFT's ``scaling``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
  return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def init_lora_factors(key: Array, w0: Array, rank: int, init: str) -> dict[str, Array]:
  """PEFT's LoRA init in Flax layout.

  ``'default'``: ``A`` kaiming-uniform(a=sqrt(5)) over fan-in ``d_in`` = ``U(±1/sqrt(d_in))``,
  ``B = 0``. ``'gaussian'``: ``A ~ N(0, (1/r)^2)``, ``B = 0``.

  Returns:
    ``{'lora_a': [d_in, r], 'lora_b': [r, d_out]}`` in float32 (or w0's float dtype).
  """
  d_in, d_out = w0.shape
  if init == 'default':
    a = _common.kaiming_uniform_a_sqrt5(key, (d_in, rank), d_in, jnp.float32)
  elif init == 'gaussian':
    a = jax.random.normal(key, (d_in, rank), jnp.float32) / rank
  else:
    raise ValueError(f'LoRA init={init!r} is not supported; valid: {_INITS}')
  return {'lora_a': a, 'lora_b': jnp.zeros((rank, d_out), jnp.float32)}


def lora_forward(
  node: Adapted, x: Array, scale: float, dropout: float, dropout_rng: Optional[Array], dtype: Any
) -> Array:
  """``x: [..., d_in] -> x base + s (drop(x) a) b``: the frozen product plus the low-rank update."""
  dtype = _common.compute_dtype(x, dtype)
  x2, lead = _common.flat2d(x)
  y = _common.dot(x2, node.base, dtype).reshape(*lead, node.base.shape[-1])
  xd = _common.dropout(x, dropout, dropout_rng)
  return y + low_rank_update(xd, node.params['lora_a'], node.params['lora_b'], scale, dtype)


def low_rank_update(x: Array, lora_a: Array, lora_b: Array, scale: float, dtype: Any) -> Array:
  """``s * (x a) b`` for ``x: [..., d_in]``, ``a: [d_in, r]``, ``b: [r, d_out]`` (2-D matmuls)."""
  x2, lead = _common.flat2d(x)
  h = _common.dot(x2, lora_a, dtype)
  y = _common.dot(h, lora_b, dtype) * jnp.asarray(scale, dtype)
  return y.reshape(*lead, lora_b.shape[-1])


@dataclasses.dataclass(frozen=True)
class LoraFamily(_common.AdditiveUpdate, MethodBase):
  """What LoRA, DoRA, PiSSA and DISeL share (the shape of PEFT's ``LoraVariant``).

  Hyper-parameters ``rank``, ``alpha``, ``dropout``, ``use_rslora`` and the scale ``s``; factors
  ``lora_a: [d_in, r]`` and ``lora_b: [r, d_out]`` with their logical axes; the low-rank forward
  ``x base + s (drop(x) a) b``; ``ΔW = s a b``; the factors PEFT saves; and the scaled update
  ``b -> t b``. A variant overrides only what differs (DoRA's magnitude, PiSSA's residual base,
  DISeL's gates).
  """

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  use_rslora: bool = False
  peft_type: ClassVar[Optional[str]] = 'LORA'
  # PEFT's ``use_dora``: the variant saves a ``lora_magnitude_vector`` beside the factors.
  use_dora: ClassVar[bool] = False

  @property
  def scale(self) -> float:
    return lora_scaling(self.rank, self.alpha, self.use_rslora)

  def check(self, w0: Array) -> None:
    _common.check_rank(self.rank, w0, type(self).__name__)

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> x base + s (drop(x) a) b: [..., d_out]``."""
    return lora_forward(node, x, self.scale, self.dropout, dropout_rng, dtype)

  def delta(self, node: Adapted) -> Array:
    """``ΔW = s a b: [d_in, d_out]``."""
    return self.scale * (node.params['lora_a'] @ node.params['lora_b'])

  def param_axes(self, node: Adapted, in_axis, out_axis):
    """Logical axes of ``(params, frozen)``: ``a`` (in, 'rank'), ``b`` ('rank', out)."""
    del node
    return {'lora_a': (in_axis, 'rank'), 'lora_b': ('rank', out_axis)}, {}

  def lora_factors(self, node: Adapted) -> tuple[Array, Array, int, float]:
    """``(a [d_in, r'], b [r', d_out], r', alpha')`` of the plain LoRA PEFT saves for the node."""
    return node.params['lora_a'], node.params['lora_b'], self.rank, self.alpha

  def scale_update(self, node: Adapted, t: Array) -> Adapted:
    """The node with ``b -> t b``: its update is ``t`` times this one's (gates untouched)."""
    params = dict(node.params, lora_b=node.params['lora_b'] * t)
    return Adapted(node.base, params, node.frozen, node.method)


@dataclasses.dataclass(frozen=True)
class LoRA(LoraFamily):
  """LoRA hyper-parameters (PEFT ``LoraConfig``: ``r``, ``lora_alpha``, ``lora_dropout``,
  ``use_rslora``, ``init_lora_weights`` in {True -> 'default', 'gaussian'}).

  Node layout: ``params = {'lora_a': [d_in, r], 'lora_b': [r, d_out]}``, ``frozen = {}``,
  ``base = W0``.
  """

  init_weights: str = 'default'
  name: str = 'lora'

  def init(self, key: Array, w0: Array) -> Adapted:
    self.check(w0)
    return Adapted(w0, init_lora_factors(key, w0, self.rank, self.init_weights), {}, self)
