"""OFT (v2, input-centric) with exact Cayley or the Cayley–Neumann series, as in PEFT 0.21.

Parameters are PEFT's ``oft_R.weight``: ``oft_r: [n_blocks, b(b-1)/2]`` (``[1, ...]`` with
``block_share``), the strict upper triangles (``triu_indices(b, 1)``, row-major) of skew-symmetric
blocks ``Q_j = triu(v_j) - triu(v_j)^T``, ``n_blocks = d_in / b``. Each block is orthogonalised
exactly as PEFT does (the two modes are transposes of each other's target — PEFT's convention,
kept so saved adapters give the same outputs):

* Cayley–Neumann (default, ``T`` terms): ``R = I + 2Q + 2Q^2 + ... + 2Q^{T-2} + Q^{T-1}``, which
  approximates ``(I+Q)(I-Q)^{-1}`` (T=5: ``I + 2Q + 2Q^2 + 2Q^3 + Q^4``).
* exact Cayley: ``R = (I - Q)(I + Q)^{-1}``, exactly orthogonal.

R multiplies the **input** side: with ``R_bd = blockdiag(R_1..R_n): [d_in, d_in]``,

.. math::

  y = (x R_{bd}) W_0, \\qquad W' = R_{bd} W_0 \\;(\\text{Flax layout}), \\qquad
  \\Delta W = (R_{bd} - I) W_0 .

``path(t)`` scales the generator: ``W(t) = R(tQ)_{bd} W_0``, so with exact Cayley every point is an
exact rotation of ``W0``; ``dense_path(t) = W0 + t ΔW`` is the straight line for comparison.

COFT (``coft=True``): PEFT projects each block, in place under ``no_grad``, onto
``||Q_j||_F <= eps / sqrt(n_blocks)`` before every forward. Pure functions cannot mutate params,
so ``apply`` uses ``v + sg(project(v) - v)`` (same value, identity gradient, as in PEFT) and
``project_params`` is exported for a trainer that wants PEFT's stored-param behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters import _common
from peft_jax.adapters.core import Adapted, MethodBase

Array = jax.Array


def skew_from_packed(packed: Array, block_size: int) -> Array:
  """``[n, b(b-1)/2] -> [n, b, b]`` skew-symmetric, rows/cols from ``triu_indices(b, 1)``."""
  rows, cols = np.triu_indices(block_size, 1)
  n = packed.shape[0]
  upper = jnp.zeros((n, block_size, block_size), packed.dtype).at[:, rows, cols].set(packed)
  return upper - jnp.swapaxes(upper, -1, -2)


def packed_from_skew(skew: Array) -> Array:
  """Inverse of :func:`skew_from_packed`: ``[n, b, b] -> [n, b(b-1)/2]``."""
  rows, cols = np.triu_indices(skew.shape[-1], 1)
  return skew[:, rows, cols]


def cayley_neumann(q: Array, num_terms: int) -> Array:
  """PEFT's truncated series for ``q: [n, b, b]``: ``I + 2Q + 2Q^2 + ... + 2Q^{T-2} + Q^{T-1}``.

  Mirrors PEFT term by term (``T <= 1``: ``I``; ``T = 2``: ``I + 2Q``; ``T = 3`` and ``4``:
  ``I + 2Q + 2Q^2 + Q^3``).
  """
  eye = jnp.broadcast_to(jnp.eye(q.shape[-1], dtype=q.dtype), q.shape)
  r = eye
  if num_terms > 1:
    r = r + 2 * q
  if num_terms > 2:
    power = q @ q
    r = r + 2 * power
    for _ in range(3, num_terms - 1):
      power = power @ q
      r = r + 2 * power
    power = power @ q
    r = r + power
  return r


def cayley_exact(q: Array) -> Array:
  """PEFT's exact branch ``R = (I - Q)(I + Q)^{-1}`` for ``q: [n, b, b]`` (``R (I+Q) = I-Q``)."""
  eye = jnp.broadcast_to(jnp.eye(q.shape[-1], dtype=q.dtype), q.shape)
  # R (I+Q) = (I-Q)  <=>  (I+Q)^T R^T = (I-Q)^T.
  rt = jnp.linalg.solve(jnp.swapaxes(eye + q, -1, -2), jnp.swapaxes(eye - q, -1, -2))
  return jnp.swapaxes(rt, -1, -2)


def coft_project(packed: Array, block_size: int, eps: float) -> Array:
  """COFT: scale each block so ``||Q_j||_F <= eps / sqrt(n_rows)`` (PEFT ``_project_batch``)."""
  limit = eps / np.sqrt(packed.shape[0])
  frob = jnp.sqrt(2.0) * jnp.linalg.norm(packed, axis=-1, keepdims=True)  # ||Q_j||_F
  return jnp.where(frob <= limit, packed, limit * packed / jnp.maximum(frob, 1e-30))


