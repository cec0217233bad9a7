"""Trains the small byte-level BPE tokenizer of the bundled world and saves it for transformers.

The tokenizer is a Hugging Face directory (``tokenizer.json``, ``tokenizer_config.json`` and the
chat template), so ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it like any hub
tokenizer and ``apply_chat_template`` works. Encoding with special tokens (the default) prepends
``<|bos|>``, as Llama's tokenizers do. The chat template does not write ``<|bos|>`` (the
tokenizer or the SFT loader adds it once) and ends each assistant turn with ``<|eos|>``:

    <|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|eos|>

:func:`render_chat` writes exactly the template's text, :func:`render_prompt` the part before
the response (what ``add_generation_prompt=True`` gives for one user message).
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Sequence

BOS_TOKEN = '<|bos|>'
EOS_TOKEN = '<|eos|>'
PAD_TOKEN = '<|pad|>'
ROLE_TOKENS = ('<|system|>', '<|user|>', '<|assistant|>')
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN) + ROLE_TOKENS
_ROLES = ('system', 'user', 'assistant')

CHAT_TEMPLATE = (
  '{% for message in messages %}'
  "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
  "{{ raise_exception('chat role must be system, user or assistant, got ' + message['role']) }}"
  '{% endif %}'
  "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
  "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\n' }}{% endif %}"
  '{% endfor %}'
  "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def render_prompt(prompt: str) -> str:
  """The chat text up to where the assistant starts answering."""
  return f'<|user|>\n{prompt}\n<|assistant|>\n'


def render_chat(prompt: str, response: str) -> str:
  """One user/assistant exchange exactly as the chat template writes it."""
  return render_prompt(prompt) + response + EOS_TOKEN


def train_tokenizer(
  texts: Iterable[str], out_dir: str, vocab_size: int = 2048, min_frequency: int = 2
) -> Dict[str, str]:
  """Trains a byte-level BPE on `texts` and saves an HF tokenizer directory to `out_dir`.

  Byte-level means every string is encodable (the 256 byte symbols are always in the vocabulary)
  and decoding inverts encoding exactly. Ids 0..5 are the special tokens in the order
  ``SPECIAL_TOKENS`` (pad, bos, eos, system, user, assistant).

  Args:
    texts: training text, e.g. the suite's corpus plus its target-domain text.
    out_dir: directory to write (created if missing).
    vocab_size: total vocabulary size, special tokens and the 256 bytes included.
    min_frequency: a merge must occur at least this often.

  Returns:
    {'tokenizer_dir', 'tokenizer_json', 'tokenizer_config'}: the written paths.
  """
  # Imported here so that generating the suite does not need tokenizers/transformers.
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers

  minimum = len(SPECIAL_TOKENS) + 256
  if vocab_size < minimum:
    raise ValueError(
      f'vocab_size must be >= {minimum} (256 bytes + {len(SPECIAL_TOKENS)} special '
      f'tokens), got {vocab_size}'
    )
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=min_frequency,
    special_tokens=list(SPECIAL_TOKENS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(_non_empty(texts), trainer=trainer)
  bos_id = tokenizer.token_to_id(BOS_TOKEN)
  tokenizer.post_processor = processors.TemplateProcessing(
    single=f'{BOS_TOKEN} $A',
    pair=f'{BOS_TOKEN} $A {BOS_TOKEN} $B',
    special_tokens=[(BOS_TOKEN, bos_id)],
  )
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tokenizer,
    bos_token=BOS_TOKEN,
    eos_token=EOS_TOKEN,
    pad_token=PAD_TOKEN,
    additional_special_tokens=list(ROLE_TOKENS),
    chat_template=CHAT_TEMPLATE,
    model_max_length=1024,
    clean_up_tokenization_spaces=False,
  )
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return {
    'tokenizer_dir': out_dir,
    'tokenizer_json': os.path.join(out_dir, 'tokenizer.json'),
    'tokenizer_config': os.path.join(out_dir, 'tokenizer_config.json'),
  }


def _non_empty(texts: Iterable[str]) -> Iterable[str]:
  count = 0
  for text in texts:
    if not isinstance(text, str):
      raise TypeError(f'train_tokenizer needs strings, got {type(text).__name__} at item {count}')
    count += 1
    if text:
      yield text
  if count == 0:
    raise ValueError('train_tokenizer got no texts')


def corpus_texts(paths: Sequence[str]) -> Iterable[str]:
  """Yields the 'text' (corpus JSONL), 'question'/'answer' (GSM-style JSONL) or
  'prompt'/'completion' (SFT JSONL) strings of the given JSONL files, for tokenizer training."""
  fields = ('text', 'question', 'answer', 'prompt', 'completion')
  for path in paths:
    with open(path) as f:
      for line_number, line in enumerate(f, 1):
        record = json.loads(line)
        found = [record[k] for k in fields if isinstance(record.get(k), str)]
        if not found:
          raise KeyError(
            f'{path}:{line_number} has none of the text fields {fields}; keys are {sorted(record)}'
          )
        yield from found
