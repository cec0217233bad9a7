"""Train state and the one jitted, sharded, donating train step."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from peft_jax.common.trees import path_name
from peft_jax.parallel.sharding import replicated
from peft_jax.train.optimizer import scheduled_lr

Array = jax.Array
PyTree = Any
LossFn = Callable[[PyTree, PyTree, Mapping[str, Array], Array], tuple[Array, Array]]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; the frozen base is passed separately and never updated.

  Attributes:
    step: ``[] int32``, number of optimizer updates applied.
    params: the trainable partition (float32).
    opt_state: optimizer state of ``params`` only (frozen weights have none).
    rng: ``[2] uint32`` base key; step ``s`` uses ``fold_in(rng, s)``.
  """

  step: Array
  params: PyTree
  opt_state: PyTree
  rng: Array


def init_train_state(
  params: PyTree, optimizer: optax.GradientTransformation, seed: int
) -> TrainState:
  """A fresh state (call under ``jax.jit`` with ``out_shardings`` to create it sharded)."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.PRNGKey(seed),
  )


def train_state_shardings(
  state_shape: TrainState, params_shardings: PyTree, opt_shardings: PyTree, mesh
) -> TrainState:
  """Shardings of a :class:`TrainState`: params and opt state as given, scalars replicated."""
  return TrainState(
    step=replicated(mesh), params=params_shardings, opt_state=opt_shardings, rng=replicated(mesh)
  )


def _tree_norm(tree: PyTree) -> Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def per_layer_norms(tree: PyTree, prefix: str) -> dict[str, Array]:
  """``{prefix/layers_i: ||leaves under layers_i||_2}`` (grouping is static, by name).

  Stacked (scanned) layers (``layers/block_j/...``, leading axis over the blocks' steps) are
  split per layer and named as the unrolled ones (``layers_{j + period * k}``).
  """
  flat = [(path_name(path), x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  stacked = re.compile(r'^layers/block_(\d+)/')
  period = len({m.group(1) for m in (stacked.match(name) for name, _ in flat) if m})
  groups: dict[str, list] = {}
  for name, x in flat:
    block = stacked.match(name)
    if block:
      squares = jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1), axis=1)
      for k in range(x.shape[0]):
        groups.setdefault(f'layers_{int(block.group(1)) + period * k}', []).append(squares[k])
      continue
    match = re.search(r'layers_\d+', name)
    if match:
      groups.setdefault(match.group(0), []).append(jnp.sum(jnp.square(x.astype(jnp.float32))))
  return {f'{prefix}/{name}': jnp.sqrt(sum(xs)) for name, xs in sorted(groups.items())}


def _microbatches(batch: Mapping[str, Array], accum_steps: int) -> dict[str, Array]:
  """``[B, ...] -> [accum, B/accum, ...]`` taking rows ``a, a+accum, ...`` into microbatch ``a``,
  so every microbatch stays spread over all data-parallel devices."""
  out = {}
  for name, x in batch.items():
    if x.shape[0] % accum_steps:
      raise ValueError(
        f'batch[{name!r}] has {x.shape[0]} rows, not divisible by grad_accum_steps={accum_steps}'
      )
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    out[name] = jnp.swapaxes(x, 0, 1)
  return out


def make_train_step(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  *,
  schedule: Optional[optax.Schedule] = None,
  grad_accum_steps: int = 1,
):
  """Builds ``train_step(state, frozen, batch) -> (state, metrics)`` (not yet jitted).

  The gradient is taken w.r.t. ``state.params`` only. With ``loss_fn`` returning
  ``(loss_sum, num_tokens)``, the step minimises the token mean
  ``L = Σ_micro loss_sum / Σ_micro num_tokens``, so accumulating over ``grad_accum_steps``
  microbatches (an inner ``lax.scan``) gives exactly the full-batch gradient.

  Metrics: ``loss``, ``num_tokens``, ``grad_norm`` (before clipping), ``param_norm``,
  ``update_norm``, ``lr`` and ``update_norm/layers_i`` per layer.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, frozen: PyTree, batch: Mapping[str, Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      (loss_sum, num_tokens), grads = grad_fn(state.params, frozen, batch, rng)
    else:
      micro = _microbatches(batch, grad_accum_steps)

      def accumulate(carry, inputs):
        index, microbatch = inputs
        (loss_i, tokens_i), grads_i = grad_fn(
          state.params, frozen, microbatch, jax.random.fold_in(rng, index)
        )
        loss_sum, num_tokens, grads = carry
        return (
          loss_sum + loss_i,
          num_tokens + tokens_i,
          jax.tree.map(jnp.add, grads, grads_i),
        ), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (loss_sum, num_tokens, grads), _ = jax.lax.scan(
        accumulate,
        (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros),
        (jnp.arange(grad_accum_steps), micro),
      )
    denominator = jnp.maximum(num_tokens, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      'loss': loss_sum / denominator,
      'num_tokens': num_tokens,
      'grad_norm': optax.tree.norm(grads),
      'param_norm': _tree_norm(params),
      'update_norm': _tree_norm(updates),
    }
    if schedule is not None:
      metrics['lr'] = scheduled_lr(schedule, state.opt_state, state.step)
    metrics.update(per_layer_norms(updates, 'update_norm'))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def jit_train_step(
  train_step, state_shardings: TrainState, frozen_shardings: PyTree, batch_shardings: PyTree, mesh
):
  """One ``jax.jit`` with in/out shardings; the state is donated (updated in place)."""
  return jax.jit(
    train_step,
    in_shardings=(state_shardings, frozen_shardings, batch_shardings),
    out_shardings=(state_shardings, replicated(mesh)),
    donate_argnums=(0,),
  )
