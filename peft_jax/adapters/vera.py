"""VeRA, vector-based random matrix adaptation (Kopiczko et al., 2024), as PEFT implements it.

Two frozen random projections are shared by every adapted layer of a model, sized to the largest
targeted dims: ``vera_a: [max_d_in, r]`` and ``vera_b: [r, max_d_out]`` (Flax layout; PEFT stores
``vera_A = vera_a^T: [r, max_in]`` and ``vera_B = vera_b^T: [max_out, r]``). Each layer slices them
and trains two vectors, ``lambda_d: [r]`` and ``lambda_b: [d_out]``:

.. math::

  y = x W_0 + \\lambda_b \\odot \\big((\\lambda_d \\odot (\\mathrm{drop}(x)\\, A_s))\\, B_s\\big),
  \\quad A_s = \\text{vera\\_a}[:d_{in}],\\; B_s = \\text{vera\\_b}[:, :d_{out}],

  \\Delta W = (A_s \\odot \\lambda_d) (B_s \\odot \\lambda_b)
  \\quad (\\text{no } \\alpha/r \\text{ scaling}).

**How the projections are stored once.** ``inject`` draws them once (``VeRA.init_shared``) and
every VeRA node's ``frozen`` dict holds *the same two array objects*. Passing one array object
twice into ``jax.jit`` binds one device buffer, so memory is not duplicated; ``count_params`` and
``save_adapter`` de-duplicate them (saved once as ``base_model.vera_A`` / ``vera_B``, after
checking that all nodes hold equal projections). ``load_adapter`` reads PEFT's stored projections
into the same shared form.

PEFT's init: ``vera_A ~ U(±sqrt(6 / max_in))``, ``vera_B ~ U(±sqrt(6 / r))`` (kaiming-uniform,
gain sqrt(2), fan-in = last torch dim), ``lambda_b = 0``, ``lambda_d = d_initial`` (0.1). Torch's
RNG stream cannot be reproduced in JAX; the distributions match, and parity tests load PEFT's
saved projections.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional, Sequence

import jax
import jax.numpy as jnp

from peft_jax.adapters import _common
from peft_jax.adapters.core import Adapted, MethodBase

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VeRA(_common.AdditiveUpdate, MethodBase):
  """VeRA hyper-parameters (PEFT ``VeraConfig``: ``r``, ``vera_dropout``, ``d_initial``,
  ``projection_prng_key``)."""

  rank: int = 256
  dropout: float = 0.0
  d_initial: float = 0.1
  projection_prng_key: int = 0
  name: str = 'vera'
  peft_type: ClassVar[Optional[str]] = 'VERA'
  shared_frozen: ClassVar[tuple[str, ...]] = ('vera_a', 'vera_b')

  def init_shared(self, key: Array, shapes: Sequence[tuple[int, int]]) -> dict[str, Array]:
    """Draws the shared projections for kernels of the given ``[d_in, d_out]`` shapes.

    Returns:
      ``{'vera_a': [max_d_in, r], 'vera_b': [r, max_d_out]}``, float32.
    """
    if not shapes:
      raise ValueError('VeRA.init_shared: no target shapes given')
    max_in = max(s[0] for s in shapes)
    max_out = max(s[1] for s in shapes)
    key_a, key_b = jax.random.split(key)
    bound_a = math.sqrt(6.0 / max_in)
    bound_b = math.sqrt(6.0 / self.rank)
    return {
      'vera_a': jax.random.uniform(key_a, (max_in, self.rank), jnp.float32, -bound_a, bound_a),
      'vera_b': jax.random.uniform(key_b, (self.rank, max_out), jnp.float32, -bound_b, bound_b),
    }

  def init(self, key: Array, w0: Array, shared: Optional[dict[str, Array]] = None) -> Adapted:
    """Adapted node for ``w0: [d_in, d_out]``; ``shared`` = projections from ``init_shared``
    (drawn for this kernel alone when None)."""
    if w0.ndim != 2:
      raise ValueError(f'VeRA: expected a 2-D kernel [d_in, d_out], got shape {w0.shape}')
    if self.rank < 1:
      raise ValueError(f'VeRA: rank={self.rank} must be >= 1')
    if shared is None:
      shared = self.init_shared(key, [w0.shape])
    d_in, d_out = w0.shape
    if (
      shared['vera_a'].shape[0] < d_in
      or shared['vera_b'].shape[1] < d_out
      or (shared['vera_a'].shape[1] != self.rank or shared['vera_b'].shape[0] != self.rank)
    ):
      raise ValueError(
        f'VeRA: shared projections vera_a {shared["vera_a"].shape} / vera_b '
        f'{shared["vera_b"].shape} cannot serve a kernel {tuple(w0.shape)} at rank {self.rank}; '
        f'need vera_a [>= {d_in}, {self.rank}] and vera_b [{self.rank}, >= {d_out}]'
      )
    params = {
      'lambda_d': jnp.full((self.rank,), self.d_initial, jnp.float32),
      'lambda_b': jnp.zeros((d_out,), jnp.float32),
    }
    return Adapted(w0, params, {'vera_a': shared['vera_a'], 'vera_b': shared['vera_b']}, self)

  def _sliced(self, node: Adapted) -> tuple[Array, Array]:
    d_in, d_out = node.base.shape
    return node.frozen['vera_a'][:d_in], node.frozen['vera_b'][:, :d_out]

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> x W0 + λ_b ⊙ ((λ_d ⊙ (drop(x) A_s)) B_s)``."""
    dtype = _common.compute_dtype(x, dtype)
    proj_a, proj_b = self._sliced(node)
    x2, lead = _common.flat2d(x)
    d_out = node.base.shape[-1]
    y = _common.dot(x2, node.base, dtype)
    xd = _common.dropout(x2, self.dropout, dropout_rng)
    h = _common.dot(xd, proj_a, dtype) * node.params['lambda_d'].astype(dtype)
    y = y + _common.dot(h, proj_b, dtype) * node.params['lambda_b'].astype(dtype)
    return y.reshape(*lead, d_out)

  def delta(self, node: Adapted) -> Array:
    """``ΔW = (A_s ⊙ λ_d)(B_s ⊙ λ_b): [d_in, d_out]``."""
    proj_a, proj_b = self._sliced(node)
    return (proj_a * node.params['lambda_d'][None, :]) @ (proj_b * node.params['lambda_b'][None, :])

  def param_axes(self, node: Adapted, in_axis, out_axis):
    del node, in_axis
    return (
      {'lambda_d': ('rank',), 'lambda_b': (out_axis,)},
      {'vera_a': (None, 'rank'), 'vera_b': ('rank', None)},
    )
