"""Supervised fine-tuning data: load, format, tokenise with loss masks, pack, iterate.

Rows are ``{"prompt", "completion"}`` or ``{"messages": [{"role", "content"}, ...]}``
(docs/CONVENTIONS.md). Each row becomes a list of text segments flagged "target" or not; the
tokens of target segments (completion / assistant turns, plus the closing EOS) get
``loss_mask = 1``; prompt tokens get 0.

Packed rows (``seq_len`` tokens each) hold several documents, told apart by
``segment_ids`` (1, 2, ... per row; 0 = padding), with ``positions`` restarting at 0 in each
document. The loss (``peft_jax.train.loss``) never crosses a segment boundary.

Rows longer than ``seq_len`` tokens are cut (a cut completion loses its closing EOS): they are
counted and reported with an example, and ``drop_truncated=True`` drops them instead.

The iterator is deterministic and resumable: epoch ``e`` visits the rows in the order
``default_rng([seed, e]).permutation(num_rows)``; its whole state is
``{'epoch', 'index', 'seed'}``. Process ``p`` of ``P`` gets rows ``[p*B/P, (p+1)*B/P)`` of each
global batch of ``B`` rows, so the processes see disjoint slices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
from absl import logging

BATCH_KEYS = ('tokens', 'loss_mask', 'segment_ids', 'positions')


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedRows:
  """SFT rows with where each came from and a fingerprint of what was read.

  ``locations[i]`` names row ``i`` in messages (``'<file> line 7'`` for JSON Lines,
  ``'<source> row 6'`` otherwise); ``fingerprint`` is ``{'path', 'size', 'sha256'}`` of the bytes
  read (see :func:`read_rows`).
  """

  rows: list
  locations: list
  fingerprint: dict
  # With a shard selection (read_rows(num_shards=...)): the shard of each row; else None.
  shards: Optional[list] = None


def _sha256_file(path: str) -> tuple[int, str]:
  digest = hashlib.sha256()
  size = 0
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
      size += len(block)
  return size, digest.hexdigest()


def _fingerprint_dir(path: str) -> dict:
  digest = hashlib.sha256()
  total = 0
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      size, file_hash = _sha256_file(full)
      total += size
      digest.update(f'{os.path.relpath(full, path)}\0{size}\0{file_hash}\n'.encode())
  return {'path': os.path.abspath(path), 'size': total, 'sha256': digest.hexdigest()}


def _parse_json_lines(path: str, text: str, keep=None) -> tuple[list, list]:
  """Rows and locations of JSON Lines text; ``keep(row_index)`` (row index: non-blank lines
  counted from 0) selects the rows parsed at all (``None``: every row)."""
  rows, locations = [], []
  index = -1
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    index += 1
    if keep is not None and not keep(index):
      continue
    try:
      row = json.loads(line)
    except ValueError as error:
      raise ValueError(
        f'{path} line {number}: not valid JSON ({getattr(error, "msg", error)} at '
        f'column {getattr(error, "colno", "?")}); expected one JSON object per '
        f'line such as {{"prompt": ..., "completion": ...}}. Found: '
        f'{line[:80]!r}'
      ) from error
    if not isinstance(row, dict):
      raise ValueError(
        f'{path} line {number}: expected a JSON object such as '
        f'{{"prompt": ..., "completion": ...}}, found {type(row).__name__} '
        f'{line[:80]!r}'
      )
    rows.append(row)
    locations.append(f'{path} line {number}')
  return rows, locations


def _read_json_file(path: str, keep=None) -> tuple[list, list, dict]:
  """Rows of a JSON Lines file, or of a JSON document holding a list of row objects
  (``keep``: as :func:`_parse_json_lines`; a JSON document is parsed whole, then selected)."""
  with open(path, 'rb') as f:
    data = f.read()
  fingerprint = {
    'path': os.path.abspath(path),
    'size': len(data),
    'sha256': hashlib.sha256(data).hexdigest(),
  }
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as error:
    line = data[: error.start].count(b'\n') + 1
    raise ValueError(
      f'{path} line {line}: not UTF-8 text ({error.reason} at byte '
      f'{error.start}); expected JSON Lines of SFT rows'
    ) from error
  if not text.strip():
    raise ValueError(
      f'{path} is empty; expected JSON Lines, one row per line such as '
      '{"prompt": ..., "completion": ...} or {"messages": [...]}'
    )
  stripped = text.lstrip()
  if stripped.startswith('['):  # one JSON document: a list of rows
    try:
      document = json.loads(text)
    except ValueError as error:
      raise ValueError(
        f'{path} line {getattr(error, "lineno", "?")} column '
        f'{getattr(error, "colno", "?")}: not valid JSON '
        f'({getattr(error, "msg", error)}); expected a JSON list of row objects '
        'or JSON Lines'
      ) from error
    bad = [i for i, row in enumerate(document) if not isinstance(row, dict)]
    if bad:
      raise ValueError(
        f'{path}: element {bad[0]} of the JSON list is a '
        f'{type(document[bad[0]]).__name__}; expected row objects such as '
        '{"prompt": ..., "completion": ...}'
      )
    kept = [i for i in range(len(document)) if keep is None or keep(i)]
    rows, locations = [document[i] for i in kept], [f'{path} row {i}' for i in kept]
    if document:
      return rows, locations, fingerprint  # (a selection may be empty: the caller says so)
  else:
    rows, locations = _parse_json_lines(path, text, keep)
    if keep is not None:
      return rows, locations, fingerprint  # the text holds rows; this selection may be empty
  if not rows:
    raise ValueError(f'{path} holds no rows (only blank lines); expected JSON Lines of SFT rows')
  return rows, locations, fingerprint


def read_rows(
  source: str,
  split: str = 'train',
  *,
  num_shards: int = 0,
  shards: Sequence[int] = (),
) -> LoadedRows:
  """Loads SFT rows, with their locations and a fingerprint of what was read.

  Args:
    source: a local ``.json``/``.jsonl`` file (read here: JSON Lines, or a JSON list of rows),
      a ``.parquet`` file, a directory written by ``Dataset.save_to_disk`` (or holding
      json/parquet files), or a hub dataset name already in the local cache (offline); those
      are read with ``datasets``.
    split: split to read (file sources have only ``'train'``).
    num_shards, shards: with ``num_shards > 0``, only the rows of the given shards are parsed
      and returned (row ``i``, counting rows from 0 in file order, is in shard
      ``i % num_shards``); :attr:`LoadedRows.shards` then gives each returned row's shard.
  Returns:
    :class:`LoadedRows`. The fingerprint hashes the file's bytes (a directory: every file in it;
    a cached hub dataset: the rows themselves), whatever shards are read.
  Raises:
    FileNotFoundError / ValueError: naming the file (and line, for JSON Lines), what was
      expected and what was found.
  """
  keep = None
  if num_shards:
    wanted = frozenset(int(k) for k in shards)
    bad = sorted(k for k in wanted if not 0 <= k < num_shards)
    if bad or not wanted:
      raise ValueError(f'read_rows: shards {sorted(shards)} must be in [0, {num_shards})')
    accepted: list[int] = []  # row indices kept, in order (the readers call keep once per row)

    def keep(i: int) -> bool:
      if i % num_shards in wanted:
        accepted.append(i)
        return True
      return False

    keep.accepted = accepted
  lower = source.lower()
  if os.path.isfile(source):
    if lower.endswith(('.json', '.jsonl')):
      rows, locations, fingerprint = _read_json_file(source, keep)
      return _selected(rows, locations, fingerprint, num_shards, keep)
    if not lower.endswith('.parquet'):
      raise ValueError(f'data file {source!r}: expected a .json, .jsonl or .parquet file')
    if os.path.getsize(source) == 0:
      raise ValueError(f'{source} is empty; expected a parquet file of SFT rows')
    size, file_hash = _sha256_file(source)
    fingerprint = {'path': os.path.abspath(source), 'size': size, 'sha256': file_hash}
  elif os.path.isdir(source):
    fingerprint = _fingerprint_dir(source)
  else:
    fingerprint = None
  rows = _load_with_datasets(source, split)
  if not rows:
    raise ValueError(f'SFT data {source!r} (split {split!r}) holds no rows')
  if fingerprint is None:
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode())
    fingerprint = {'path': source, 'size': None, 'sha256': digest.hexdigest()}
  kept = [i for i in range(len(rows)) if keep is None or keep(i)]
  return _selected(
    [rows[i] for i in kept], [f'{source} row {i}' for i in kept], fingerprint, num_shards, keep
  )


def _selected(rows, locations, fingerprint, num_shards, keep) -> LoadedRows:
  rows = [dict(r) for r in rows]
  if keep is None:
    return LoadedRows(rows, locations, fingerprint)
  indices = keep.accepted
  if len(indices) != len(rows):
    raise AssertionError(f'read_rows: {len(rows)} rows for {len(indices)} selected indices')
  return LoadedRows(rows, locations, fingerprint, [i % num_shards for i in indices])


def load_rows(source: str, split: str = 'train') -> list[dict]:
  """The rows of :func:`read_rows` (a list of row dicts)."""
  return read_rows(source, split).rows


def _load_with_datasets(source: str, split: str) -> list[dict]:
  import datasets  # heavy import, only when data is loaded

  lower = source.lower()
  try:
    if os.path.isfile(source):
      dataset = datasets.load_dataset('parquet', data_files=source, split='train')
    elif os.path.isdir(source):
      if os.path.exists(os.path.join(source, 'dataset_info.json')) or os.path.exists(
        os.path.join(source, 'dataset_dict.json')
      ):
        dataset = datasets.load_from_disk(source)
        if isinstance(dataset, datasets.DatasetDict):
          if split not in dataset:
            raise KeyError(f'split {split!r} not in {source!r}; splits: {sorted(dataset)}')
          dataset = dataset[split]
      else:
        dataset = datasets.load_dataset(source, split=split)
    else:
      try:
        dataset = datasets.load_dataset(source, split=split)
      except Exception as error:  # datasets raises many types; name the source in one message
        raise FileNotFoundError(
          f'SFT data {source!r} is neither a local file/directory nor a cached hub dataset: {error}'
        ) from error
  except (FileNotFoundError, KeyError):
    raise
  except Exception as error:  # pylint: disable=broad-except
    kind = 'parquet file' if lower.endswith('.parquet') else 'dataset directory'
    raise ValueError(
      f'{source}: cannot read it as a {kind} of SFT rows: {type(error).__name__}: {error}'
    ) from error
  return [dict(row) for row in dataset]


# ----------------------------------------------------------------------------------------------
# Tokenisers and formatting
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """A deterministic byte-level tokenizer for tiny random models (no vocabulary file needed).

  Ids: 0 = pad, 1 = BOS, 2 = EOS, and byte ``c`` -> ``3 + c % (vocab_size - 3)`` (bytes share ids
  when the vocabulary is smaller than 259, which a randomly initialised test model does not mind).
  """

  vocab_size: int = 259
  pad_token_id: int = 0
  bos_token_id: int = 1
  eos_token_id: int = 2
  chat_template: Optional[str] = None

  def __post_init__(self):
    if self.vocab_size < 4:
      raise ValueError(f'ByteTokenizer vocab_size={self.vocab_size} must be >= 4')

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    ids = [3 + byte % (self.vocab_size - 3) for byte in text.encode('utf-8')]
    return [self.bos_token_id] + ids if add_special_tokens else ids

  def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
    """``{'input_ids': encode(text)}``, the transformers call ``hub.encode_prompts`` uses."""
    return {'input_ids': self.encode(text, add_special_tokens=add_special_tokens)}

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Bytes ``id - 3`` back to text (exact when ``vocab_size >= 259``; smaller vocabularies
    fold bytes together, so decoding gives the lowest byte of each id's class). Special ids are
    dropped with ``skip_special_tokens``, else written as ``<pad>``/``<s>``/``</s>``."""
    out, names = bytearray(), {0: b'<pad>', 1: b'<s>', 2: b'</s>'}
    for token in ids:
      token = int(token)
      if token < 3:
        if not skip_special_tokens:
          out += names[token]
      elif token < self.vocab_size:
        out.append((token - 3) % 256)
    return out.decode('utf-8', errors='replace')