@dataclasses.dataclass(frozen=True)
class OFT(MethodBase):
  """OFT hyper-parameters (PEFT ``OFTConfig``: ``oft_block_size``, ``use_cayley_neumann``,
  ``num_cayley_neumann_terms``, ``block_share``, ``coft``, ``eps``; ``init_weights=True`` -> zeros).

  Node layout: ``params = {'oft_r': [n_blocks or 1, b(b-1)/2]}``, ``frozen = {}``, ``base = W0``.
  """

  block_size: int = 32
  use_cayley_neumann: bool = True
  num_neumann_terms: int = 5
  block_share: bool = False
  coft: bool = False
  eps: float = 6e-5
  name: str = 'oft'
  peft_type: ClassVar[Optional[str]] = 'OFT'
  path_kind: ClassVar[str] = 'cayley'

  def num_blocks(self, d_in: int) -> int:
    if self.block_size < 1 or d_in % self.block_size:
      divisors = [b for b in range(1, d_in + 1) if d_in % b == 0]
      raise ValueError(
        f'OFT: block_size={self.block_size} does not divide d_in={d_in}; '
        f'valid block sizes: {divisors}'
      )
    return d_in // self.block_size

  def init(self, key: Array, w0: Array) -> Adapted:
    del key  # PEFT's default init is R = I (zeros)
    if w0.ndim != 2:
      raise ValueError(f'OFT: expected a 2-D kernel [d_in, d_out], got shape {w0.shape}')
    n_blocks = self.num_blocks(w0.shape[0])
    n = 1 if self.block_share else n_blocks
    b = self.block_size
    return Adapted(w0, {'oft_r': jnp.zeros((n, b * (b - 1) // 2), jnp.float32)}, {}, self)

  def generator(self, node: Adapted) -> Array:
    """Skew blocks ``Q: [n, b, b]`` (after the COFT projection when enabled)."""
    packed = node.params['oft_r']
    if self.coft:
      packed = packed + jax.lax.stop_gradient(
        coft_project(packed, self.block_size, self.eps) - packed
      )
    return skew_from_packed(packed, self.block_size)

  def rotation(self, node: Adapted, generator_scale: Array = 1.0) -> Array:
    """Blocks ``R(scale * Q): [n, b, b]`` by this method's orthogonalisation."""
    q = generator_scale * self.generator(node)
    if self.use_cayley_neumann:
      return cayley_neumann(q, self.num_neumann_terms)
    return cayley_exact(q)

  def _rotate_kernel(self, node: Adapted, blocks: Array) -> Array:
    """``R_bd @ W0`` without forming ``R_bd``: ``[n, b, b]`` blocks times ``[n, b, d_out]``."""
    d_in, d_out = node.base.shape
    n = d_in // self.block_size
    blocks = jnp.broadcast_to(blocks, (n,) + blocks.shape[1:])
    w = node.base.astype(blocks.dtype).reshape(n, self.block_size, d_out)
    return jnp.einsum('nkc,ncd->nkd', blocks, w).reshape(d_in, d_out)

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> (x R_bd) W0``: blocks of ``x`` rotated (``x_j R_j``), then ``W0``.

    ``module_dropout`` is not modelled: PEFT 0.21 constructs it but never calls it.
    """
    del dropout_rng
    dtype = _common.compute_dtype(x, dtype)
    d_in, d_out = node.base.shape
    n = d_in // self.block_size
    blocks = self.rotation(node).astype(dtype)
    blocks = jnp.broadcast_to(blocks, (n,) + blocks.shape[1:])
    x2, lead = _common.flat2d(x)
    xr = jnp.einsum('tnk,nkc->tnc', x2.astype(dtype).reshape(-1, n, self.block_size), blocks)
    y = _common.dot(xr.reshape(-1, d_in), node.base, dtype)
    return y.reshape(*lead, d_out)

  def merge(self, node: Adapted) -> Array:
    """``W' = R_bd W0``."""
    return self._rotate_kernel(node, self.rotation(node)).astype(node.base.dtype)

  def delta(self, node: Adapted) -> Array:
    return self._rotate_kernel(node, self.rotation(node)) - node.base.astype(jnp.float32)

  def path(self, node: Adapted, t: Array) -> Array:
    """``W(t) = R(t Q)_bd W0`` (generator scaled; exact Cayley keeps ``R(tQ)`` orthogonal)."""
    return self._rotate_kernel(node, self.rotation(node, t)).astype(node.base.dtype)

  def dense_path(self, node: Adapted, t: Array) -> Array:
    """Straight line ``W0 + t ΔW`` (leaves the orthogonal group for 0 < t < 1)."""
    return (node.base + t * self.delta(node)).astype(node.base.dtype)

  def project_params(self, params: dict[str, Array]) -> dict[str, Array]:
    """COFT projection of stored params (identity when ``coft`` is False)."""
    if not self.coft:
      return params
    return {**params, 'oft_r': coft_project(params['oft_r'], self.block_size, self.eps)}

  def param_axes(self, node: Adapted, in_axis, out_axis):
    del node, in_axis, out_axis
    return {'oft_r': ('blocks', None)}, {}
