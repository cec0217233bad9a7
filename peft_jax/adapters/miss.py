"""MiSS (formerly Bone; Kang & Yin) in PEFT's three modes, with PEFT's strided shard layout.

``x: [..., d_in]`` is zero-padded on the right to a multiple of ``r`` and summed over its
``ceil(d_in/r)`` consecutive chunks of length ``r`` (so coordinate ``c`` lands in slot ``c mod r``:
a *strided* aggregation, PEFT's layout):

* ``'balance'`` (PEFT ``init_weights=True``): ``miss_block = D: [r, d_out]``, zeros.
  ``y = x W0 + S(drop(x)) D`` with ``S(x)_k = Σ_j x_{j r + k}``; ``ΔW[c, o] = D[c mod r, o]``.
* ``'mini'``: ``miss_block = m: [r, mini_r]`` tiled over outputs, ``D[k, o] = m[k, o mod mini_r]``
  (requires ``d_out % mini_r == 0``).
* ``'bat'``: ``miss_block = B: [d_out/r, r, r]``, block-affine on the weight itself (requires
  ``r | d_in`` and ``r | d_out``). In torch layout ``W^T: [d_out, d_in]``, for each ``r × r``
  block ``(i_out, i_in)``: ``ΔW^T_blk = W^T_blk B[i_out] + B[i_out]``. The forward multiplies by
  the dense ``W0 + ΔW`` as PEFT does (dropout is not used in this mode, as in PEFT).

No ``alpha`` scaling in any mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters import _common
from peft_jax.adapters.core import Adapted, MethodBase

Array = jax.Array

_MODES = ('balance', 'bat', 'mini')


def strided_sum(x: Array, rank: int) -> Array:
  """``x: [T, d_in] -> [T, r]``: ``S_k = Σ_j x_{j r + k}`` (d_in padded to a multiple of r)."""
  pad = (-x.shape[-1]) % rank
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)))
  return x.reshape(x.shape[0], -1, rank).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class MiSS(_common.AdditiveUpdate, MethodBase):
  """MiSS hyper-parameters (PEFT ``MissConfig``: ``r``, ``mini_r``, ``miss_dropout``,
  ``init_weights`` in {True -> 'balance', 'bat', 'mini'}).

  Node layout: ``params = {'miss_block': ...}`` (shape by mode, module docstring), ``frozen = {}``.
  """

  rank: int = 64
  mode: str = 'balance'
  mini_r: int = 1
  dropout: float = 0.0
  name: str = 'miss'
  peft_type: ClassVar[Optional[str]] = 'MISS'

  def _check(self, w0: Array) -> None:
    if w0.ndim != 2:
      raise ValueError(f'MiSS: expected a 2-D kernel [d_in, d_out], got shape {w0.shape}')
    d_in, d_out = w0.shape
    if self.mode not in _MODES:
      raise ValueError(f'MiSS: mode={self.mode!r} is invalid; valid modes: {_MODES}')
    if not 1 <= self.rank <= d_in:
      raise ValueError(
        f'MiSS: rank={self.rank} is invalid for a kernel {tuple(w0.shape)}; '
        f'valid ranks are 1..{d_in} (d_in)'
      )
    if self.mode == 'bat' and (d_in % self.rank or d_out % self.rank):
      raise ValueError(f"MiSS 'bat': rank={self.rank} must divide d_in={d_in} and d_out={d_out}")
    if self.mode == 'mini' and (self.mini_r < 1 or d_out % self.mini_r):
      raise ValueError(f"MiSS 'mini': mini_r={self.mini_r} must divide d_out={d_out}")

  def init(self, key: Array, w0: Array) -> Adapted:
    del key  # all of PEFT's MiSS inits are zeros
    self._check(w0)
    d_in, d_out = w0.shape
    shape = {
      'balance': (self.rank, d_out),
      'mini': (self.rank, self.mini_r),
      'bat': (d_out // self.rank, self.rank, self.rank),
    }[self.mode]
    return Adapted(w0, {'miss_block': jnp.zeros(shape, jnp.float32)}, {}, self)

  def _shard_matrix(self, node: Adapted) -> Array:
    """``D: [r, d_out]`` of the balance / mini modes."""
    block = node.params['miss_block']
    if self.mode == 'mini':
      return jnp.tile(block, (1, node.base.shape[1] // self.mini_r))
    return block

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> [..., d_out]`` (see module docstring per mode)."""
    dtype = _common.compute_dtype(x, dtype)
    x2, lead = _common.flat2d(x)
    d_out = node.base.shape[1]
    if self.mode == 'bat':
      y = _common.dot(x2, node.base.astype(jnp.float32) + self.delta(node), dtype)
      return y.reshape(*lead, d_out)
    y = _common.dot(x2, node.base, dtype)
    xd = _common.dropout(x2.astype(dtype), self.dropout, dropout_rng)
    y = y + _common.dot(strided_sum(xd, self.rank), self._shard_matrix(node), dtype)
    return y.reshape(*lead, d_out)

  def delta(self, node: Adapted) -> Array:
    """``ΔW: [d_in, d_out]`` (float32)."""
    d_in, d_out = node.base.shape
    r = self.rank
    if self.mode == 'bat':
      block = node.params['miss_block'].astype(jnp.float32)  # [d_out/r, r, r]
      w_t = node.base.astype(jnp.float32).T  # [d_out, d_in]
      blocks = w_t.reshape(d_out // r, r, d_in // r, r)  # [io, a, ii, k]
      delta_t = jnp.einsum('oaik,okc->oaic', blocks, block) + block[:, :, None, :]
      return delta_t.reshape(d_out, d_in).T
    shard = self._shard_matrix(node).astype(jnp.float32)  # [r, d_out]
    reps = -(-d_in // r)
    return jnp.tile(shard, (reps, 1))[:d_in]

  def param_axes(self, node: Adapted, in_axis, out_axis):
    del node, in_axis
    if self.mode == 'balance':
      return {'miss_block': ('rank', out_axis)}, {}
    if self.mode == 'mini':
      return {'miss_block': ('rank', None)}, {}
    return {'miss_block': (None, 'rank', None)}, {}
