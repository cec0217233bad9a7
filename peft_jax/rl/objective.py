"""The GRPO objective as pure, jit-able functions (docs/RLVR.md, "The objective").

Notation: a batch holds ``B = prompts * G`` completions, the ``G`` completions of one prompt in
consecutive rows (a *group*); completion ``i`` has reward ``r_i``, tokens ``y_{i,t}`` and a mask
``m_{i,t}`` (1 up to and including its EOS). ``π`` is the policy being trained, ``π_old`` the
policy that sampled the batch and ``π_ref`` the reference (the base model: the adapter switched
off).

* **Advantages** (one per completion, shared by its tokens)::

    A_i = (r_i - mean_group(r)) / (std + eps)

  with ``std`` the unbiased (n-1) standard deviation of the group (``scale_rewards='group'``),
  of the whole batch (``'batch'``), or no division at all (``'none'``, Dr. GRPO).
* **Per-token loss**, with the importance ratio ``ρ = exp(log π - log π_old)``::

    l_{i,t} = -min(ρ A_i, clip(ρ, 1 - ε_low, 1 + ε_high) A_i) + β k3_{i,t}
    k3_{i,t} = exp(log π_ref - log π) - (log π_ref - log π) - 1      (>= 0; 0 iff equal)

* **Normalisation** of ``Σ m l`` into the scalar loss (``loss_type``)::

    'grpo'    mean_i ( Σ_t m_{i,t} l_{i,t} / max(Σ_t m_{i,t}, 1) )   per-sequence mean, batch mean
    'bnpo'    Σ m l / max(Σ m, 1)                                    per-token mean over the batch
    'dapo'    Σ m l / max(Σ m, 1)                                    (the same token-level mean)
    'dr_grpo' Σ m l / (B * max_completion_length)                    constant denominator

This is TRL's ``GRPOTrainer`` loss (``epsilon``/``epsilon_high``, ``beta``, ``loss_type``,
``scale_rewards``); with the whole batch in one jitted step (no gradient accumulation) TRL's
'dapo' (tokens counted over the global batch) and 'bnpo' coincide.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
LOSS_TYPES = ('grpo', 'bnpo', 'dapo', 'dr_grpo')
SCALE_REWARDS = ('group', 'batch', 'none')


def group_advantages(
  rewards: Array, group_size: int, *, scale_rewards: str = 'group', eps: float = 1e-4
) -> Array:
  """Group-normalised advantages ``[B]`` of rewards ``[B]`` (groups: consecutive rows).

  Args:
    rewards: ``[B]`` with ``B`` a multiple of ``group_size``.
    group_size: G, completions per prompt (static; >= 2 for a std).
    scale_rewards: ``'group'`` (divide by the group's std), ``'batch'`` (by the batch's std) or
      ``'none'``.
    eps: added to the std (TRL: 1e-4), so a zero-variance group gives advantages 0, not NaN.
  """
  if scale_rewards not in SCALE_REWARDS:
    raise ValueError(f'scale_rewards={scale_rewards!r}; valid: {SCALE_REWARDS}')
  if group_size < 2 or rewards.shape[0] % group_size:
    raise ValueError(
      f'{rewards.shape[0]} rewards do not form groups of group_size={group_size} (>= 2)'
    )
  rewards = rewards.astype(jnp.float32)
  grouped = rewards.reshape(-1, group_size)
  centred = (grouped - jnp.mean(grouped, axis=1, keepdims=True)).reshape(-1)
  if scale_rewards == 'none':
    return centred
  if scale_rewards == 'group':
    std = jnp.repeat(jnp.std(grouped, axis=1, ddof=1), group_size)
  else:
    std = jnp.std(rewards, ddof=1)
  return centred / (std + eps)


def group_reward_stats(rewards: Array, group_size: int) -> dict[str, Array]:
  """``reward_mean``, ``reward_std`` (mean over groups of the within-group unbiased std) and
  ``zero_variance_fraction`` (groups whose rewards are all equal: no learning signal)."""
  grouped = rewards.astype(jnp.float32).reshape(-1, group_size)
  spread = jnp.max(grouped, axis=1) - jnp.min(grouped, axis=1)
  return {
    'reward_mean': jnp.mean(grouped),
    'reward_std': jnp.mean(jnp.std(grouped, axis=1, ddof=1)),
    'zero_variance_fraction': jnp.mean((spread == 0).astype(jnp.float32)),
  }


def token_log_probs(logits: Array, targets: Array, temperature: float = 1.0) -> tuple[Array, Array]:
  """``log softmax(z / T)[y]`` and the entropy of ``softmax(z / T)``, per position.

  Args:
    logits: ``[B, N, V]``: row ``t`` predicts ``targets[:, t]``.
    targets: ``[B, N]`` int token ids.
    temperature: the sampling temperature ``T`` (> 0): the policy is the tempered distribution
      the completions were drawn from (TRL divides the logits the same way).
  Returns:
    ``(log_probs [B, N], entropy [B, N])`` float32.
  """
  if temperature <= 0:
    raise ValueError(f'temperature={temperature} must be > 0 for sampled log-probs')
  scaled = logits.astype(jnp.float32) / temperature
  log_softmax = jax.nn.log_softmax(scaled, axis=-1)
  picked = jnp.take_along_axis(log_softmax, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_softmax) * log_softmax, axis=-1)
  return picked, entropy


def k3_kl(log_probs: Array, ref_log_probs: Array) -> Array:
  """Per-token ``exp(q - p) - (q - p) - 1`` with ``p = log π``, ``q = log π_ref`` (Schulman's
  k3 estimator of KL(π || π_ref) on samples from π; non-negative, 0 iff the log-probs agree).

  Computed as ``expm1(d) - d``: for the tiny ``d`` of a policy near its reference, ``exp(d) - 1``
  in float32 would cancel to noise of the size of ``d`` itself instead of ``d² / 2``."""
  diff = ref_log_probs - log_probs
  return jnp.expm1(diff) - diff


def masked_mean(x: Array, mask: Array) -> Array:
  """``Σ m x / max(Σ m, 1)``."""
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normalise(per_token: Array, mask: Array, loss_type: str, max_completion_length: int) -> Array:
  """The scalar of ``per_token [B, N]`` under ``loss_type`` (module docstring)."""
  if loss_type == 'grpo':
    per_sequence = jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return jnp.mean(per_sequence)
  if loss_type in ('bnpo', 'dapo'):
    return masked_mean(per_token, mask)
  if loss_type == 'dr_grpo':
    return jnp.sum(per_token * mask) / (per_token.shape[0] * max_completion_length)
  raise ValueError(f'loss_type={loss_type!r}; valid: {LOSS_TYPES}')


def grpo_loss(
  log_probs: Array,
  old_log_probs: Array,
  ref_log_probs: Array,
  advantages: Array,
  mask: Array,
  *,
  epsilon_low: float = 0.2,
  epsilon_high: float = 0.2,
  beta: float = 0.0,
  loss_type: str = 'grpo',
  max_completion_length: int = 0,
) -> tuple[Array, dict[str, Array]]:
  """The clipped GRPO loss and its diagnostics (module docstring for the math).

  Args:
    log_probs: ``[B, N]`` ``log π(y_t | ...)`` (differentiated).
    old_log_probs: ``[B, N]`` under the sampling policy (constants).
    ref_log_probs: ``[B, N]`` under the reference (constants; the KL is reported also when
      ``beta == 0``).
    advantages: ``[B]``.
    mask: ``[B, N]`` 1 on completion tokens.
    epsilon_low, epsilon_high: the clip range ``[1 - ε_low, 1 + ε_high]``.
    beta: weight of the k3 KL penalty.
    loss_type: one of :data:`LOSS_TYPES`.
    max_completion_length: the completion budget N (the 'dr_grpo' denominator; default the
      mask's width).
  Returns:
    ``(loss, stats)``; ``stats`` holds token means over the batch of ``kl`` (k3, reported also
    when ``beta == 0``), ``clip_fraction`` (tokens whose ratio left the clip range on the side
    the min cuts: ``ρ < 1 - ε_low`` with ``A < 0`` or ``ρ > 1 + ε_high`` with ``A > 0``, TRL's
    ``clip_ratio/region_mean``), ``ratio_mean`` and the ``policy_loss`` part of the loss.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f'loss_type={loss_type!r}; valid: {LOSS_TYPES}')
  mask = mask.astype(jnp.float32)
  old_log_probs = jax.lax.stop_gradient(old_log_probs)
  ref_log_probs = jax.lax.stop_gradient(ref_log_probs)
  advantage = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]
  ratio = jnp.exp(log_probs - old_log_probs)
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  policy = -jnp.minimum(ratio * advantage, clipped * advantage)
  kl = k3_kl(log_probs, ref_log_probs)
  per_token = policy + beta * kl if beta else policy
  width = max_completion_length or log_probs.shape[1]
  loss = normalise(per_token, mask, loss_type, width)
  region_clipped = ((ratio < 1.0 - epsilon_low) & (advantage < 0)) | (
    (ratio > 1.0 + epsilon_high) & (advantage > 0)
  )
  stats = {
    'kl': masked_mean(jax.lax.stop_gradient(kl), mask),
    'clip_fraction': masked_mean(region_clipped.astype(jnp.float32), mask),
    'ratio_mean': masked_mean(jax.lax.stop_gradient(ratio), mask),
    'policy_loss': normalise(jax.lax.stop_gradient(policy), mask, loss_type, width),
  }
  return loss, stats


def loss_kwargs(grpo_config: Mapping[str, Any]) -> dict[str, Any]:
  """The :func:`grpo_loss` keyword arguments held by ``config.grpo``."""
  return dict(
    epsilon_low=float(grpo_config['epsilon_low']),
    epsilon_high=float(grpo_config['epsilon_high']),
    beta=float(grpo_config['beta']),
    loss_type=str(grpo_config['loss_type']),
    max_completion_length=int(grpo_config['max_new_tokens']),
  )
