"""DISeL, "Learning When to Adapt" (arXiv:2605.19028): LoRA with an input-dependent sigmoid gate
per rank-one component.

Flax layout (``lora_a: [d_in, r]``, ``lora_b: [r, d_out]``, ``gate_w: [d_in, r]``, ``gate_b: [r]``),
per token, with ``x_d = drop(x)`` feeding both the gate and ``a`` (as the reference code does):

.. math::

  g(x_d) = \\sigma\\big(c\\,(x_d W_g) + b_g\\big) \\in (0,1)^r, \\qquad
  y = x W_0 + s\\, \\big(g(x_d) \\odot (x_d a)\\big)\\, b
    = x W_0 + s \\sum_i g_i(x_d)\\, (x_d a_i) b_i

with ``c = 1/sqrt(d_in)`` when ``gate_normalize`` else 1, ``s = alpha/r`` (rsLoRA
``alpha/sqrt(r)``).
Init: LoRA's (kaiming-uniform ``a``, ``b = 0``, so the layer is the identity at init), ``W_g``
kaiming-uniform(a=sqrt(5)) = ``U(±1/sqrt(d_in))``, ``b_g = gate_bias_init`` (-3: σ ≈ 0.047).

The update is input dependent, so there is no static ΔW. ``delta`` returns the fully-open,
gate-free upper bound ``s a b`` (every ``g_i = 1``); ``expected_delta(node, xs)`` returns
``s a diag(E_x[g(x)]) b`` averaged over the given inputs. Label analyses that use either as such.
``merge``/``path`` use the fully-open ``delta`` (documented approximation).

``DISeL.param_groups()`` gives the gate params (``gate_param_names``) their own learning-rate
multiplier ``gate_lr_mult`` (the reference uses 5x the base lr) and no weight decay; every trainer
reads it from the method object. ``gate_param_regex`` matches their '/'-joined tree paths.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from peft_jax.adapters import _common, lora
from peft_jax.adapters.core import Adapted, ParamGroup

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DISeL(lora.LoraFamily):
  """DISeL hyper-parameters (LoRA's plus ``gate_bias_init``, ``gate_normalize`` and the gates'
  learning-rate multiplier ``gate_lr_mult``; the gates get no weight decay)."""

  gate_bias_init: float = -3.0
  gate_normalize: bool = False
  gate_lr_mult: float = 5.0
  name: str = 'disel'
  exact_merge: ClassVar[bool] = False  # input-dependent gates: no static merged weight
  path_kind: ClassVar[str] = 'gated'
  has_gates: ClassVar[bool] = True
  peft_type: ClassVar[Optional[str]] = None
  gate_param_names: ClassVar[tuple[str, ...]] = ('gate_w', 'gate_b')
  # Full-path regex for '/'-joined param names (Adapted children are base/params/frozen), e.g.
  # 'layers_0/mlp/gate_proj/kernel/params/gate_w'. A bare '.*gate.*' would also catch gate_proj.
  gate_param_regex: ClassVar[str] = r'(.*/)?params/(gate_w|gate_b)$'

  def param_groups(self):
    group = ParamGroup(lr_multiplier=float(self.gate_lr_mult), weight_decay=False)
    return {name: group for name in self.gate_param_names}

  def init(self, key: Array, w0: Array) -> Adapted:
    self.check(w0)
    key_lora, key_gate = jax.random.split(key)
    params = lora.init_lora_factors(key_lora, w0, self.rank, 'default')
    d_in = w0.shape[0]
    params['gate_w'] = _common.kaiming_uniform_a_sqrt5(key_gate, (d_in, self.rank), d_in)
    params['gate_b'] = jnp.full((self.rank,), self.gate_bias_init, jnp.float32)
    return Adapted(w0, params, {}, self)

  def _gates2d(self, node: Adapted, x2: Array, dtype: Any) -> Array:
    logits = _common.dot(x2, node.params['gate_w'], dtype)
    if self.gate_normalize:
      logits = logits / math.sqrt(x2.shape[-1])
    return jax.nn.sigmoid(logits + node.params['gate_b'].astype(dtype))

  def gate_values(self, node: Adapted, x: Array) -> Array:
    """Gates ``g(x): [..., r]`` for inputs ``x: [..., d_in]`` (no dropout), for diagnostics."""
    x2, lead = _common.flat2d(x)
    return self._gates2d(node, x2, x.dtype).reshape(*lead, self.rank)

  def apply(
    self, node: Adapted, x: Array, *, dropout_rng: Optional[Array] = None, dtype: Any = None
  ) -> Array:
    """``x: [..., d_in] -> x W0 + s (g(x_d) ⊙ (x_d a)) b``."""
    dtype = _common.compute_dtype(x, dtype)
    x2, lead = _common.flat2d(x)
    y = _common.dot(x2, node.base, dtype)
    xd = _common.dropout(x2.astype(dtype), self.dropout, dropout_rng)
    h = _common.dot(xd, node.params['lora_a'], dtype) * self._gates2d(node, xd, dtype)
    y = y + _common.dot(h, node.params['lora_b'], dtype) * jnp.asarray(self.scale, dtype)
    return y.reshape(*lead, node.base.shape[-1])

  def delta(self, node: Adapted) -> Array:
    """Fully-open ``ΔW = s a b: [d_in, d_out]`` (all gates 1; a bound, not the real update)."""
    return super().delta(node)

  def expected_delta(self, node: Adapted, xs: Array) -> Array:
    """``s a diag(mean_x g(x)) b: [d_in, d_out]`` over inputs ``xs: [..., d_in]``."""
    mean_gate = self.gate_values(node, xs).reshape(-1, self.rank).mean(axis=0)
    return self.scale * ((node.params['lora_a'] * mean_gate[None, :]) @ node.params['lora_b'])

  def param_axes(self, node: Adapted, in_axis, out_axis):
    params_axes, frozen_axes = super().param_axes(node, in_axis, out_axis)
    return {**params_axes, 'gate_w': (in_axis, 'rank'), 'gate_b': ('rank',)}, frozen_axes
