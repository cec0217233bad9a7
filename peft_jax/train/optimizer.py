"""Optimizer construction: AdamW, warmup + decay schedule, clipping, decay mask, lr groups.

.. math::
   g \\leftarrow g \\cdot \\min(1, c / \\lVert g \\rVert_2), \\quad
   u = -\\eta_t \\, m_p \\, (\\mathrm{adam}(g) + \\lambda \\, \\mathbb{1}[\\text{decay } p] \\, p)

with ``η_t`` linear warmup to ``peak_lr`` over ``warmup_steps`` then cosine (or linear) decay to
``peak_lr * final_lr_fraction`` at ``total_steps``, and ``m_p`` the learning-rate multiplier of
the first ``lr_groups`` pattern that fully matches parameter ``p``'s '/'-joined name.

The peak learning rate is a runtime value, not a constant of the compiled program: it lives in
the optimizer state (:class:`PeakLRState`, like ``optax.inject_hyperparams``) and the schedule is
evaluated from it inside the step, with the same float32 operations as a schedule built from a
constant peak. One compiled train step therefore serves every rate of a learning-rate sweep
(:func:`with_peak_lr` sets the rate of a fresh state), and a checkpoint carries its rate.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from peft_jax.adapters.core import ParamGroup
from peft_jax.common.trees import path_name

PyTree = Any
# Parameters never decayed: biases, norm scales and any tensor of rank < 2.
DEFAULT_NO_DECAY_PATTERNS = (r'.*bias.*', r'.*norm.*', r'.*scale')


def lr_schedule(
  peak_lr: float,
  total_steps: int,
  warmup_steps: int = 0,
  decay: str = 'cosine',
  final_lr_fraction: float = 0.0,
) -> optax.Schedule:
  """Linear warmup from 0 to ``peak_lr``, then ``'cosine'``, ``'linear'`` or ``'constant'``."""
  if decay not in ('cosine', 'linear', 'constant'):
    raise ValueError(f"schedule decay {decay!r} must be one of 'cosine', 'linear', 'constant'")
  if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f'need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total_steps > 0'
    )
  end = peak_lr * final_lr_fraction
  decay_steps = max(total_steps - warmup_steps, 1)
  if decay == 'cosine':
    main = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=final_lr_fraction)
  elif decay == 'linear':
    main = optax.linear_schedule(peak_lr, end, decay_steps)
  else:
    main = optax.constant_schedule(peak_lr)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, peak_lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def _first_match(name: str, patterns: Sequence[tuple[str, Any]], default: Any) -> Any:
  for pattern, value in patterns:
    if re.fullmatch(pattern, name):
      return value
  return default


def _groups_like(params: PyTree, groups: Optional[PyTree]) -> PyTree:
  """The method parameter groups for each leaf of ``params`` (default groups when not given)."""
  if groups is None:
    return jax.tree.map(lambda _: ParamGroup(), params)
  return groups


def decay_mask(
  params: PyTree,
  no_decay_patterns: Iterable[str] = DEFAULT_NO_DECAY_PATTERNS,
  groups: Optional[PyTree] = None,
) -> PyTree:
  """True for leaves that get weight decay.

  A method's parameter group decides when it says (``ParamGroup.weight_decay`` True/False, e.g.
  DISeL's gates: no decay); otherwise the rule: rank >= 2 and no name in ``no_decay_patterns``.
  ``groups``: tree of ``ParamGroup`` like ``params`` (``peft_jax.adapters.param_groups``).
  """
  patterns = [(p, False) for p in no_decay_patterns]

  def one(path, x, group):
    if group.weight_decay is not None:
      return bool(group.weight_decay)
    return bool(x.ndim >= 2 and _first_match(path_name(path), patterns, True))

  return jax.tree_util.tree_map_with_path(one, params, _groups_like(params, groups))


def lr_multipliers(
  params: PyTree, lr_groups: Sequence[tuple[str, float]] = (), groups: Optional[PyTree] = None
) -> PyTree:
  """Tree of Python floats per leaf: the method group's multiplier times the multiplier of the
  first ``(regex, mult)`` of ``lr_groups`` matching the leaf's '/'-joined name (1 if none)."""
  for pattern, _ in lr_groups:
    re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
    lambda path, _, group: (
      float(group.lr_multiplier) * float(_first_match(path_name(path), lr_groups, 1.0))
    ),
    params,
    _groups_like(params, groups),
  )


def scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
  """``u_p <- m_p u_p`` with a static multiplier per parameter (same structure as the params)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(init_fn, update_fn)


class PeakLRState(NamedTuple):
  """State of :func:`scale_by_peak_lr_schedule`: the update count and the peak learning rate."""

  count: jax.Array  # [] int32, updates applied
  peak_lr: jax.Array  # [] float32, the schedule's peak (a runtime value)


class PeakSchedule:
  """``η_t`` as a function of the step and of a (possibly traced) peak learning rate.

  ``schedule(count)`` is the schedule at the configured peak (an ``optax.Schedule``);
  ``schedule.at(count, peak_lr)`` at any peak; both build :func:`lr_schedule` with the peak as a
  value, so their float32 arithmetic is the same.
  """

  def __init__(self, peak_lr: float, **kwargs):
    lr_schedule(float(peak_lr), **kwargs)  # validates the settings now, with their names
    self.peak_lr = float(peak_lr)
    self.kwargs = kwargs

  def at(self, count, peak_lr):
    return lr_schedule(peak_lr, **self.kwargs)(count)

  def __call__(self, count):
    return self.at(count, self.peak_lr)


def scale_by_peak_lr_schedule(schedule: PeakSchedule) -> optax.GradientTransformation:
  """``u <- -η_t u`` with ``η_t = schedule.at(count, state.peak_lr)``; the peak starts at
  ``schedule.peak_lr`` (``optax.scale_by_learning_rate`` with the peak in the state)."""

  def init_fn(params):
    del params
    return PeakLRState(
      count=jnp.zeros([], jnp.int32), peak_lr=jnp.asarray(schedule.peak_lr, jnp.float32)
    )

  def update_fn(updates, state, params=None):
    del params
    step_size = -1 * schedule.at(state.count, state.peak_lr)
    updates = jax.tree.map(lambda u: jnp.array(step_size, dtype=u.dtype) * u, updates)
    return updates, PeakLRState(count=optax.safe_increment(state.count), peak_lr=state.peak_lr)

  return optax.GradientTransformation(init_fn, update_fn)


def _is_peak_state(node) -> bool:
  return isinstance(node, PeakLRState)


def peak_lr_of(opt_state: PyTree) -> Optional[jax.Array]:
  """The runtime peak learning rate held in ``opt_state`` (None: the optimizer has none)."""
  found = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_peak_state) if _is_peak_state(n)]
  return found[0].peak_lr if found else None


def with_peak_lr(opt_state: PyTree, peak_lr: float) -> PyTree:
  """``opt_state`` with its peak learning rate set to ``peak_lr`` (placed like the old value)."""
  if peak_lr_of(opt_state) is None:
    raise ValueError('this optimizer state holds no peak learning rate (no PeakLRState)')

  def one(node):
    if not _is_peak_state(node):
      return node
    old = node.peak_lr
    value = jnp.asarray(peak_lr, jnp.float32)
    if isinstance(old, jax.Array):
      value = jax.device_put(value, old.sharding)
    return node._replace(peak_lr=value)

  return jax.tree.map(one, opt_state, is_leaf=_is_peak_state)


def scheduled_lr(schedule: Optional[Callable], opt_state: PyTree, count) -> Optional[jax.Array]:
  """The learning rate of the update at ``count``: from the state's runtime peak when the
  optimizer has one (:class:`PeakSchedule`), else ``schedule(count)``; None without a schedule."""
  if schedule is None:
    return None
  peak = peak_lr_of(opt_state)
  if peak is not None and isinstance(schedule, PeakSchedule):
    return jnp.asarray(schedule.at(count, peak), jnp.float32)
  return jnp.asarray(schedule(count), jnp.float32)


def make_optimizer(
  params: PyTree,
  *,
  peak_lr: float,
  total_steps: int,
  warmup_steps: int = 0,
  decay: str = 'cosine',
  final_lr_fraction: float = 0.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  clip_norm: Optional[float] = 1.0,
  no_decay_patterns: Iterable[str] = DEFAULT_NO_DECAY_PATTERNS,
  lr_groups: Sequence[tuple[str, float]] = (),
  param_groups: Optional[PyTree] = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with clipping, a decay mask and per-group lr multipliers (module docstring math).

  Args:
    params: the trainable params (or their shapes); masks and multipliers are built from their
      names statically.
    lr_groups: ``[(regex, multiplier), ...]``; first full match on the '/'-joined name wins
      (e.g. ``[('.*lora_b', 2.0)]``).
    param_groups: the methods' groups, a tree of ``ParamGroup`` like ``params``, or a function
      of ``params`` giving it (``peft_jax.adapters.param_groups``): lr multipliers and forced
      decay on/off.
  Returns:
    ``(optimizer, schedule)``: the schedule is a :class:`PeakSchedule`; the optimizer's state
    holds the peak learning rate (:class:`PeakLRState`, set with :func:`with_peak_lr`).
  """
  schedule = PeakSchedule(
    peak_lr,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    decay=decay,
    final_lr_fraction=final_lr_fraction,
  )
  if callable(param_groups):  # e.g. peft_jax.adapters.param_groups, applied to these params
    param_groups = param_groups(params)
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  if weight_decay:
    parts.append(
      optax.add_decayed_weights(
        weight_decay, mask=decay_mask(params, no_decay_patterns, param_groups)
      )
    )
  parts.append(scale_by_peak_lr_schedule(schedule))
  multipliers = lr_multipliers(params, lr_groups, param_groups)
  if any(m != 1.0 for m in jax.tree.leaves(multipliers)):
    parts.append(scale_by_tree(multipliers))
  return optax.chain(*parts), schedule
