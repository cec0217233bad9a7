"""Causal-LM supervised fine-tuning loss with prompt masking and packed sequences."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


def next_token_targets(batch: Mapping[str, Array]) -> tuple[Array, Array]:
  """Targets and weights of next-token prediction on a packed, prompt-masked batch.

  Position ``t`` predicts ``tokens[t+1]``. It counts when the target is a completion token
  (``loss_mask[t+1] == 1``) of the same document (``segment_ids[t+1] == segment_ids[t] != 0``),
  so no loss crosses a document boundary or lands on a prompt or padding token.

  Args:
    batch: ``tokens [B, T] int32``, ``loss_mask [B, T]`` (1 on completion tokens) and optional
      ``segment_ids [B, T]`` (0 = padding; absent: one document per row, all real).
  Returns:
    ``(targets [B, T-1] int32, weights [B, T-1] float32)``.
  """
  tokens = batch['tokens']
  loss_mask = batch['loss_mask'].astype(jnp.float32)
  segment_ids = batch.get('segment_ids')
  targets = tokens[:, 1:]
  weights = loss_mask[:, 1:]
  if segment_ids is not None:
    same_doc = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    weights = weights * same_doc.astype(jnp.float32)
  return targets, weights


def masked_cross_entropy_sum(logits: Array, batch: Mapping[str, Array]) -> tuple[Array, Array]:
  """Sum of next-token cross-entropies over counted positions, and their number.

  .. math:: L = \\sum_{b,t} w_{b,t} \\, (\\log \\sum_v e^{z_{b,t,v}} - z_{b,t,y_{b,t+1}})

  Args:
    logits: ``[B, T, vocab]`` (any float dtype; the loss is computed in float32).
    batch: as in :func:`next_token_targets`.
  Returns:
    ``(loss_sum [], num_tokens [])`` float32. The mean loss is ``loss_sum / num_tokens``; keeping
    the two apart makes gradient accumulation and data parallelism exact.
  """
  targets, weights = next_token_targets(batch)
  logits = logits[:, :-1].astype(jnp.float32)
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_norm - target_logit
  return jnp.sum(nll * weights), jnp.sum(weights)


def make_sft_loss(apply_fn, combine_fn, *, dropout: bool = False):
  """Builds ``loss_fn(trainable, frozen, batch, rng) -> (loss_sum, num_tokens)``.

  Args:
    apply_fn: ``apply_fn(params, tokens, positions, segment_ids, rng) -> logits [B, T, vocab]``.
    combine_fn: ``combine_fn(trainable, frozen) -> params`` (``peft_jax.adapters.combine``).
    dropout: pass ``rng`` to the model (adapter dropout); otherwise the model is deterministic.
  """

  def loss_fn(trainable: Any, frozen: Any, batch: Mapping[str, Array], rng: Array):
    params = combine_fn(trainable, frozen)
    logits = apply_fn(
      params,
      batch['tokens'],
      batch.get('positions'),
      batch.get('segment_ids'),
      rng if dropout else None,
    )
    return masked_cross_entropy_sum(logits, batch)

  return loss_fn
