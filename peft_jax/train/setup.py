"""From a params tree to a sharded train state and the jitted step (shapes -> shardings -> jit)."""

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
from peft_jax.train.optimizer import make_optimizer
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


def _as_float32(tree: PyTree) -> PyTree:
  return jax.tree.map(
    lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
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
  """
  full_shardings = logical_to_sharding(axes, mesh, rules, shapes=params)
  trainable, frozen = partition_fn(params)
  if not jax.tree.leaves(trainable):
    raise ValueError(
      'the trainable partition is empty: nothing to train (check the adapter '
      'targets or use method "full")'
    )
  trainable = _as_float32(trainable)  # trainable params stay float32 whatever the compute dtype
  trainable_shardings = shardings_like(trainable, full_shardings)
  frozen_shardings = shardings_like(frozen, full_shardings)
  optimizer, schedule = make_optimizer(trainable, **optimizer_kwargs)
  trainable_shape = jax.eval_shape(lambda t: t, trainable)
  opt_shardings = opt_state_shardings(optimizer, trainable_shape, trainable_shardings, mesh)
  state_shardings = train_state_shardings(None, trainable_shardings, opt_shardings, mesh)

  frozen = jax.device_put(frozen, frozen_shardings)
  trainable = jax.device_put(trainable, trainable_shardings)
  state = jax.jit(
    functools.partial(init_train_state, optimizer=optimizer, seed=seed),
    out_shardings=state_shardings,
  )(trainable)

  batch_shardings = {key: batch_sharding(mesh, 2) for key in batch_keys}
  if step_builder is None:
    step = make_train_step(loss_fn, optimizer, schedule=schedule, grad_accum_steps=grad_accum_steps)
  else:
    step = step_builder(optimizer, schedule)
  jitted = jit_train_step(step, state_shardings, frozen_shardings, batch_shardings, mesh)
  return ShardedTraining(
    mesh=mesh,
    state=state,
    frozen=frozen,
    train_step=jitted,
    optimizer=optimizer,
    schedule=schedule,
    state_shardings=state_shardings,
    frozen_shardings=frozen_shardings,
    batch_shardings=batch_shardings,
  )
