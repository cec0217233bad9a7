"""Tokenizers from local Hugging Face directories, and left-padded prompt batches."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from peft_jax.hub.paths import resolve_path

TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model')


def load_tokenizer(path: str | os.PathLike):
  """``transformers.AutoTokenizer`` from a local dir (or ``'bundled:NAME'``), offline.

  A tokenizer without a pad token gets ``pad_token = eos_token`` (decoders have none), and the
  padding side is set to left, which generation needs.
  """
  import transformers  # pylint: disable=g-import-not-at-top  (slow import, only when used)

  text = str(path)
  if not text.startswith('bundled:') and not os.path.isdir(text):
    raise FileNotFoundError(
      f'tokenizer directory {text} does not exist (expected a directory '
      f'holding {" or ".join(TOKENIZER_FILES)})'
    )
  directory = resolve_path(path)
  if not any((directory / f).is_file() for f in TOKENIZER_FILES):
    raise FileNotFoundError(
      f'{directory} holds no tokenizer: expected one of {TOKENIZER_FILES}, '
      f'found {sorted(p.name for p in directory.iterdir())[:12]}'
    )
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
  except Exception as error:  # pylint: disable=broad-except  (transformers raises many types)
    raise ValueError(
      f'cannot load the tokenizer in {directory}: {type(error).__name__}: {error}'
    ) from error
  if tokenizer.pad_token is None and tokenizer.eos_token is not None:
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = 'left'
  return tokenizer


def _added_bos(tokenizer: Any):
  """The bos id the tokenizer puts before plain text (``None`` if it adds none)."""
  bos = getattr(tokenizer, 'bos_token_id', None)
  if bos is None:
    return None
  ids = tokenizer('a', add_special_tokens=True)['input_ids']
  return bos if ids and ids[0] == bos else None


def encode_prompts(
  tokenizer: Any,
  prompts: Sequence[str | Sequence[dict[str, str]]],
  *,
  chat: bool = True,
  pad_to_multiple_of: int = 1,
  add_generation_prompt: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Tokenises prompts into a left-padded batch.

  Args:
    tokenizer: a transformers tokenizer.
    prompts: strings (a user turn each when chatting) or, with ``chat``, message lists
      ``[{'role': ..., 'content': ...}]``.
    chat: apply the tokenizer's chat template when it has one (plain text otherwise).
    pad_to_multiple_of: round the padded length up to a multiple of this (fewer compiled shapes).
    add_generation_prompt: end the chat template with the assistant header.
  Returns:
    ``tokens [B, T] int32`` (pad id on the left) and ``attention_mask [B, T] int32``.
  """
  if not prompts:
    raise ValueError('encode_prompts got no prompts')
  use_template = chat and getattr(tokenizer, 'chat_template', None)
  rows = []
  for prompt in prompts:
    if use_template:
      messages = [{'role': 'user', 'content': prompt}] if isinstance(prompt, str) else list(prompt)
      ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
      )
      if isinstance(ids, dict) or hasattr(ids, 'keys'):
        ids = ids['input_ids']
      # A template that leaves bos out (ours does, so SFT rendering and tokenize_row agree) still
      # gets the bos the tokenizer adds to plain text: the model saw bos first in training.
      bos = _added_bos(tokenizer)
      if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    else:
      if not isinstance(prompt, str):
        raise ValueError('message-list prompts need chat=True and a tokenizer with a chat template')
      ids = tokenizer(prompt, add_special_tokens=True)['input_ids']
    rows.append([int(i) for i in ids])
  if any(not r for r in rows):
    raise ValueError('a prompt encoded to zero tokens')
  length = max(len(r) for r in rows)
  length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
  pad_id = tokenizer.pad_token_id
  if pad_id is None:
    pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, length - len(row) :] = row
    mask[i, length - len(row) :] = 1
  return tokens, mask


def encode_texts(
  tokenizer: Any,
  texts: Sequence[str],
  pairs: Sequence[str] | None = None,
  *,
  max_length: int = 128,
  pad_to_multiple_of: int = 8,
) -> dict[str, np.ndarray]:
  """Tokenises texts (or text pairs) for an encoder into a right-padded batch.

  Args:
    tokenizer: a transformers tokenizer of a BERT-family model (``[CLS] a [SEP] (b [SEP])``).
    texts: first segments.
    pairs: optional second segments (``token_type_ids`` 1 on them), one per text.
    max_length: longest row; longer rows are cut (the longest segment first, as transformers'
      ``truncation=True``).
    pad_to_multiple_of: round the padded length up to a multiple of this (fewer compiled shapes).
  Returns:
    ``{'tokens', 'attention_mask', 'token_type_ids'}``, each ``[B, T] int32``, padding on the
    right (BERT counts positions from the first slot).
  """
  if not texts:
    raise ValueError('encode_texts got no texts')
  if pairs is not None and len(pairs) != len(texts):
    raise ValueError(f'encode_texts: {len(texts)} texts but {len(pairs)} pairs')
  side = tokenizer.padding_side
  tokenizer.padding_side = 'right'
  try:
    encoded = tokenizer(
      list(texts),
      None if pairs is None else list(pairs),
      truncation=True,
      max_length=max_length,
      padding='longest',
      pad_to_multiple_of=pad_to_multiple_of,
      return_token_type_ids=True,
      return_tensors='np',
    )
  finally:
    tokenizer.padding_side = side
  return {
    'tokens': np.asarray(encoded['input_ids'], np.int32),
    'attention_mask': np.asarray(encoded['attention_mask'], np.int32),
    'token_type_ids': np.asarray(encoded['token_type_ids'], np.int32),
  }
