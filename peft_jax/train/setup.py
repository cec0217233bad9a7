"""From a params tree to a sharded train state and the jitted step (shapes -> shardings -> jit).

A :class:`TrainingPlan` (the jitted step and state initialiser, and every sharding) depends on
the shapes and the optimizer's settings but not on the peak learning rate nor the seed, which
are runtime values (``peft_jax.train.optimizer.PeakLRState``, the state's rng); passing a plan
back to :func:`setup_training` reuses its compiled programs for another rate or seed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from peft_jax.parallel.sharding import (
  batch_sharding,
  logical_to_sharding,
  opt_state_shardings,
  shardings_like,
)
from peft_jax.train.optimizer import make_optimizer, peak_lr_of, with_peak_lr
from peft_jax.train.step import (
  TrainState,
  init_train_state,
  jit_train_step,
  make_train_step,
  train_state_shardings,
)

PyTree = Any
BATCH_KEYS = ('tokens', 'loss_mask', 'segment_ids', 'positions')


@dataclasses.dataclass
class ShardedTraining:
  """What the loop needs: the live state and frozen base, the jitted step and all shardings."""

  mesh: Mesh
  state: TrainState
  frozen: PyTree
  train_step: Callable  # jitted: (state, frozen, batch) -> (state, metrics); donates state
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: TrainState
  frozen_shardings: PyTree
  batch_shardings: Mapping[str, Any]
  plan: Optional['TrainingPlan'] = None  # the programs this setup used (reusable)


def _as_float32(tree: PyTree) -> PyTree:
  return jax.tree.map(
    lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
  )


@dataclasses.dataclass
class TrainingPlan:
  """The step and every sharding, built from shapes alone (no array is allocated).

  ``setup_training`` places real params with these shardings; ``peft_jax.train.plan`` lowers
  ``train_step`` on :meth:`abstract_args` to read XLA's memory and cost analysis.
  """

  mesh: Mesh
  train_step: Callable  # jitted: (state, frozen, batch) -> (state, metrics); donates state
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  state_shape: TrainState  # of jax.ShapeDtypeStruct
  frozen_shape: PyTree
  state_shardings: TrainState
  frozen_shardings: PyTree
  batch_shardings: Mapping[str, Any]
  # jitted (trainable, rng) -> TrainState at step 0 (the configured peak lr), sharded
  init_state: Optional[Callable] = None

  def abstract_args(self, batch_size: int, seq_len: int) -> tuple[TrainState, PyTree, dict]:
    """``(state, frozen, batch)`` as ``ShapeDtypeStruct`` carrying their shardings, the
    arguments of ``train_step`` for a global batch ``[batch_size, seq_len]``."""
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    state = jax.tree.map(with_sharding, self.state_shape, self.state_shardings)
    frozen = jax.tree.map(with_sharding, self.frozen_shape, self.frozen_shardings)
    batch = {
      key: jax.ShapeDtypeStruct(
        (batch_size, seq_len), BATCH_DTYPES.get(key, jnp.int32), sharding=sharding
      )
      for key, sharding in self.batch_shardings.items()
    }
    return state, frozen, batch


# The dtype of each batch entry as the training loop feeds it (the rest are int32).
BATCH_DTYPES = {'loss_mask': jnp.float32}


def plan_training(
  params: PyTree,
  axes: PyTree,
  *,
  loss_fn: Callable,
  partition_fn: Callable,
  mesh: Mesh,
  optimizer_kwargs: Mapping[str, Any],
  rules: Optional[Sequence] = None,
  seed: int = 0,
  grad_accum_steps: int = 1,
  batch_keys: Sequence[str] = BATCH_KEYS,
  step_builder: Optional[Callable] = None,
) -> TrainingPlan:
  """Shardings, optimizer and jitted step of ``params`` (arrays or ``ShapeDtypeStruct``).

  Arguments as :func:`setup_training`. Nothing is placed or computed: the state's shapes come
  from ``jax.eval_shape``.
  """
  full_shardings = logical_to_sharding(axes, mesh, rules, shapes=params)
  trainable, frozen = jax.eval_shape(partition_fn, params)
  if not jax.tree.leaves(trainable):
    raise ValueError(
      'the trainable partition is empty: nothing to train (check the adapter '
      'targets or use method "full")'
    )
  trainable = jax.eval_shape(_as_float32, trainable)  # trainable params stay float32
  trainable_shardings = shardings_like(trainable, full_shardings)
  frozen_shardings = shardings_like(frozen, full_shardings)
  optimizer, schedule = make_optimizer(trainable, **optimizer_kwargs)
  opt_shardings = opt_state_shardings(optimizer, trainable, trainable_shardings, mesh)
  state_shardings = train_state_shardings(None, trainable_shardings, opt_shardings, mesh)
  state_shape = jax.eval_shape(
    functools.partial(init_train_state, optimizer=optimizer, seed=seed), trainable
  )
  batch_shardings = {key: batch_sharding(mesh, 2, rules) for key in batch_keys}
  if step_builder is None:
    step = make_train_step(loss_fn, optimizer, schedule=schedule, grad_accum_steps=grad_accum_steps)
  else:
    step = step_builder(optimizer, schedule)
  jitted = jit_train_step(step, state_shardings, frozen_shardings, batch_shardings, mesh)
  init_state = jax.jit(
    lambda params, rng: TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng
    ),
    out_shardings=state_shardings,
  )
  return TrainingPlan(
    mesh=mesh,
    train_step=jitted,
    optimizer=optimizer,
    schedule=schedule,
    state_shape=state_shape,
    frozen_shape=frozen,
    state_shardings=state_shardings,
    frozen_shardings=frozen_shardings,
    batch_shardings=batch_shardings,
    init_state=init_state,
  )


def setup_training(
  params: PyTree,
  axes: PyTree,
  *,
  loss_fn: Callable,
  partition_fn: Callable,
  mesh: Mesh,
  optimizer_kwargs: Mapping[str, Any],
  rules: Optional[Sequence] = None,
  seed: int = 0,
  grad_accum_steps: int = 1,
  batch_keys: Sequence[str] = BATCH_KEYS,
  step_builder: Optional[Callable] = None,
  plan: Optional[TrainingPlan] = None,
) -> ShardedTraining:
  """Shards ``params`` by their logical ``axes``, splits trainable/frozen, builds the step.

  Args:
    params: the full (possibly adapter-injected) params tree; identical on every process.
    axes: matching tree of logical-axis tuples.
    loss_fn: ``loss_fn(trainable, frozen, batch, rng) -> (loss_sum, num_tokens)``.
    partition_fn: ``tree -> (trainable, frozen)`` with ``None`` where a leaf is absent.
    mesh: the device mesh.
    optimizer_kwargs: keyword arguments of :func:`peft_jax.train.optimizer.make_optimizer`.
    rules: logical-axis rules (default: the built-in table).
    seed: seed of the state's rng.
    grad_accum_steps: microbatches per step (inner scan).
    batch_keys: the batch entries, each ``[batch, seq]``.
    step_builder: ``(optimizer, schedule) -> train_step(state, frozen, batch)`` replacing the
      SFT step of :func:`~peft_jax.train.step.make_train_step` (``loss_fn`` and
      ``grad_accum_steps`` are then unused): another objective on the same sharded state,
      optimizer and jit (GRPO, ``peft_jax.rl``).
    plan: a plan from an earlier call whose program-defining arguments (everything but the
      params' values, ``seed`` and ``optimizer_kwargs['peak_lr']``) were the same: its compiled
      step and initialiser are reused (``ShardedTraining.plan``; the caller vouches for the
      sameness, e.g. ``peft_jax.train.trainer.ProgramCache``).
  """
  if plan is None:
    plan = plan_training(
      params,
      axes,
      loss_fn=loss_fn,
      partition_fn=partition_fn,
      mesh=mesh,
      optimizer_kwargs=optimizer_kwargs,
      rules=rules,
      seed=seed,
      grad_accum_steps=grad_accum_steps,
      batch_keys=batch_keys,
      step_builder=step_builder,
    )
  trainable, frozen = partition_fn(params)
  frozen = jax.device_put(frozen, plan.frozen_shardings)
  trainable = jax.device_put(_as_float32(trainable), plan.state_shardings.params)
  rng = jax.device_put(jax.random.PRNGKey(seed), plan.state_shardings.rng)
  state = plan.init_state(trainable, rng)
  if peak_lr_of(state.opt_state) is not None and 'peak_lr' in optimizer_kwargs:
    # The plan's initialiser starts at the rate it was built with; this run's rate is set here.
    state = state.replace(
      opt_state=with_peak_lr(state.opt_state, float(optimizer_kwargs['peak_lr']))
    )
  return ShardedTraining(
    mesh=mesh,
    state=state,
    frozen=frozen,
    train_step=plan.train_step,
    optimizer=plan.optimizer,
    schedule=plan.schedule,
    state_shardings=plan.state_shardings,
    frozen_shardings=plan.frozen_shardings,
    batch_shardings=plan.batch_shardings,
    plan=plan,
  )
