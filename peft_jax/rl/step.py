"""The jitted GRPO programs: completion log-probs, the reference, and the sharded update step.

* :func:`completion_log_probs`: teacher-forced log-probs of the completions under a params tree
  (prompt and completion in one forward; row ``t`` of the completion is predicted from the
  position before it), with the tempered softmax the completions were sampled from.
* :func:`reference_params`: the reference policy, each adapted node at position 0 of its
  method's own path (``adapters.path(tree, 0)``: the pretrained weight ``W0``). It is computed
  from the live tree inside the program, so no second copy of the weights is kept: adapter
  methods hold ``W0`` as their frozen base anyway, and full fine-tuning (``Full``) keeps its
  frozen pretrained copy in the node's base, which is the reference.
* :func:`make_prepare`: once per generation batch with several updates, the sampling policy's
  log-probs (the importance ratio's denominator).
* :func:`make_grpo_step`: one optimizer update on the clipped objective
  (:mod:`peft_jax.rl.objective`), built for ``train.setup.setup_training``'s sharded state,
  optimizer and jit (same in/out shardings and donation as SFT). The reference's log-probs are
  computed in the same program as the policy's (one extra forward, no backward), so a policy
  equal to its reference gives a KL of exactly 0, not a rounding difference between programs.

Batch entries (all ``[B, ·]``, split over ``('data', 'fsdp')`` like SFT batches):
``prompt_tokens``/``prompt_mask [B, P]``, ``tokens``/``mask [B, N]``, ``advantages [B, 1]``,
``old_log_probs [B, N]`` (zeros, unused, with one update per batch).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from peft_jax.adapters import api as adapter_api
from peft_jax.models.decoder import default_positions
from peft_jax.rl import objective
from peft_jax.train.step import TrainState, per_layer_norms

Array = jax.Array
PyTree = Any
BATCH_KEYS = (
  'prompt_tokens',
  'prompt_mask',
  'tokens',
  'mask',
  'advantages',
  'old_log_probs',
)


def completion_log_probs(
  model: Any,
  params: PyTree,
  batch: Mapping[str, Array],
  temperature: float,
  rng: Optional[Array] = None,
) -> tuple[Array, Array]:
  """``(log_probs, entropy) [B, N]`` of ``batch['tokens']`` after ``batch['prompt_tokens']``.

  ``rng``: a dropout key (adapter dropout in the update step); ``None`` runs deterministically.
  """
  prompt, completion = batch['prompt_tokens'], batch['tokens']
  tokens = jnp.concatenate([prompt, completion], axis=1)
  mask = jnp.concatenate(
    [batch['prompt_mask'].astype(jnp.int32), batch['mask'].astype(jnp.int32)], axis=1
  )
  # The same positions as KV-cache decoding: prompt 0..n-1, then one more per new token.
  positions = default_positions(mask, None, tokens.shape)
  kwargs = dict(positions=positions, attention_mask=mask)
  if rng is not None:
    kwargs.update(deterministic=False, rngs={'dropout': rng})
  logits = model.apply({'params': params}, tokens, **kwargs)
  prompt_length = prompt.shape[1]
  logits = logits[:, prompt_length - 1 : -1]
  return objective.token_log_probs(logits, completion, temperature)


def reference_params(tree: PyTree) -> PyTree:
  """The reference policy's plain params: every adapted node's pretrained weight ``W0``."""
  return adapter_api.path(jax.lax.stop_gradient(tree), 0.0)


def make_prepare(model: Any, temperature: float) -> Callable:
  """``prepare(trainable, frozen, batch) -> log π_old [B, N]``: the sampling policy's log-probs
  of a batch that gets several updates (jit it; one update per batch needs none: the step uses
  ``stop_gradient`` of its own log-probs, a ratio of exactly 1)."""

  def prepare(trainable, frozen, batch):
    tree = adapter_api.combine(trainable, frozen)
    return completion_log_probs(model, tree, batch, temperature)[0]

  return prepare


def make_grpo_step(
  model: Any,
  loss_kwargs: Mapping[str, Any],
  *,
  temperature: float,
  reuse_batch: bool,
  dropout: bool = False,
  skip_no_signal: bool = False,
) -> Callable:
  """A ``step_builder(optimizer, schedule)`` for ``train.setup.setup_training``.

  Args:
    model: the linen decoder.
    loss_kwargs: :func:`peft_jax.rl.objective.grpo_loss` options (clip range, beta, loss type).
    temperature: the sampling temperature (the policy is the tempered softmax).
    reuse_batch: several updates per generation batch: the ratio is taken against
      ``batch['old_log_probs']`` (:func:`make_prepare`); otherwise against the step's own
      (stop-gradient) log-probs.
    dropout: pass the step's rng to the model (adapter dropout).
    skip_no_signal: leave params and optimizer state unchanged (the step counter still
      advances) when every advantage of the batch is 0, i.e. every group's rewards are equal.
      Without it such a batch still moves the weights: its only gradient is the KL term's, which
      is float rounding while the policy equals the reference, and Adam normalises that into a
      full-size update (docs/RLVR.md, "The arena phase"). Off by default, as in TRL.
  Returns:
    ``builder(optimizer, schedule) -> step(state, frozen, batch) -> (state, metrics)``. Metrics:
    ``loss``, ``policy_loss``, ``kl``, ``clip_fraction``, ``ratio_mean``, ``entropy`` (token
    mean), ``grad_norm`` (before clipping), ``param_norm``, ``update_norm``, ``lr`` and
    ``update_norm/layers_i``; with ``skip_no_signal`` also ``skipped`` (1.0 when the update
    was skipped).
  """

  def builder(optimizer: optax.GradientTransformation, schedule: Optional[optax.Schedule]):
    def loss_fn(trainable, frozen, batch, rng):
      tree = adapter_api.combine(trainable, frozen)
      log_probs, entropy = completion_log_probs(
        model, tree, batch, temperature, rng if dropout else None
      )
      old = batch['old_log_probs'] if reuse_batch else jax.lax.stop_gradient(log_probs)
      ref, _ = completion_log_probs(model, reference_params(tree), batch, temperature)
      ref = jax.lax.stop_gradient(ref)
      loss, stats = objective.grpo_loss(
        log_probs,
        old,
        ref,
        batch['advantages'][:, 0],
        batch['mask'],
        **loss_kwargs,
      )
      stats['entropy'] = objective.masked_mean(
        jax.lax.stop_gradient(entropy), batch['mask'].astype(jnp.float32)
      )
      return loss, stats

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen: PyTree, batch: Mapping[str, Array]):
      rng = jax.random.fold_in(state.rng, state.step)
      (loss, stats), grads = grad_fn(state.params, frozen, batch, rng)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      skipped = {}
      if skip_no_signal:
        signal = jnp.any(batch['advantages'] != 0)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(signal, n, o), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        updates = jax.tree.map(lambda u: jnp.where(signal, u, jnp.zeros_like(u)), updates)
        skipped = dict(skipped=1.0 - signal.astype(jnp.float32))
      metrics = dict(
        stats,
        **skipped,
        loss=loss,
        grad_norm=optax.tree.norm(grads),
        param_norm=optax.tree.norm(params),
        update_norm=optax.tree.norm(updates),
      )
      if schedule is not None:
        metrics['lr'] = jnp.asarray(schedule(state.step), jnp.float32)
      metrics.update(per_layer_norms(updates, 'update_norm'))
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step

  return builder
