"""Weight and activation metrics along a training trajectory (a stack of snapshots).

A trajectory is a pytree (or a single array) with a leading ``[num_snapshots]`` axis, e.g. from
:func:`stack_snapshots` over checkpoints saved during training. Every function here computes its
metric for all snapshots in one vmapped program, reusing the base's SVD / statistics once.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from peft_jax.geometry import activations, spectral

Array = jax.Array
PyTree = Any


def stack_snapshots(snapshots: Sequence[PyTree]) -> PyTree:
  """Stacks a list of equal-structure pytrees into one with leaves ``[num_snapshots, ...]``."""
  if not snapshots:
    raise ValueError('stack_snapshots needs at least one snapshot, got an empty sequence.')
  first = jax.tree.structure(snapshots[0])
  for index, snapshot in enumerate(snapshots[1:], start=1):
    if jax.tree.structure(snapshot) != first:
      raise ValueError(
        f'snapshot {index} has tree structure {jax.tree.structure(snapshot)}, '
        f'snapshot 0 has {first}.'
      )
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *snapshots)


def params_distance_trajectory(theta0: PyTree, stacked: PyTree) -> dict:
  """Global L2 distance of every snapshot from the base params.

  .. math:: dist_s = \\sqrt{\\sum_{leaves} \\lVert θ_s - θ_0 \\rVert_F^2},\\quad
            rel_s = dist_s / \\sqrt{\\sum \\lVert θ_0\\rVert_F^2}

  Args:
    theta0: base params pytree.
    stacked: snapshots with the same structure and a leading ``[num_snapshots]`` axis on each leaf.
  Returns:
    ``{'distance_from_base': [s], 'relative_distance_from_base': [s]}``.
  """
  if jax.tree.structure(theta0) != jax.tree.structure(stacked):
    raise ValueError(
      "stacked snapshots must have theta0's tree structure; got "
      f'{jax.tree.structure(stacked)} vs {jax.tree.structure(theta0)}.'
    )

  def distance(theta):
    squares = jax.tree.map(
      lambda a, b: jnp.sum((b.astype(jnp.float32) - a.astype(jnp.float32)) ** 2), theta0, theta
    )
    return jnp.sqrt(sum(jax.tree.leaves(squares)))

  base_norm = jnp.sqrt(
    sum(jnp.sum(leaf.astype(jnp.float32) ** 2) for leaf in jax.tree.leaves(theta0))
  )
  distances = jax.vmap(distance)(stacked)
  return {
    'distance_from_base': distances,
    'relative_distance_from_base': distances / (base_norm + activations.EPS),
  }


def weight_trajectory(
  w0: Array, snapshots: Array, *, layout: str = 'flax', window: int = 5
) -> dict:
  """Spectral summary and distance from base of one weight at every snapshot.

  One SVD of ``W0`` serves every snapshot; each snapshot adds the SVD of its ``ΔW``.

  Args:
    w0: pretrained weight, ``[d_in, d_out]`` (``layout='flax'``) or ``[d_out, d_in]`` ('torch').
    snapshots: ``[num_snapshots, *w0.shape]`` merged weights along training.
    layout: 'flax' or 'torch'.
    window: smoothness window.
  Returns:
    dict of ``[num_snapshots]`` arrays: the :class:`spectral.SpectralSummary` fields
    (``delta_sv_top5`` is ``[num_snapshots, min(5, k)]``), ``distance_from_base`` ``||ΔW||_F`` and
    ``relative_distance_from_base`` ``||ΔW||_F / ||W0||_F``.
  """
  if snapshots.ndim != 3 or snapshots.shape[1:] != w0.shape:
    raise ValueError(
      f'snapshots must be [num_snapshots, *w0.shape] = [s, {w0.shape}], got {snapshots.shape}.'
    )
  w0_t = spectral.as_torch_layout(w0, layout).astype(spectral.compute_dtype(w0))
  u, _, v = spectral.pretrained_svd(w0_t)

  def one(w1):
    dw = spectral.as_torch_layout(w1, layout).astype(w0_t.dtype) - w0_t
    out = spectral.summary_from_pretrained_svd(u, v, dw, window=window)._asdict()
    out['distance_from_base'] = jnp.linalg.norm(dw)
    return out

  out = jax.vmap(one)(snapshots)
  out['relative_distance_from_base'] = out['distance_from_base'] / (
    jnp.linalg.norm(w0_t) + activations.EPS
  )
  return out


def activation_trajectory(
  x0: Array, x1_snapshots: Array, *, mask: Optional[Array] = None, pca_ks: Sequence[int] = ()
) -> dict:
  """Activation metrics of every snapshot's activations against the base's, on the same prompts.

  Args:
    x0: base activations ``[..., d]``.
    x1_snapshots: ``[num_snapshots, *x0.shape[:-1], d1]`` activations of each snapshot.
    mask: optional token mask ``x0.shape[:-1]``.
    pca_ks: PCA subspace sizes (static).
  Returns:
    dict of ``[num_snapshots]`` arrays: ``cka``, ``procrustes_residual``, and when ``d1 == d``
    ``raw_residual`` and ``pca_distance_k{k}``.
  """
  if x1_snapshots.shape[1:-1] != x0.shape[:-1]:
    raise ValueError(
      f'x1_snapshots must be [num_snapshots, {x0.shape[:-1]}, d1], got {x1_snapshots.shape}.'
    )
  same_dim = x1_snapshots.shape[-1] == x0.shape[-1]

  def one(x1):
    out = {
      'cka': activations.linear_cka(x0, x1, mask=mask),
      'procrustes_residual': activations.procrustes_residual(x0, x1, mask=mask),
    }
    if same_dim:
      out['raw_residual'] = activations.raw_residual(x0, x1, mask=mask)
      for k in pca_ks:
        out[f'pca_distance_k{k}'] = activations.pca_subspace_distance(x0, x1, k, mask=mask)
    elif pca_ks:
      raise ValueError(
        f'pca_ks={tuple(pca_ks)} needs equal feature dims, got x0 {x0.shape} and '
        f'snapshots {x1_snapshots.shape}.'
      )
    return out

  return jax.vmap(one)(x1_snapshots)
