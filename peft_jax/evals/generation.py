"""Generation from prompts: the one path the harness, the arena and the α-grid paths use.

* :func:`generate_text`: prompts -> completion strings for one model (any sampling settings).
* :class:`Generator`: greedy batched generation for one params tree or a stack of them (the
  α-grid: leaves with a leading grid axis, all grid points decoded in one vmapped program), with
  each prompt batch decoded once and served from a cache to every task that asks.
* :func:`prompt_activations`: the captured activations of chat-rendered prompts.

Prompts are tokenised with :func:`peft_jax.hub.encode_prompts` (chat template when asked),
left-padded to a multiple of ``length_bucket`` so that few shapes compile, decoded with the
KV-cache program of :mod:`peft_jax.models.generate`, and detokenised up to (not including) EOS.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.hub import tokenizer as hub_tokenizer
from peft_jax.models.capture import capture_activations

# By name: the package re-exports a function called `generate` over the module's name.
from peft_jax.models.generate import decode, generate

PyTree = Any


def _eos_ids(config: Any, tokenizer: Any) -> tuple[int, ...]:
  ids = config.eos_token_ids or (
    () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
  )
  return tuple(sorted({int(i) for i in np.atleast_1d(np.asarray(ids, np.int64)).tolist()}))


def _decode_texts(
  tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray, eos: Sequence[int]
) -> list[str]:
  eos = set(eos)
  return [
    tokenizer.decode([int(t) for t in row[:n] if int(t) not in eos], skip_special_tokens=True)
    for row, n in zip(tokens, lengths)
  ]


def generate_text(
  model: Any,
  params: Any,
  tokenizer: Any,
  prompts: Sequence[str],
  *,
  chat: bool = False,
  length_bucket: int = 32,
  key: Optional[jax.Array] = None,
  max_new_tokens: int = 64,
  **sampling: Any,
) -> list[str]:
  """Generates a completion string per prompt (see the module docstring).

  Args:
    model, params: the decoder and its params (plain or adapted).
    tokenizer: a transformers tokenizer.
    prompts: the prompt strings.
    chat: apply the chat template.
    length_bucket: prompt-length rounding.
    key: PRNG key (default ``jax.random.key(0)``).
    max_new_tokens: decoding steps.
    **sampling: ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``.
  Returns:
    One string per prompt.
  """
  tokens, mask = hub_tokenizer.encode_prompts(
    tokenizer, list(prompts), chat=chat, pad_to_multiple_of=length_bucket
  )
  eos_token_id = sampling.pop('eos_token_id', None)
  if eos_token_id is None:
    eos = _eos_ids(model.config, tokenizer)
  else:
    eos = tuple(sorted(set(np.atleast_1d(np.asarray(eos_token_id, np.int64)).tolist())))
  if 'pad_token_id' not in sampling and tokenizer.pad_token_id is not None:
    sampling['pad_token_id'] = tokenizer.pad_token_id
  out = generate(
    model,
    params,
    tokens,
    mask,
    key=jax.random.key(0) if key is None else key,
    max_new_tokens=max_new_tokens,
    eos_token_id=eos,
    **sampling,
  )
  return _decode_texts(tokenizer, np.asarray(out.tokens), np.asarray(out.lengths), eos)


@functools.lru_cache(maxsize=None)
def greedy_program(config, max_new_tokens: int, eos: tuple[int, ...], pad: int, stacked: bool):
  """Greedy decoding ``(params, tokens, mask, key) -> GenerationOutput``, compiled once per
  setting and shape; ``stacked``: vmapped over the params' leading (grid) axis, one program."""
  run = functools.partial(
    decode,
    config=config,
    max_new_tokens=max_new_tokens,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    eos_token_ids=eos,
    pad_token_id=pad,
  )
  return jax.jit(jax.vmap(run, in_axes=(0, None, None, None))) if stacked else run


@dataclasses.dataclass
class Generator:
  """Greedy batched generation for one params tree or a stack of them.

  With ``stacked=True`` the leaves of ``params`` carry a leading grid axis ``[A, ...]`` and every
  call generates for all A models in one vmapped program; :meth:`fn` gives the harness's
  ``generate_fn`` of grid point ``i``, served from a cache so each prompt batch runs once.
  """

  model: Any
  params: PyTree
  tokenizer: Any
  stacked: bool = False
  length_bucket: int = 32

  def __post_init__(self):
    self._cache: dict[tuple, list[list[str]]] = {}

  def _run(self, prompts: Sequence[str], max_new_tokens: int, chat: bool) -> list[list[str]]:
    key = (tuple(prompts), int(max_new_tokens), bool(chat))
    if key in self._cache:
      return self._cache[key]
    tokens, mask = hub_tokenizer.encode_prompts(
      self.tokenizer, list(prompts), chat=chat, pad_to_multiple_of=self.length_bucket
    )
    eos = _eos_ids(self.model.config, self.tokenizer)
    pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
    run = greedy_program(self.model.config, int(max_new_tokens), eos, int(pad), self.stacked)
    out = run(
      self.params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32), jax.random.key(0)
    )
    out_tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    if not self.stacked:
      out_tokens, lengths = out_tokens[None], lengths[None]
    texts = [
      _decode_texts(self.tokenizer, grid_tokens, grid_lengths, eos)
      for grid_tokens, grid_lengths in zip(out_tokens, lengths)
    ]
    self._cache[key] = texts
    return texts

  def fn(self, index: int = 0):
    """``generate_fn(prompts, *, max_new_tokens, chat, temperature, key) -> list[str]``."""

    def generate_fn(prompts, *, max_new_tokens, chat, temperature, key):
      del key
      if temperature:
        raise ValueError('Generator decodes greedily (temperature 0)')
      return self._run(prompts, max_new_tokens, chat)[index]

    return generate_fn


def prompt_activations(
  model: Any,
  params: Any,
  tokenizer: Any,
  prompts: Sequence[str],
  names: Sequence[str],
  length_bucket: int = 32,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Captured activations of ``prompts`` (chat-rendered): ``({name: [B, T, d]}, mask [B, T])``."""
  tokens, mask = hub_tokenizer.encode_prompts(
    tokenizer, list(prompts), chat=True, pad_to_multiple_of=length_bucket
  )
  captures = capture_activations(model.config, params, tokens, mask, names)
  return captures, np.asarray(mask)