def _render_plain(message: Mapping[str, str]) -> tuple[str, str]:
  """Plain chat format: a ``<|role|>`` header line (never a target), then the content."""
  return f'<|{message["role"]}|>\n', f'{message["content"]}\n'


def format_segments(row: Mapping[str, Any], tokenizer: Any = None) -> list[tuple[str, bool]]:
  """Text segments of one row with their target flag.

  ``{"prompt", "completion"}``: ``[(prompt, False), (completion, True)]``.
  ``{"messages": [...]}``: with a tokenizer that has a chat template, message ``i`` is the text
  the template adds for it (``render(m[:i+1])`` minus ``render(m[:i])``); otherwise the plain
  format of :func:`_render_plain`. Assistant messages are targets (their header is not, in the
  plain format).
  """
  if 'messages' in row and row['messages'] is not None:
    messages = list(row['messages'])
    for i, message in enumerate(messages):
      if not isinstance(message, Mapping) or 'role' not in message or 'content' not in message:
        raise ValueError(f'messages[{i}] = {message!r} must be a dict with "role" and "content"')
    template = getattr(tokenizer, 'chat_template', None)
    segments = []
    if template:
      previous = ''
      for i, message in enumerate(messages):
        text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(previous):
          raise ValueError(
            'the chat template does not render message prefixes as prefixes; '
            'cannot place loss masks per message'
          )
        segments.append((text[len(previous) :], message['role'] == 'assistant'))
        previous = text
    else:
      for message in messages:
        header, body = _render_plain(message)
        segments.append((header, False))
        segments.append((body, message['role'] == 'assistant'))
    return segments
  if 'prompt' in row and 'completion' in row:
    return [(str(row['prompt']), False), (str(row['completion']), True)]
  raise KeyError(
    f'SFT row has keys {sorted(row)}; expected "prompt" and "completion", or "messages"'
  )


