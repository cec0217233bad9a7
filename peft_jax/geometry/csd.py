"""Capability-Conditioned Drift (CSD): how far an update moves a module on a capability's inputs.

PEFT-Arena (docs/METRICS.md, "Capability-Conditioned Drift (CSD)"). ``h`` are the *input* activations of the analysed linear
module, captured from the **base** model on the prompts of one capability distribution ``D``
(general or target), every non-padding token pooled. With ``ΔW = W1 - W0`` of the same module
(papers' layout ``y = W h``; ours ``y = h @ kernel``, so ``ΔW h`` is ``h @ Δkernel``) and
``ε = 1e-12``:

.. math::
  CSD_{abs}(D) = E_t \\lVert ΔW h_t \\rVert^2
  CSD_{rel}(D) = E_t \\lVert ΔW h_t\\rVert^2 / (E_t \\lVert W_0 h_t\\rVert^2 + ε)
  CSD_{un}(D) = E_t \\lVert ΔW h_t\\rVert^2 /
                ((\\lVert ΔW\\rVert_F^2 + ε)(E_t \\lVert h_t\\rVert^2 + ε))

and the general/target ratios ``CSD_{G,·} / (CSD_{T,·} + ε)`` for *rel* and *un*.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from peft_jax.geometry import spectral

Array = jax.Array

CSD_EPS = 1e-12


class CSDResult(NamedTuple):
  """CSD of one module on one capability distribution."""

  abs: Array  # shape=(), E ||ΔW h||²
  rel: Array  # shape=(), relative to E ||W0 h||²
  un: Array  # shape=(), update-normalised


class CSDComparison(NamedTuple):
  """CSD on general and target data and their ratios."""

  general: CSDResult
  target: CSDResult
  rel_ratio: Array  # shape=(), CSD_G,rel / (CSD_T,rel + ε)
  un_ratio: Array  # shape=(), CSD_G,un / (CSD_T,un + ε)


def _flat_tokens(h: Array, mask: Optional[Array], compute_dtype):
  """``h [..., d_in]`` -> ``[n, d_in]`` float32 and token weights ``[n]`` (1 real, 0 padding)."""
  h2 = h.reshape(-1, h.shape[-1]).astype(compute_dtype)
  if mask is None:
    weights = jnp.ones((h2.shape[0],), jnp.float32)
  else:
    if mask.shape != h.shape[:-1]:
      raise ValueError(
        f'mask shape {mask.shape} must equal the token dims of h {h.shape[:-1]} (h: {h.shape}).'
      )
    weights = mask.reshape(-1).astype(compute_dtype)
  return h2, weights


def csd(
  h: Array, w0: Array, w1: Array, *, mask: Optional[Array] = None, layout: str = 'flax'
) -> CSDResult:
  """CSD (abs, rel, un) of the update ``w1 - w0`` on input activations ``h``.

  Args:
    h: base-model input activations of the module, ``[..., d_in]`` (e.g. ``[batch, seq, d_in]`` or
      pooled ``[n, d_in]``); cast to float32 (PEFT-Arena stores fp16 and computes in fp32).
    w0: pretrained kernel ``[d_in, d_out]`` (``layout='flax'``) or ``W0 [d_out, d_in]`` ('torch').
    w1: fine-tuned (merged) kernel, same shape and layout.
    mask: optional ``h.shape[:-1]`` array, 1 for real tokens and 0 for padding.
    layout: 'flax' or 'torch'.
  Returns:
    :class:`CSDResult` of scalars.
  """
  if w0.shape != w1.shape:
    raise ValueError(f'w0 and w1 must have the same shape, got {w0.shape} and {w1.shape}.')
  dtype = jnp.result_type(spectral.compute_dtype(w0), spectral.compute_dtype(h))
  w0_t = spectral.as_torch_layout(w0, layout).astype(dtype)
  dw_t = spectral.as_torch_layout(w1, layout).astype(dtype) - w0_t
  if h.shape[-1] != w0_t.shape[1]:
    raise ValueError(
      f"h's last dim {h.shape[-1]} must equal the module's d_in {w0_t.shape[1]} "
      f'(h: {h.shape}, w0: {w0.shape}, layout={layout!r}).'
    )
  h2, weights = _flat_tokens(h, mask, dtype)
  count = jnp.sum(weights)
  update_out = h2 @ dw_t.T  # [n, d_out] = ΔW h_t for every token
  base_out = h2 @ w0_t.T
  mean_update_sq = jnp.sum(weights * jnp.sum(update_out**2, axis=-1)) / count
  mean_base_sq = jnp.sum(weights * jnp.sum(base_out**2, axis=-1)) / count
  mean_input_sq = jnp.sum(weights * jnp.sum(h2**2, axis=-1)) / count
  dw_fro_sq = jnp.sum(dw_t**2)
  return CSDResult(
    abs=mean_update_sq,
    rel=mean_update_sq / (mean_base_sq + CSD_EPS),
    un=mean_update_sq / ((dw_fro_sq + CSD_EPS) * (mean_input_sq + CSD_EPS)),
  )


def csd_general_vs_target(
  h_general: Array,
  h_target: Array,
  w0: Array,
  w1: Array,
  *,
  general_mask: Optional[Array] = None,
  target_mask: Optional[Array] = None,
  layout: str = 'flax',
) -> CSDComparison:
  """CSD on general and on target inputs of the same module, and the general/target ratios.

  Args:
    h_general: base-model module inputs on general prompts, ``[..., d_in]``.
    h_target: base-model module inputs on target prompts, ``[..., d_in]`` (any token count).
    w0: pretrained kernel (see :func:`csd`).
    w1: fine-tuned kernel.
    general_mask: padding mask for ``h_general`` (optional).
    target_mask: padding mask for ``h_target`` (optional).
    layout: 'flax' or 'torch'.
  Returns:
    :class:`CSDComparison`; a high ``rel_ratio``/``un_ratio`` means the update acts more on general
    inputs than on the target's (the paper finds general CSD correlates with forgetting).
  """
  general = csd(h_general, w0, w1, mask=general_mask, layout=layout)
  target = csd(h_target, w0, w1, mask=target_mask, layout=layout)
  return CSDComparison(
    general=general,
    target=target,
    rel_ratio=general.rel / (target.rel + CSD_EPS),
    un_ratio=general.un / (target.un + CSD_EPS),
  )


def csd_from_moments(
  count: Array, mean: Array, comoment: Array, w0: Array, w1: Array, *, layout: str = 'flax'
) -> CSDResult:
  """CSD from streamed input moments (memory ``d_in x d_in``, any number of tokens).

  With the uncentered second moment ``S = M / n + μ μᵀ`` (``M = Σ_t (h_t - μ)(h_t - μ)ᵀ``),
  ``E ||A h||² = tr(A S Aᵀ)``, so every CSD term is a trace:
  ``E||ΔW h||² = Σ (ΔW S) ∘ ΔW``, ``E||W0 h||² = Σ (W0 S) ∘ W0``, ``E||h||² = tr S``.
  Feed ``count``, ``mean0`` and ``comoment00`` of an
  :class:`peft_jax.geometry.activations.ActivationStatsState` accumulated over the module's input
  activations (pass the same batch as both ``x0`` and ``x1``).

  Args:
    count: number of tokens ``n``.
    mean: ``[d_in]`` token mean ``μ``.
    comoment: ``[d_in, d_in]`` centered co-moment ``M``.
    w0: pretrained kernel (see :func:`csd`).
    w1: fine-tuned kernel.
    layout: 'flax' or 'torch'.
  Returns:
    :class:`CSDResult`, equal to :func:`csd` on the streamed tokens.
  """
  if w0.shape != w1.shape:
    raise ValueError(f'w0 and w1 must have the same shape, got {w0.shape} and {w1.shape}.')
  dtype = jnp.result_type(spectral.compute_dtype(w0), comoment.dtype)
  w0_t = spectral.as_torch_layout(w0, layout).astype(dtype)
  dw_t = spectral.as_torch_layout(w1, layout).astype(dtype) - w0_t
  if comoment.shape != (w0_t.shape[1],) * 2 or mean.shape != (w0_t.shape[1],):
    raise ValueError(
      f'mean {mean.shape} / comoment {comoment.shape} must be [d_in] / '
      f"[d_in, d_in] with the module's d_in = {w0_t.shape[1]}."
    )
  second_moment = comoment / count + jnp.outer(mean, mean)
  mean_update_sq = jnp.sum((dw_t @ second_moment) * dw_t)
  mean_base_sq = jnp.sum((w0_t @ second_moment) * w0_t)
  mean_input_sq = jnp.trace(second_moment)
  return CSDResult(
    abs=mean_update_sq,
    rel=mean_update_sq / (mean_base_sq + CSD_EPS),
    un=mean_update_sq / ((jnp.sum(dw_t**2) + CSD_EPS) * (mean_input_sq + CSD_EPS)),
  )
