"""Group sampling for GRPO: every prompt ``G`` times through the jitted KV-cache decoder.

A step's prompts are tokenised, left-padded to a multiple of ``prompt_bucket`` (one compiled
decoder program per bucket), repeated ``G`` times (the group of prompt ``p`` is rows
``p*G .. p*G+G-1``), placed on the mesh with the batch sharding of training and decoded by
:func:`peft_jax.models.generate.decode` with temperature / top-k / top-p. The key of each step
comes from ``(seed, step)`` only, so a resumed run draws the same completions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from peft_jax.hub import tokenizer as hub_tokenizer

# By name: the package re-exports a function called `generate` over the module's name.
from peft_jax.models.generate import decode
from peft_jax.parallel import distributed

PyTree = Any
# fold_in constant separating the sampling stream from the state's dropout stream.
_SAMPLING_STREAM = 0x5A3


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How completions are drawn (static: part of the compiled decoder program)."""

  group_size: int
  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0

  def __post_init__(self):
    if self.group_size < 1 or self.max_new_tokens < 1:
      raise ValueError(
        f'group_size={self.group_size} and max_new_tokens={self.max_new_tokens} must be >= 1'
      )
    if self.temperature <= 0 or not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
      raise ValueError(
        f'sampling needs temperature > 0 (got {self.temperature}), top_p in (0, 1] '
        f'(got {self.top_p}) and top_k >= 0 (got {self.top_k})'
      )


class Rollout(NamedTuple):
  """One batch of ``B = prompts * G`` completions (host NumPy or global device arrays).

  prompt_tokens, prompt_mask: ``[B, P]`` left-padded prompts, each repeated ``G`` times.
  tokens: ``[B, N]`` completion ids (``pad`` after EOS, the EOS kept).
  mask: ``[B, N]`` float32, 1 on completion tokens (up to and including EOS).
  lengths: ``[B]`` int32 completion lengths.
  sample_log_probs: ``[B, N]`` ``log p(token)`` under the sampling model's untempered softmax as
    the KV-cache decoder computed it (0 on padding).
  """

  prompt_tokens: Any
  prompt_mask: Any
  tokens: Any
  mask: Any
  lengths: Any
  sample_log_probs: Any


def sampling_key(seed: int, step: int) -> jax.Array:
  """The sampling key of step ``step``: a function of ``(seed, step)`` only."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _SAMPLING_STREAM), step)


def encode_prompts(
  tokenizer: Any,
  prompts: Sequence[str],
  *,
  chat: bool,
  bucket: int,
  max_prompt_length: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded ``(tokens, mask) [len(prompts), P]``, ``P`` a multiple of ``bucket``.

  ``max_prompt_length > 0`` keeps each prompt's last ``max_prompt_length`` tokens (the end of
  the prompt, next to the completion, as TRL truncates).
  """
  tokens, mask = hub_tokenizer.encode_prompts(
    tokenizer, list(prompts), chat=chat, pad_to_multiple_of=bucket
  )
  if max_prompt_length and tokens.shape[1] > max_prompt_length:
    width = -(-max_prompt_length // bucket) * bucket
    tokens, mask = tokens[:, -width:].copy(), mask[:, -width:].copy()
    cut = width - max_prompt_length  # left padding up to the bucket width
    tokens[:, :cut], mask[:, :cut] = _pad_id(tokenizer), 0
  return tokens, mask


def _pad_id(tokenizer: Any) -> int:
  pad = getattr(tokenizer, 'pad_token_id', None)
  if pad is None:
    pad = getattr(tokenizer, 'eos_token_id', None)
  return int(pad or 0)


def repeat_groups(tokens: np.ndarray, mask: np.ndarray, group_size: int):
  """Each prompt row ``group_size`` times in consecutive rows."""
  return np.repeat(tokens, group_size, axis=0), np.repeat(mask, group_size, axis=0)


def local_rows(array: np.ndarray) -> np.ndarray:
  """This process's rows of a global host batch (all of it on one process)."""
  count, index = jax.process_count(), jax.process_index()
  rows = array.shape[0] // count
  return array[index * rows : (index + 1) * rows]


def sample_groups(
  model_config: Any,
  params: PyTree,
  prompt_tokens: np.ndarray,
  prompt_mask: np.ndarray,
  key: jax.Array,
  sampling: Sampling,
  mesh: Optional[Mesh] = None,
) -> Rollout:
  """``G`` sampled completions of each prompt (see the module docstring).

  Args:
    model_config: the decoder's :class:`~peft_jax.models.ModelConfig` (static).
    params: the policy's params tree (plain or adapted; sharded or not).
    prompt_tokens, prompt_mask: ``[prompts, P]`` left-padded host arrays, the same on every
      process.
    key: the step's key (:func:`sampling_key`).
    sampling: the decoding settings.
    mesh: place the ``[prompts * G, P]`` batch with the training batch sharding (split over
      ``('data', 'fsdp')``), so generation runs on the mesh that holds the params.
  Returns:
    A :class:`Rollout` of global device arrays.
  """
  tokens, mask = repeat_groups(prompt_tokens, prompt_mask, sampling.group_size)
  if mesh is not None:
    placed = distributed.global_batch(
      {'tokens': local_rows(tokens), 'mask': local_rows(mask)}, mesh, tokens.shape[0]
    )
    tokens_in, mask_in = placed['tokens'], placed['mask']
  else:
    tokens_in, mask_in = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)
  out = decode(
    params,
    tokens_in,
    mask_in,
    key,
    config=model_config,
    max_new_tokens=int(sampling.max_new_tokens),
    temperature=float(sampling.temperature),
    top_k=int(sampling.top_k),
    top_p=float(sampling.top_p),
    eos_token_ids=tuple(sampling.eos_token_ids),
    pad_token_id=int(sampling.pad_token_id),
  )
  completion_mask = (jnp.arange(sampling.max_new_tokens)[None, :] < out.lengths[:, None]).astype(
    jnp.float32
  )
  return Rollout(
    prompt_tokens=tokens_in,
    prompt_mask=mask_in,
    tokens=out.tokens,
    mask=completion_mask,
    lengths=out.lengths,
    sample_log_probs=out.log_probs,
  )


@functools.partial(jax.jit, static_argnums=1)
def _completion_mask(lengths, max_new_tokens: int):
  """``[B, N]`` float32: 1 on the first ``lengths[b]`` positions of row ``b``."""
  return (jnp.arange(max_new_tokens)[None, :] < lengths[:, None]).astype(jnp.float32)


def completion_texts(
  tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray, eos_token_ids: Sequence[int]
) -> list[str]:
  """Each completion's text, up to (not including) its EOS."""
  eos = {int(i) for i in eos_token_ids}
  return [
    tokenizer.decode([int(t) for t in row[:n] if int(t) not in eos], skip_special_tokens=True)
    for row, n in zip(np.asarray(tokens), np.asarray(lengths))
  ]