def _encode(tokenizer: Any, text: str) -> list[int]:
  if hasattr(tokenizer, 'encode'):
    return list(tokenizer.encode(text, add_special_tokens=False))
  return list(tokenizer(text, add_special_tokens=False)['input_ids'])


def tokenize_row(
  row: Mapping[str, Any],
  tokenizer: Any,
  max_length: int,
  *,
  add_bos: bool = True,
  add_eos: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Tokens and loss mask of one row (BOS not a target; the closing EOS is), truncated.

  Returns:
    ``(tokens [n] int32, loss_mask [n] int32)`` with ``n <= max_length``.
  """
  tokens: list[int] = []
  mask: list[int] = []
  bos = getattr(tokenizer, 'bos_token_id', None)
  if add_bos and bos is not None:
    tokens.append(bos)
    mask.append(0)
  for text, is_target in format_segments(row, tokenizer):
    ids = _encode(tokenizer, text)
    tokens.extend(ids)
    mask.extend([int(is_target)] * len(ids))
  eos = getattr(tokenizer, 'eos_token_id', None)
  if add_eos and eos is not None:
    tokens.append(eos if isinstance(eos, int) else eos[0])
    mask.append(1)
  return (np.asarray(tokens[:max_length], np.int32), np.asarray(mask[:max_length], np.int32))


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------


def pack_examples(
  examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
  """Greedy in-order packing of ``(tokens, loss_mask)`` examples into rows of ``seq_len``.

  An example goes into the current row when it fits, else it starts a new row (examples longer
  than ``seq_len`` are truncated). Examples with no target token are dropped.

  Returns:
    ``tokens, loss_mask, segment_ids, positions``, each ``[num_rows, seq_len] int32``.
  """
  rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
  used = seq_len  # forces a new row for the first example
  for tokens, mask in examples:
    tokens, mask = tokens[:seq_len], mask[:seq_len]
    if not mask.any():
      continue
    if used + len(tokens) > seq_len:
      rows.append([])
      used = 0
    rows[-1].append((tokens, mask))
    used += len(tokens)
  return _fill_rows(rows, seq_len, pad_id)


def pad_examples(
  examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
  """One example per row, right-padded (same outputs as :func:`pack_examples`)."""
  rows = [[(t[:seq_len], m[:seq_len])] for t, m in examples if m[:seq_len].any()]
  return _fill_rows(rows, seq_len, pad_id)


def _fill_rows(rows, seq_len, pad_id):
  if not rows:
    raise ValueError('no example has a target token within seq_len; nothing to train on')
  out = {
    'tokens': np.full((len(rows), seq_len), pad_id, np.int32),
    'loss_mask': np.zeros((len(rows), seq_len), np.int32),
    'segment_ids': np.zeros((len(rows), seq_len), np.int32),
    'positions': np.zeros((len(rows), seq_len), np.int32),
  }
  for r, documents in enumerate(rows):
    start = 0
    for segment, (tokens, mask) in enumerate(documents, start=1):
      end = start + len(tokens)
      out['tokens'][r, start:end] = tokens
      out['loss_mask'][r, start:end] = mask
      out['segment_ids'][r, start:end] = segment
      out['positions'][r, start:end] = np.arange(len(tokens))
      start = end
  return out


def build_sft_arrays(
  rows: Iterable[Mapping[str, Any]],
  tokenizer: Any,
  seq_len: int,
  *,
  packing: bool = True,
  drop_truncated: bool = False,
  locations: Optional[Sequence[str]] = None,
) -> dict[str, np.ndarray]:
  """Rows -> tokenised, masked, packed (or padded) ``[num_rows, seq_len]`` arrays.

  Rows longer than ``seq_len`` tokens are cut to it (``drop_truncated``: left out), with a
  warning giving their count and an example. ``locations`` names each row in messages
  (e.g. ``'train.jsonl line 7'``, from :func:`read_rows`).
  """
  pad_id = getattr(tokenizer, 'pad_token_id', None)
  pad_id = 0 if pad_id is None else pad_id
  examples, cut = [], []
  count = 0
  for index, row in enumerate(rows):
    count += 1
    where = locations[index] if locations is not None else f'row {index}'
    try:
      tokens, mask = tokenize_row(row, tokenizer, sys.maxsize)
    except (KeyError, ValueError, TypeError) as error:
      message = error.args[0] if isinstance(error, KeyError) and error.args else error
      raise ValueError(f'{where}: {message}') from error
    if len(tokens) > seq_len:
      cut.append((where, len(tokens), row))
      if drop_truncated:
        continue
    examples.append((tokens[:seq_len], mask[:seq_len]))
  if cut:
    where, length, row = cut[0]
    example = json.dumps(row, default=str)
    logging.warning(
      '%d of %d SFT rows are longer than seq_len=%d tokens and were %s (a cut row loses its '
      'end, completion and EOS included). Example: %s (%d tokens): %s%s',
      len(cut),
      count,
      seq_len,
      'dropped' if drop_truncated else 'cut to seq_len',
      where,
      length,
      example[:300] + ('...' if len(example) > 300 else ''),
      ''
      if drop_truncated
      else '. Set config.data.drop_truncated=True to drop them instead, '
      'or raise config.data.seq_len.',
    )
  return (pack_examples if packing else pad_examples)(examples, seq_len, pad_id)


# ----------------------------------------------------------------------------------------------
# Iterator
# ----------------------------------------------------------------------------------------------


class SFTIterator(Iterator[dict]):
  """Deterministic, resumable, per-process iterator over packed rows (module docstring).

  Args:
    arrays: ``{name: [num_rows, seq_len]}`` from :func:`build_sft_arrays` (same on every process).
    global_batch_size: rows per global batch ``B`` (the last incomplete batch of an epoch is
      dropped).
    seed: shuffling seed.
    process_index / process_count: this process and the number of processes (``B`` must divide).
    shuffle: permute rows each epoch.
  """

  def __init__(
    self,
    arrays: Mapping[str, np.ndarray],
    global_batch_size: int,
    *,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
  ):
    num_rows = {len(v) for v in arrays.values()}
    if len(num_rows) != 1:
      raise ValueError(
        f'arrays have different row counts: { {k: len(v) for k, v in arrays.items()} }'
      )
    self.num_rows = num_rows.pop()
    if global_batch_size % process_count:
      raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by process_count={process_count}'
      )
    if self.num_rows < global_batch_size:
      raise ValueError(
        f'only {self.num_rows} packed rows, fewer than one global batch of '
        f'{global_batch_size}; add data or lower the batch size'
      )
    self.arrays = dict(arrays)
    self.global_batch_size = global_batch_size
    self.process_index = process_index
    self.process_count = process_count
    self.shuffle = shuffle
    self.batches_per_epoch = self.num_rows // global_batch_size
    self.epoch, self.index, self.seed = 0, 0, int(seed)

  def _order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_rows)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

  def __next__(self) -> dict[str, np.ndarray]:
    if self.index >= self.batches_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    per_process = self.global_batch_size // self.process_count
    start = self.index * self.global_batch_size + self.process_index * per_process
    rows = self._order(self.epoch)[start : start + per_process]
    self.index += 1
    return {name: array[rows] for name, array in self.arrays.items()}

  def get_state(self) -> dict[str, int]:
    """``{'epoch', 'index', 'seed'}``: the position of the *next* batch (JSON-serialisable)."""
    return {'epoch': int(self.epoch), 'index': int(self.index), 'seed': int(self.seed)}

  def set_state(self, state: Mapping[str, int]) -> None:
    missing = {'epoch', 'index', 'seed'} - set(state)
    if missing:
      raise KeyError(f'iterator state {dict(state)} lacks {sorted(missing)}')
    if int(state['seed']) != self.seed:
      raise ValueError(f'iterator state has seed {state["seed"]}, this iterator {self.seed}')
    self.epoch, self.index = int(state['epoch']), int(state['index'])


# ----------------------------------------------------------------------------------------------
# Per-process loading: each process reads and tokenises only its shards
# ----------------------------------------------------------------------------------------------


def process_shards(num_shards: int, process_index: int, process_count: int) -> tuple[int, ...]:
  """The shards process ``p`` of ``P`` reads: ``[p * N/P, (p + 1) * N/P)`` (contiguous, so its
  rows of every global batch are a contiguous slice, as ``parallel.global_batch`` expects).

  Raises:
    ValueError: ``num_shards`` is not a positive multiple of ``process_count``.
  """
  if num_shards <= 0 or num_shards % process_count:
    raise ValueError(
      f'config.data.num_shards={num_shards} must be a positive multiple of the number of '
      f'processes ({process_count})'
    )
  per = num_shards // process_count
  return tuple(range(process_index * per, (process_index + 1) * per))


def build_shard_arrays(
  loaded: LoadedRows, tokenizer: Any, seq_len: int, **kwargs: Any
) -> dict[int, dict[str, np.ndarray]]:
  """``{shard: build_sft_arrays of its rows}`` for the rows of ``read_rows(num_shards=...)``:
  each shard is tokenised and packed on its own (``kwargs``: packing, drop_truncated).

  Raises:
    ValueError: ``loaded`` has no shard selection, or a shard holds no rows (naming it).
  """
  if loaded.shards is None:
    raise ValueError('build_shard_arrays: read the rows with read_rows(num_shards=..., shards=...)')
  by_shard: dict[int, list[int]] = {}
  for index, shard in enumerate(loaded.shards):
    by_shard.setdefault(shard, []).append(index)
  out = {}
  for shard, indices in sorted(by_shard.items()):
    out[shard] = build_sft_arrays(
      [loaded.rows[i] for i in indices],
      tokenizer,
      seq_len,
      locations=[loaded.locations[i] for i in indices],
      **kwargs,
    )
  return out


class ShardedSFTIterator(Iterator[dict]):
  """Per-process batches from this process's shards only (``config.data.num_shards``).

  The rows are split into ``N`` shards (row ``i`` in shard ``i % N``); each shard is tokenised,
  packed and shuffled on its own. Global batch ``t`` (``B`` rows) is shard-major: rows
  ``[k*B/N, (k+1)*B/N)`` come from shard ``k``, its batch ``t mod n_k`` of epoch ``t // n_k``
  (``n_k = rows_k // (B/N)``; each shard wraps on its own), in the order
  ``default_rng([seed, epoch, k]).permutation(rows_k)``. So batch ``t`` depends on
  ``(data, N, B, seed, t)`` alone, not on the number of processes: a process holding shards
  ``[p*N/P, (p+1)*N/P)`` yields exactly its contiguous slice of the global batch, and 2
  processes reproduce one. The whole state is ``{'step', 'seed', 'num_shards'}``.

  Args:
    shard_arrays: ``{shard: {name: [rows_k, seq_len]}}`` of this process's shards
      (:func:`build_shard_arrays`).
    global_batch_size: ``B`` (a multiple of ``num_shards``).
    num_shards: ``N``.
    seed, shuffle: as :class:`SFTIterator`.
  Raises:
    ValueError: ``B`` not a multiple of ``N``, or a shard with fewer packed rows than its
      ``B/N`` rows of a batch (naming the shard).
  """

  def __init__(
    self,
    shard_arrays: Mapping[int, Mapping[str, np.ndarray]],
    global_batch_size: int,
    num_shards: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
  ):
    if global_batch_size % num_shards:
      raise ValueError(
        f'global_batch_size={global_batch_size} is not a multiple of '
        f'config.data.num_shards={num_shards}'
      )
    self.per_shard = global_batch_size // num_shards
    self.shards = sorted(int(k) for k in shard_arrays)
    self.arrays = {k: dict(shard_arrays[k]) for k in self.shards}
    self.num_rows = {}
    for k in self.shards:
      rows = {len(v) for v in self.arrays[k].values()}
      if len(rows) != 1:
        raise ValueError(f'shard {k}: arrays have different row counts')
      self.num_rows[k] = rows.pop()
      if self.num_rows[k] < self.per_shard:
        raise ValueError(
          f'data shard {k} of {num_shards} has {self.num_rows[k]} packed rows, fewer than its '
          f'{self.per_shard} rows of every global batch; add data or lower '
          'config.data.num_shards or the batch size'
        )
    self.num_shards, self.seed, self.shuffle = int(num_shards), int(seed), shuffle
    self.step = 0

  def _rows(self, shard: int, step: int) -> np.ndarray:
    batches = self.num_rows[shard] // self.per_shard
    epoch, index = divmod(step, batches)
    order = (
      np.random.default_rng([self.seed, epoch, shard]).permutation(self.num_rows[shard])
      if self.shuffle
      else np.arange(self.num_rows[shard])
    )
    return order[index * self.per_shard : (index + 1) * self.per_shard]

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [
      {n: a[self._rows(k, self.step)] for n, a in self.arrays[k].items()} for k in self.shards
    ]
    self.step += 1
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

  def get_state(self) -> dict[str, int]:
    """``{'step', 'seed', 'num_shards'}``: the position of the *next* batch."""
    return {'step': int(self.step), 'seed': self.seed, 'num_shards': self.num_shards}

  def set_state(self, state: Mapping[str, int]) -> None:
    missing = {'step', 'seed', 'num_shards'} - set(state)
    if missing:
      raise KeyError(f'sharded iterator state {dict(state)} lacks {sorted(missing)}')
    for key in ('seed', 'num_shards'):
      if int(state[key]) != getattr(self, key):
        raise ValueError(
          f'iterator state has {key} {state[key]}, this iterator {getattr(self, key)}'
        )
    self.step = int(state['step'])
