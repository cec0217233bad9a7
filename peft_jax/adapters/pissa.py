"""PiSSA, principal singular values and vectors adaptation (Meng et al., 2024), as PEFT inits it.

With the thin SVD ``W0 = U S V^T`` of the Flax kernel ``W0: [d_in, d_out]`` and LoRA scale
``s``, the top-``r`` triplets initialise the factors and the rest stays frozen:

.. math::

  a_0 = U_r \\sqrt{S_r / s}\\;[d_{in}, r], \\quad b_0 = \\sqrt{S_r / s}\\, V_r^T\\;[r, d_{out}],
  \\quad W_{res} = W_0 - s\\, a_0 b_0 .

The SVD runs once, at init, in float64 on the host (NumPy/LAPACK), and the factors are then
rounded to float32. A float32 SVD's singular vectors are only accurate to about
``eps32 * ||W|| / gap`` (``gap``: the distance to the nearest other singular value), which
differs between CPUs' LAPACK builds; in float64 it is ``eps64 * ||W|| / gap`` (eps64 = 2.2e-16),
far below float32 rounding unless two singular values nearly coincide, so the stored factors are
float32 roundings of the exact ones (PEFT itself uses a float32 torch SVD, so it
agrees with this to its own float32 accuracy). Under ``jit``/``eval_shape`` the same host
computation runs through ``jax.pure_callback``.

(PEFT factors the torch weight ``W0^T``, whose left singular vectors are our ``V``, so its
``A: [r, d_in]`` and ``B: [d_out, r]`` are ``a_0^T`` and ``b_0^T``.) The forward is LoRA's
on ``W_res``: ``y = x W_res + s (drop(x) a) b``, equal to ``x W0`` at init.

Node layout: ``base = W_res``; ``params = {'lora_a', 'lora_b'}``;
``frozen = {'lora_a0', 'lora_b0'}`` (the initial factors, so ``W0 = W_res + s a0 b0`` and
``ΔW = s (a b - a0 b0)`` is relative to the original ``W0``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters import _common, lora
from peft_jax.adapters.core import Adapted

Array = jax.Array


def _pissa_factors_host(w0: np.ndarray, rank: int, scale: float):
  w = np.asarray(w0, np.float64)
  u, sv, vt = np.linalg.svd(w, full_matrices=False)
  root = np.sqrt(sv[:rank] / scale)
  a0 = u[:, :rank] * root[None, :]
  b0 = root[:, None] * vt[:rank]
  w_res = w - scale * (a0 @ b0)
  return a0.astype(np.float32), b0.astype(np.float32), w_res.astype(np.float32)


def pissa_factors(w0: Array, rank: int, scale: float) -> tuple[Array, Array, Array]:
  """Returns ``(a0 [d_in, r], b0 [r, d_out], w_res [d_in, d_out])`` (float32) from a float64
  host SVD of ``w0`` (see the module docstring)."""
  d_in, d_out = w0.shape
  if isinstance(w0, jax.core.Tracer):
    shapes = (
      jax.ShapeDtypeStruct((d_in, rank), jnp.float32),
      jax.ShapeDtypeStruct((rank, d_out), jnp.float32),
      jax.ShapeDtypeStruct((d_in, d_out), jnp.float32),
    )
    return jax.pure_callback(lambda w: _pissa_factors_host(w, rank, scale), shapes, w0)
  a0, b0, w_res = _pissa_factors_host(np.asarray(jax.device_get(w0)), rank, scale)
  return jnp.asarray(a0), jnp.asarray(b0), jnp.asarray(w_res)


@dataclasses.dataclass(frozen=True)
class PiSSA(lora.LoraFamily):
  """PiSSA hyper-parameters (PEFT ``LoraConfig(init_lora_weights='pissa', r, lora_alpha, ...)``)."""

  name: str = 'pissa'

  def init(self, key: Array, w0: Array) -> Adapted:
    del key  # exact SVD: deterministic
    self.check(w0)
    a0, b0, w_res = pissa_factors(w0, self.rank, self.scale)
    return Adapted(
      w_res.astype(w0.dtype), {'lora_a': a0, 'lora_b': b0}, {'lora_a0': a0, 'lora_b0': b0}, self
    )

  def original_weight(self, node: Adapted) -> Array:
    """``W0 = W_res + s a0 b0``."""
    return node.base + self.scale * (node.frozen['lora_a0'] @ node.frozen['lora_b0'])

  def delta(self, node: Adapted) -> Array:
    """``ΔW = s (a b - a0 b0)``, relative to the original ``W0``."""
    p, f = node.params, node.frozen
    return self.scale * (p['lora_a'] @ p['lora_b'] - f['lora_a0'] @ f['lora_b0'])

  def merge(self, node: Adapted) -> Array:
    return (node.base + self.scale * (node.params['lora_a'] @ node.params['lora_b'])).astype(
      node.base.dtype
    )

  def path(self, node: Adapted, t: Array) -> Array:
    """``W0 + t ΔW``."""
    return (self.original_weight(node) + t * self.delta(node)).astype(node.base.dtype)

  def to_lora_factors(self, node: Adapted) -> tuple[Array, Array]:
    """PEFT's PiSSA -> LoRA conversion (``subtract_mutated_init``) in Flax layout.

    Returns ``a' = [a, a0]: [d_in, 2r]`` and ``b' = [b; -b0]: [2r, d_out]``, a plain LoRA of rank
    ``2r`` on the *original* ``W0`` with the same scale (PEFT saves ``r*2``, ``alpha*2``, or
    ``alpha*sqrt(2)`` with rsLoRA).
    """
    p, f = node.params, node.frozen
    return (
      jnp.concatenate([p['lora_a'], f['lora_a0']], axis=1),
      jnp.concatenate([p['lora_b'], -f['lora_b0']], axis=0),
    )

  def lora_factors(self, node: Adapted) -> tuple[Array, Array, int, float]:
    """PEFT saves PiSSA converted (:meth:`to_lora_factors`): rank ``2r``, alpha ``2 alpha``
    (``sqrt(2) alpha`` with rsLoRA), so the scale is unchanged."""
    a, b = self.to_lora_factors(node)
    return a, b, 2 * self.rank, self.alpha * (math.sqrt(2) if self.use_rslora else 2)

  def param_axes(self, node: Adapted, in_axis, out_axis):
    params_axes, _ = super().param_axes(node, in_axis, out_axis)
    return params_axes, {'lora_a0': (in_axis, 'rank'), 'lora_b0': ('rank', out_axis)}
