"""KV-cache decoding for a left-padded batch: greedy, temperature, top-k and top-p sampling.

One compiled program per (batch, prompt length, max_new_tokens, sampling settings): the prompt is
prefilled into a cache of ``prompt_length + max_new_tokens`` slots, then a ``lax.while_loop``
samples one token per step and stops when every sequence has emitted an EOS id (or after
``max_new_tokens``). The loop goes through the same :class:`Decoder`, so ``Adapted`` kernels work.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models.config import ModelConfig
from peft_jax.models.decoder import Decoder, default_positions, init_cache

Array = jax.Array


class GenerationOutput(NamedTuple):
  """Result of :func:`generate`.

  tokens: ``[B, max_new_tokens]`` int32, new tokens only; ``pad_token_id`` after a sequence's EOS
    (the EOS itself is kept).
  log_probs: ``[B, max_new_tokens]`` float32, ``log p(token | prefix)`` under the model's own
    (untempered, unfiltered) distribution; 0 after EOS.
  lengths: ``[B]`` int32, number of generated tokens including the EOS.
  """

  tokens: Array
  log_probs: Array
  lengths: Array


def _ordered_keys(x: Array) -> Array:
  """float32 -> uint32 keys in the same order (negative floats: all bits flipped; others: the
  sign bit set), so a threshold on the keys is a threshold on the values."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest_key(holds: Callable[[Array], Array], batch: int) -> Array:
  """Per row, the largest uint32 ``t`` with ``holds(t)`` (``[B, 1] -> [B, 1]`` bool), for a
  ``holds`` that is true at 0 and stays false once false: built bit by bit from the top (32
  passes over the row, no sort)."""

  def step(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(holds(candidate), candidate, t)

  return jax.lax.fori_loop(0, 32, step, jnp.zeros((batch, 1), jnp.uint32))


def filter_logits(logits: Array, *, temperature: float, top_k: int, top_p: float) -> Array:
  """``logits [B, V] / temperature`` with every token outside the top-k / top-p set at -inf
  (``sample_logits``; ``temperature > 0``).

  Top-k keeps the logits at or above the k-th largest; top-p keeps a logit when the probability
  of the strictly larger ones is below ``top_p`` (the same set as cutting the sorted list where
  the mass before a token reaches ``top_p``, ties included). Both thresholds are found by a
  radix search over the logits' ordered bit patterns, 32 counting passes each, instead of a
  sort: sorting a 49k vocabulary at every decoding step cost more than the model's own step on
  CPU (BENCHMARKS.md, "Generation").
  """
  logits = logits.astype(jnp.float32) / temperature
  batch, vocab = logits.shape
  keys = _ordered_keys(logits)
  if 0 < top_k < vocab:
    kth = _largest_key(lambda t: jnp.sum(keys >= t, axis=-1, keepdims=True) >= top_k, batch)
    logits = jnp.where(keys < kth, -jnp.inf, logits)
  if top_p < 1.0:
    probs = jax.nn.softmax(logits, axis=-1)
    # The largest t with P(key > t) >= top_p; the nucleus is every key above it.
    cut = _largest_key(
      lambda t: jnp.sum(jnp.where(keys > t, probs, 0.0), axis=-1, keepdims=True) >= top_p,
      batch,
    )
    logits = jnp.where(keys > cut, logits, -jnp.inf)
  return logits


def sample_logits(
  logits: Array, key: Array, *, temperature: float, top_k: int, top_p: float
) -> Array:
  """Draws token ids ``[B]`` from ``logits [B, V]``.

  ``temperature == 0``: argmax. Otherwise ``softmax(logits / temperature)`` restricted to the
  ``top_k`` largest logits (0 = all) and then to the smallest set of most likely tokens whose
  probability mass reaches ``top_p`` (the most likely token is always kept), as in HF's
  temperature -> top-k -> top-p warpers (``filter_logits``).
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(
  jax.jit,
  static_argnames=(
    'config',
    'max_new_tokens',
    'temperature',
    'top_k',
    'top_p',
    'eos_token_ids',
    'pad_token_id',
  ),
)
def decode(
  params,
  tokens,
  attention_mask,
  key,
  *,
  config: ModelConfig,
  max_new_tokens: int,
  temperature: float,
  top_k: int,
  top_p: float,
  eos_token_ids: tuple[int, ...],
  pad_token_id: int,
) -> GenerationOutput:
  model = Decoder(config)
  batch, prompt_length = tokens.shape
  cache = init_cache(config, batch, prompt_length + max_new_tokens)
  positions = default_positions(attention_mask, None, (batch, prompt_length))
  logits, cache = model.apply(
    {'params': params}, tokens, positions=positions, attention_mask=attention_mask, cache=cache
  )
  # Left padding: the last slot of every row is its last real token.
  last_logits = logits[:, -1]
  next_position = positions[:, -1] + 1
  eos = jnp.asarray(eos_token_ids if eos_token_ids else (-1,), jnp.int32)

  def cond(state):
    step, _, _, _, done, _, _, _, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, cache, last_logits, next_position, done, out_tokens, out_log_probs, lengths, key = state
    token = sample_logits(
      last_logits, jax.random.fold_in(key, step), temperature=temperature, top_k=top_k, top_p=top_p
    )
    log_prob = jnp.take_along_axis(
      jax.nn.log_softmax(last_logits, axis=-1), token[:, None], axis=-1
    )[:, 0]
    token = jnp.where(done, pad_token_id, token)
    log_prob = jnp.where(done, 0.0, log_prob)
    out_tokens = jax.lax.dynamic_update_slice(out_tokens, token[:, None], (0, step))
    out_log_probs = jax.lax.dynamic_update_slice(out_log_probs, log_prob[:, None], (0, step))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.any(token[:, None] == eos[None, :], axis=-1)
    logits, cache = model.apply(
      {'params': params},
      token[:, None],
      positions=next_position[:, None],
      attention_mask=jnp.ones((batch, 1), jnp.int32),
      cache=cache,
    )
    return (
      step + 1,
      cache,
      logits[:, -1],
      next_position + 1,
      done,
      out_tokens,
      out_log_probs,
      lengths,
      key,
    )

  state = (
    jnp.zeros((), jnp.int32),
    cache,
    last_logits,
    next_position,
    jnp.zeros((batch,), bool),
    jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32),
    jnp.zeros((batch, max_new_tokens), jnp.float32),
    jnp.zeros((batch,), jnp.int32),
    key,
  )
  state = jax.lax.while_loop(cond, body, state)
  return GenerationOutput(tokens=state[5], log_probs=state[6], lengths=state[7])


def generate(
  model: Decoder,
  params: Any,
  tokens: Any,
  attention_mask: Any,
  *,
  key: Array,
  max_new_tokens: int,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_token_id: Optional[int | Sequence[int]] = None,
  pad_token_id: Optional[int] = None,
) -> GenerationOutput:
  """Decodes ``max_new_tokens`` after each left-padded prompt.

  Args:
    model: the :class:`Decoder` (its config decides the program).
    params: its params (plain or holding ``Adapted`` nodes).
    tokens: ``[B, P]`` int prompt ids, left-padded.
    attention_mask: ``[B, P]`` 1 = real token (each row needs at least one).
    key: PRNG key (unused for greedy).
    max_new_tokens: decoding steps N.
    temperature: 0 = greedy; else softmax temperature.
    top_k: keep the k most likely tokens (0 = off).
    top_p: nucleus mass (1 = off).
    eos_token_id: one id or several; default ``model.config.eos_token_id``.
    pad_token_id: filler after EOS; default ``model.config.pad_token_id`` (else 0).
  Returns:
    :class:`GenerationOutput` with ``tokens [B, N]``, ``log_probs [B, N]``, ``lengths [B]``.
  """
  config = model.config
  if eos_token_id is None:
    eos_ids = config.eos_token_ids
  elif isinstance(eos_token_id, (int, np.integer)):
    eos_ids = (int(eos_token_id),)
  else:
    eos_ids = tuple(int(i) for i in eos_token_id)
  if pad_token_id is None:
    pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
  if max_new_tokens <= 0:
    raise ValueError(f'max_new_tokens must be positive, got {max_new_tokens}')
  if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
    raise ValueError(
      f'invalid sampling settings temperature={temperature} (>= 0), '
      f'top_k={top_k} (>= 0), top_p={top_p} (in (0, 1])'
    )
  tokens = jnp.asarray(tokens, jnp.int32)
  attention_mask = jnp.asarray(attention_mask, jnp.int32)
  if tokens.shape != attention_mask.shape or tokens.ndim != 2:
    raise ValueError(
      f'tokens {tokens.shape} and attention_mask {attention_mask.shape} must both '
      'be [batch, prompt_length]'
    )
  # Checked only on concrete masks (generate may also run under an outer jit/vmap).
  last_column = (
    None if isinstance(attention_mask, jax.core.Tracer) else np.asarray(attention_mask[:, -1])
  )
  if last_column is not None and not last_column.all():
    raise ValueError(
      'generate needs left-padded prompts: attention_mask[:, -1] must be 1 in every '
      f'row, but rows {np.flatnonzero(last_column == 0).tolist()} end in padding'
    )
  return decode(
    params,
    tokens,
    attention_mask,
    key,
    config=config,
    max_new_tokens=int(max_new_tokens),
    temperature=float(temperature),
    top_k=int(top_k),
    top_p=float(top_p),
    eos_token_ids=eos_ids,
    pad_token_id=int(pad_token_id),
  )
