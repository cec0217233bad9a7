"""The suite tokenizer: trains on the suite, loads with AutoTokenizer, round-trips, chat format."""

import json
import os

import pytest
import transformers

from peft_jax.data import suite, tokenizer_train

VOCAB_SIZE = 2048


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('suite'))
  paths = suite.generate_suite(root, seed=0)
  out_dir = os.path.join(root, 'tokenizer')
  written = suite.train_tokenizer(
    tokenizer_train.corpus_texts(suite.tokenizer_training_files(paths)),
    out_dir,
    vocab_size=VOCAB_SIZE,
  )
  tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
  return paths, written, tokenizer


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_directory_loads_with_special_tokens(trained):
  _, written, tokenizer = trained
  assert os.path.isfile(written['tokenizer_json'])
  assert os.path.isfile(written['tokenizer_config'])
  assert len(tokenizer) == VOCAB_SIZE
  assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
    '<|pad|>',
    '<|bos|>',
    '<|eos|>',
  )
  assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
  for token in ('<|system|>', '<|user|>', '<|assistant|>'):
    assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1
  # Default encoding prepends bos (Llama convention); no eos.
  ids = tokenizer('Kelsa is a city.').input_ids
  assert ids[0] == 1 and 2 not in ids


def test_round_trips_suite_and_arbitrary_text(trained):
  paths, _, tokenizer = trained
  texts = [d['text'] for d in _jsonl(paths['pretrain/corpus'])[:300]]
  texts += [r['question'] + '\n' + r['answer'] for r in _jsonl(paths['targets/gsm_test'])[:50]]
  texts += [r['question'] + '\n' + r['answer'] for r in _jsonl(paths['targets/cipher_test'])[:50]]
  texts += ['naïve café — 東京 🙂\ttabs  and   spaces\n\n', '  leading space', '{"a": [1, 2]}']
  for text in texts:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text


def test_suite_text_is_compact(trained):
  paths, _, tokenizer = trained
  corpus = ''.join(d['text'] for d in _jsonl(paths['pretrain/corpus']))
  target = ''.join(r['question'] + r['answer'] for r in _jsonl(paths['targets/gsm_train']))
  for text, most in ((corpus, 0.35), (target, 0.35)):
    tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
    assert tokens / len(text) < most, tokens / len(text)


def test_every_sft_example_fits_in_144_tokens(trained):
  paths, _, tokenizer = trained
  longest = 0
  for name in ('sft/general', 'sft/gsm', 'sft/cipher'):
    for record in _jsonl(paths[name]):
      ids = tokenizer(record['prompt'] + record['completion']).input_ids
      longest = max(longest, len(ids) + 1)  # + eos
  assert 40 < longest <= 144, longest


def test_chat_template_matches_render_chat(trained):
  _, _, tokenizer = trained
  messages = [
    {'role': 'user', 'content': 'Tell me about Kelsa.'},
    {'role': 'assistant', 'content': 'Kelsa is a city.'},
  ]
  text = tokenizer.apply_chat_template(messages, tokenize=False)
  assert text == '<|user|>\nTell me about Kelsa.\n<|assistant|>\nKelsa is a city.<|eos|>'
  assert text == suite.render_chat('Tell me about Kelsa.', 'Kelsa is a city.')
  prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
  assert prompt == suite.render_prompt('Tell me about Kelsa.')
  ids = tokenizer.apply_chat_template(messages, tokenize=True)
  ids = ids['input_ids'] if isinstance(ids, dict) or hasattr(ids, 'keys') else ids
  # bos comes from the tokenizer, once; the template text encodes to the same ids.
  assert tokenizer(text).input_ids == [tokenizer.bos_token_id] + list(ids)
  assert list(ids)[-1] == tokenizer.eos_token_id
  system = [{'role': 'system', 'content': 'Be brief.'}] + messages
  assert tokenizer.apply_chat_template(system, tokenize=False).startswith(
    '<|system|>\nBe brief.\n<|user|>\n'
  )
  with pytest.raises(Exception, match='chat role must be system, user or assistant'):
    tokenizer.apply_chat_template([{'role': 'robot', 'content': 'hi'}], tokenize=False)


def test_bad_inputs_raise(tmp_path):
  with pytest.raises(ValueError, match='vocab_size must be >= 262'):
    suite.train_tokenizer(['abc'], str(tmp_path), vocab_size=100)
  with pytest.raises(ValueError, match='no texts'):
    suite.train_tokenizer([], str(tmp_path))
  with pytest.raises(TypeError, match='item 1'):
    suite.train_tokenizer(['abc', 3], str(tmp_path))
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"title": "x"}\n')
  with pytest.raises(KeyError, match='title'):
    list(tokenizer_train.corpus_texts([str(bad)]))
