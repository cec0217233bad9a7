"""Log-likelihood of texts under a decoder: what the perplexity task family scores.

A text is tokenised as the tokenizer does for plain text (``add_special_tokens=True``: with a
bos when the tokenizer adds one) and cut to ``max_length`` tokens. Its negative log-likelihood
is the sum over its predicted tokens, every token after the first,

  ``NLL = - sum_{t=1}^{n-1} log p(x_t | x_<t)``   (nats),

and ``tokens = n - 1`` (a tokenizer that adds a bos makes every text token predicted). Rows are
right-padded to a multiple of ``length_bucket`` (so few shapes compile) and one jitted program
computes the whole batch: forward, log-softmax, the picked log-probabilities, masked sums.
:class:`LoglikScorer` serves one params tree or a stack of them (the α-grid: one vmapped
program for every grid point), as ``peft_jax.evals.generation.Generator`` does for generation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models.decoder import Decoder

LoglikFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def encode_for_loglik(
  tokenizer: Any, texts: Sequence[str], *, max_length: int = 256, length_bucket: int = 32
) -> tuple[np.ndarray, np.ndarray]:
  """``tokens [B, T] int32`` right-padded with the pad id (0 if none) and ``mask [B, T]``."""
  if not texts:
    raise ValueError('encode_for_loglik got no texts')
  if max_length < 2:
    raise ValueError(f'max_length must be >= 2 (one token predicted), got {max_length}')
  rows = [
    list(tokenizer(text, add_special_tokens=True)['input_ids'])[:max_length] for text in texts
  ]
  short = [i for i, r in enumerate(rows) if len(r) < 2]
  if short:
    raise ValueError(
      f'texts {short[:5]} encode to fewer than 2 tokens: nothing to predict (text {texts[short[0]]!r})'
    )
  length = -(-max(len(r) for r in rows) // length_bucket) * length_bucket
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  tokens = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, : len(row)] = row
    mask[i, : len(row)] = 1
  return tokens, mask


def sequence_nll(config: Any, params: Any, tokens: jax.Array, mask: jax.Array):
  """``(nll [B] float32, tokens [B] int32)``: summed next-token NLL of each right-padded row."""
  logits = Decoder(config).apply({'params': params}, tokens, attention_mask=mask)
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  valid = mask[:, 1:].astype(jnp.float32)
  return -jnp.sum(picked * valid, axis=-1), jnp.sum(mask[:, 1:], axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def nll_program(config: Any, stacked: bool):
  """:func:`sequence_nll` jitted (``stacked``: vmapped over the params' leading grid axis)."""
  run = functools.partial(sequence_nll, config)
  return jax.jit(jax.vmap(run, in_axes=(0, None, None)) if stacked else run)


@dataclasses.dataclass
class LoglikScorer:
  """Per-text NLL for one params tree or a stack of them (leading grid axis ``[A, ...]``).

  :meth:`fn` gives the harness's ``loglik_fn(texts) -> (nll [B] float64, tokens [B] int64)`` of
  grid point ``index``; each batch of texts runs once and is served from a cache.
  """

  model: Any
  params: Any
  tokenizer: Any
  stacked: bool = False
  max_length: int = 256
  length_bucket: int = 32

  def __post_init__(self):
    self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

  def _run(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    key = tuple(texts)
    if key not in self._cache:
      tokens, mask = encode_for_loglik(
        self.tokenizer, texts, max_length=self.max_length, length_bucket=self.length_bucket
      )
      nll, count = nll_program(self.model.config, self.stacked)(
        self.params, jnp.asarray(tokens), jnp.asarray(mask)
      )
      nll, count = np.asarray(nll, np.float64), np.asarray(count, np.int64)
      self._cache[key] = (nll, count) if self.stacked else (nll[None], count[None])
    return self._cache[key]

  def fn(self, index: int = 0) -> LoglikFn:
    def loglik_fn(texts):
      nll, count = self._run(list(texts))
      return nll[index], count[index]

    return loglik_fn


def model_loglik_fn(model: Any, params: Any, tokenizer: Any, **options: Any) -> LoglikFn:
  """The ``loglik_fn`` of one model (``options``: ``max_length``, ``length_bucket``)."""
  return LoglikScorer(model, params, tokenizer, **options).fn(0)
