"""Paths from the base model to the fine-tuned model, evaluated on an α-grid as one program.

PEFT-Arena's interpolation / rewinding study (docs/METRICS.md, "Paths: interpolation and rewinding"):

* the additive path ``θ(α) = θ0 + α (θ1 - θ0)`` on any params pytree (for a merged weight,
  ``W0 + α ΔW``);
* a method's own path (OFT: scale the Cayley generator), supplied as a function
  ``path_fn(tree, α) -> params`` (``peft_jax.adapters.api.path``), stacked by
  :func:`method_path_grid`.

An α-grid of parameters is one pytree with a leading ``[num_alphas]`` axis;
:func:`evaluate_alpha_grid`
runs an evaluation function over every α as one compiled program (``jax.vmap`` or ``jax.lax.map``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any


def _check_same_structure(theta0: PyTree, theta1: PyTree) -> None:
  s0, s1 = jax.tree.structure(theta0), jax.tree.structure(theta1)
  if s0 != s1:
    raise ValueError(f'theta0 and theta1 must have the same tree structure; got\n{s0}\nand\n{s1}.')
  for path_and_leaf0, leaf1 in zip(
    jax.tree_util.tree_leaves_with_path(theta0), jax.tree.leaves(theta1)
  ):
    path, leaf0 = path_and_leaf0
    if jnp.shape(leaf0) != jnp.shape(leaf1):
      raise ValueError(
        f'leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf0)} in theta0 '
        f'but {jnp.shape(leaf1)} in theta1.'
      )


def interpolate(theta0: PyTree, theta1: PyTree, alpha: Array | float) -> PyTree:
  """Additive path ``θ(α) = θ0 + α (θ1 - θ0)`` leaf by leaf (``α = 0``: base, ``α = 1``: tuned).

  Args:
    theta0: base params pytree.
    theta1: fine-tuned params pytree, same structure and shapes.
    alpha: scalar (may be traced).
  Returns:
    pytree like ``theta0``; each leaf keeps ``theta0``'s dtype.
  """
  _check_same_structure(theta0, theta1)
  return jax.tree.map(lambda a, b: (a + alpha * (b - a)).astype(jnp.result_type(a)), theta0, theta1)


def alpha_grid_params(theta0: PyTree, theta1: PyTree, alphas: Array) -> PyTree:
  """The additive path at every α, stacked: each leaf ``[num_alphas, *leaf.shape]``.

  Args:
    theta0: base params.
    theta1: fine-tuned params.
    alphas: ``[num_alphas]``.
  """
  alphas = jnp.asarray(alphas)
  if alphas.ndim != 1:
    raise ValueError(f'alphas must be 1-D [num_alphas], got shape {alphas.shape}.')
  _check_same_structure(theta0, theta1)
  return jax.vmap(lambda a: interpolate(theta0, theta1, a))(alphas)


def method_path_grid(
  tree: PyTree,
  alphas: Array,
  path_fn: Callable[[PyTree, Array], PyTree],
  *,
  schedule: Optional[Callable[[Array], Array]] = None,
) -> PyTree:
  """A method's own path at every α, stacked along a leading ``[num_alphas]`` axis.

  Args:
    tree: adapted params tree (``Adapted`` nodes from ``inject``).
    alphas: ``[num_alphas]``.
    path_fn: ``(tree, t) -> params`` with plain kernels (e.g. ``peft_jax.adapters.api.path``,
      where OFT's generator is scaled by ``t``); must be traceable in ``t``.
    schedule: optional map ``α -> t`` applied before ``path_fn``. PEFT-Arena's table caption
      scales the Cayley generator as ``sqrt(α) Q`` (docs/METHODS.md, "Paths"): pass
      ``schedule=jnp.sqrt`` for that parameterisation; default ``t = α``.
  Returns:
    the stacked params pytree.
  """
  alphas = jnp.asarray(alphas)
  if alphas.ndim != 1:
    raise ValueError(f'alphas must be 1-D [num_alphas], got shape {alphas.shape}.')
  positions = alphas if schedule is None else jax.vmap(schedule)(alphas)
  return jax.vmap(lambda t: path_fn(tree, t))(positions)


@functools.partial(jax.jit, static_argnames=('eval_fn', 'mode'))
def _evaluate_stacked_jit(stacked_params, *, eval_fn, mode):
  if mode == 'vmap':
    return jax.vmap(eval_fn)(stacked_params)
  return jax.lax.map(eval_fn, stacked_params)


@functools.partial(jax.jit, static_argnames=('eval_fn', 'mode'))
def _evaluate_alpha_grid_jit(theta0, theta1, alphas, *, eval_fn, mode):
  def at_alpha(alpha):
    return eval_fn(interpolate(theta0, theta1, alpha))

  if mode == 'vmap':
    return jax.vmap(at_alpha)(alphas)
  return jax.lax.map(at_alpha, alphas)


def _check_mode(mode: str) -> None:
  if mode not in ('vmap', 'map'):
    raise ValueError(f"mode={mode!r} is not valid; valid modes are ('vmap', 'map').")


def evaluate_stacked(
  eval_fn: Callable[[PyTree], Any], stacked_params: PyTree, *, mode: str = 'vmap'
) -> Any:
  """Runs ``eval_fn`` on every slice of a stacked params pytree as one compiled program.

  The compiled program is cached on ``(eval_fn, mode, shapes)``: calling again with the same
  ``eval_fn`` object and shapes does not recompile.

  Args:
    eval_fn: ``params -> pytree of arrays`` (e.g. a dict of scalar metrics); traced once. Must be
      hashable (a plain function is).
    stacked_params: pytree whose leaves share a leading axis.
    mode: 'vmap' (one batched program; memory x num_alphas) or 'map' (``jax.lax.map``: one
      compiled loop, memory of one evaluation).
  Returns:
    ``eval_fn``'s output with a leading ``[num_alphas]`` axis on each leaf.
  """
  _check_mode(mode)
  return _evaluate_stacked_jit(stacked_params, eval_fn=eval_fn, mode=mode)


def evaluate_alpha_grid(
  eval_fn: Callable[[PyTree], Any],
  theta0: PyTree,
  theta1: PyTree,
  alphas: Array,
  *,
  mode: str = 'vmap',
) -> Any:
  """Evaluates the additive path at every α as one compiled program.

  The grid of params is built inside the same jit as the evaluation, so only ``theta0``,
  ``theta1`` and ``alphas`` cross the host boundary. Cached like :func:`evaluate_stacked`.

  Args:
    eval_fn: ``params -> pytree of arrays`` (hashable).
    theta0: base params.
    theta1: fine-tuned params.
    alphas: ``[num_alphas]``.
    mode: 'vmap' or 'map' (see :func:`evaluate_stacked`).
  Returns:
    ``eval_fn``'s outputs stacked along a leading ``[num_alphas]`` axis.
  """
  _check_mode(mode)
  alphas = jnp.asarray(alphas)
  if alphas.ndim != 1:
    raise ValueError(f'alphas must be 1-D [num_alphas], got shape {alphas.shape}.')
  _check_same_structure(theta0, theta1)
  return _evaluate_alpha_grid_jit(theta0, theta1, alphas, eval_fn=eval_fn, mode=mode)


def pareto_front(points: Array) -> Array:
  """Mask of the non-dominated points when every coordinate is to be maximised.

  Point ``i`` is dominated when some ``j`` has ``p_j >= p_i`` in every coordinate and ``>`` in one.

  Args:
    points: ``[m, c]`` (e.g. columns target score, general score).
  Returns:
    ``[m]`` bool, True on the Pareto front (duplicates of a front point are all kept).
  """
  points = jnp.asarray(points)
  if points.ndim != 2:
    raise ValueError(f'points must be [num_points, num_objectives], got shape {points.shape}.')
  geq = jnp.all(points[:, None, :] >= points[None, :, :], axis=-1)  # [j, i]: p_j >= p_i
  gt = jnp.any(points[:, None, :] > points[None, :, :], axis=-1)
  dominated = jnp.any(geq & gt, axis=0)
  return ~dominated


def best_tradeoff(alphas: Array, target: Array, general: Array, weight: float = 0.5):
  """The α maximising ``weight * target + (1 - weight) * general``.

  Args:
    alphas: ``[m]`` grid.
    target: ``[m]`` target-domain score at each α (higher is better).
    general: ``[m]`` general-capability score at each α (higher is better).
    weight: in ``[0, 1]``; 1 picks the best target score, 0 the best general score. Ties go to
      the smallest index (the earliest α on the grid).
  Returns:
    ``(alpha, index, score)`` scalars.
  """
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f'weight must be in [0, 1], got {weight}.')
  alphas, target, general = (jnp.asarray(alphas), jnp.asarray(target), jnp.asarray(general))
  if not alphas.shape == target.shape == general.shape or alphas.ndim != 1:
    raise ValueError(
      f'alphas, target, general must be equal-length 1-D arrays, got '
      f'{alphas.shape}, {target.shape}, {general.shape}.'
    )
  scores = weight * target + (1.0 - weight) * general
  index = jnp.argmax(scores)
  return alphas[index], index, scores[index]


def linspace_alphas(num: int = 11) -> np.ndarray:
  """``num`` equally spaced α in ``[0, 1]`` (11 gives steps of 0.1), float32."""
  if num < 2:
    raise ValueError(f'num must be >= 2, got {num}.')
  return np.linspace(0.0, 1.0, num, dtype=np.float32)
