"""SFT data: loading through datasets, loss masks, packing (hand-computed), resumable iterator."""

import json

import numpy as np
import pytest

from peft_jax.data import sft

TOK = sft.ByteTokenizer(vocab_size=64)


def _ids(text):
  return [3 + b % 61 for b in text.encode()]


def test_tokenize_prompt_completion_mask_by_hand():
  tokens, mask = sft.tokenize_row({'prompt': 'ab', 'completion': 'c'}, TOK, 16)
  assert tokens.tolist() == [1] + _ids('ab') + _ids('c') + [2]
  assert mask.tolist() == [0, 0, 0, 1, 1]
  # truncation
  tokens, mask = sft.tokenize_row({'prompt': 'ab', 'completion': 'cd'}, TOK, 4)
  assert tokens.tolist() == [1] + _ids('ab') + _ids('c') and mask.tolist() == [0, 0, 0, 1]


def test_messages_plain_format_masks_assistant_content_only():
  row = {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]}
  tokens, mask = sft.tokenize_row(row, TOK, 64)
  expected = [1] + _ids('<|user|>\n') + _ids('hi\n') + _ids('<|assistant|>\n') + _ids('yo\n') + [2]
  expected_mask = [0] * (1 + 9 + 3 + 14) + [1] * 3 + [1]
  assert tokens.tolist() == expected
  assert mask.tolist() == expected_mask


def test_messages_with_hf_chat_template():
  import tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {'[PAD]': 0, '[UNK]': 1, 'user': 2, 'assistant': 3, 'hi': 4, 'yo': 5, ':': 6, ';': 7}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token='[PAD]', unk_token='[UNK]')
  tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} ; {% endfor %}"
  row = {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]}
  tokens, mask = sft.tokenize_row(row, tok, 32, add_bos=False, add_eos=False)
  assert tokens.tolist() == [2, 6, 4, 7, 3, 6, 5, 7]
  assert mask.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_packing_by_hand():
  a = (np.array([5, 6, 7]), np.array([0, 1, 1]))
  b = (np.array([8, 9]), np.array([0, 1]))
  c = (np.array([10, 11, 12, 13]), np.array([0, 0, 1, 1]))
  d = (np.array([14, 15]), np.array([0, 0]))  # no target: dropped
  out = sft.pack_examples([a, b, c, d], seq_len=6)
  np.testing.assert_array_equal(out['tokens'], [[5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 0, 0]])
  np.testing.assert_array_equal(out['loss_mask'], [[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(out['segment_ids'], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(out['positions'], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
  padded = sft.pad_examples([a, b], seq_len=4)
  np.testing.assert_array_equal(padded['segment_ids'], [[1, 1, 1, 0], [1, 1, 0, 0]])


def test_packed_loss_weights_by_hand():
  from peft_jax.train.loss import next_token_targets

  out = sft.pack_examples(
    [(np.array([5, 6, 7]), np.array([0, 1, 1])), (np.array([8, 9]), np.array([0, 1]))], seq_len=6
  )
  targets, weights = next_token_targets(out)
  # position t predicts t+1: 5->6 (target), 6->7 (target), 7->8 (crosses doc: no),
  # 8->9 (target), 9->pad (no)
  np.testing.assert_array_equal(np.asarray(weights), [[1, 1, 0, 1, 0]])
  np.testing.assert_array_equal(np.asarray(targets), [[6, 7, 8, 9, 0]])


@pytest.fixture(scope='module')
def jsonl_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('sft') / 'train.jsonl'
  with open(path, 'w') as f:
    for i in range(40):
      f.write(json.dumps({'prompt': f'q{i} ', 'completion': f'answer {i}'}) + '\n')
  return str(path)


def test_load_jsonl_parquet_and_saved_dataset(jsonl_path, tmp_path):
  import datasets

  rows = sft.load_rows(jsonl_path)
  assert len(rows) == 40 and rows[3] == {'prompt': 'q3 ', 'completion': 'answer 3'}
  dataset = datasets.Dataset.from_list(rows)
  dataset.to_parquet(str(tmp_path / 'train.parquet'))
  assert sft.load_rows(str(tmp_path / 'train.parquet')) == rows
  dataset.save_to_disk(str(tmp_path / 'saved'))
  assert sft.load_rows(str(tmp_path / 'saved')) == rows
  with pytest.raises(KeyError, match='prompt'):
    sft.tokenize_row({'question': 'x'}, TOK, 8)
  with pytest.raises(FileNotFoundError, match='nope'):
    sft.load_rows(str(tmp_path / 'nope'))


def test_iterator_resume_and_disjoint_processes(jsonl_path):
  arrays = sft.build_sft_arrays(sft.load_rows(jsonl_path), TOK, seq_len=16, packing=False)
  assert arrays['tokens'].shape == (40, 16)
  it = sft.SFTIterator(arrays, global_batch_size=8, seed=3)
  batches = [next(it) for _ in range(12)]  # 5 batches per epoch: crosses two epoch boundaries
  # each epoch is a permutation: within an epoch no row repeats
  epoch0 = np.concatenate([b['tokens'] for b in batches[:5]])
  assert len({r.tobytes() for r in epoch0}) == 40
  # resume from state after 7 batches yields exactly the remaining ones
  it2 = sft.SFTIterator(arrays, global_batch_size=8, seed=3)
  for _ in range(7):
    next(it2)
  state = json.loads(json.dumps(it2.get_state()))
  it3 = sft.SFTIterator(arrays, global_batch_size=8, seed=3)
  it3.set_state(state)
  for expected in batches[7:]:
    got = next(it3)
    for key in sft.BATCH_KEYS:
      np.testing.assert_array_equal(got[key], expected[key])
  # two processes: disjoint halves whose union is the global batch
  p0 = sft.SFTIterator(arrays, 8, seed=3, process_index=0, process_count=2)
  p1 = sft.SFTIterator(arrays, 8, seed=3, process_index=1, process_count=2)
  for expected in batches[:6]:
    a, b = next(p0), next(p1)
    np.testing.assert_array_equal(np.concatenate([a['tokens'], b['tokens']]), expected['tokens'])
  with pytest.raises(ValueError, match='seed'):
    it3.set_state({'epoch': 0, 'index': 0, 'seed': 4})


def test_per_process_shards_read_only_their_rows_and_rebuild_the_global_batch(jsonl_path):
  """4 shards over 2 processes: each parses and tokenises only its rows (row i in shard i % 4),
  their batches concatenate to the 1-process batch by the definition (shard-major blocks of B/N
  rows, each shard's own permutation per epoch), and a saved state resumes exactly."""
  num_shards, batch = 4, 8  # 10 rows per shard, 2 rows of each batch: 5 batches per epoch
  one = sft.read_rows(jsonl_path, num_shards=num_shards, shards=range(num_shards))
  assert len(one.rows) == 40 and one.shards == [i % 4 for i in range(40)]
  halves = [
    sft.read_rows(jsonl_path, num_shards=4, shards=sft.process_shards(4, p, 2)) for p in (0, 1)
  ]
  assert [h.rows[0]['prompt'] for h in halves] == ['q0 ', 'q2 ']
  assert [len(h.rows) for h in halves] == [20, 20] and halves[1].shards[:3] == [2, 3, 2]
  assert halves[1].locations[0].endswith('line 3')
  make = lambda loaded: sft.ShardedSFTIterator(
    sft.build_shard_arrays(loaded, TOK, 16, packing=False), batch, num_shards, seed=3
  )
  single, procs = make(one), [make(h) for h in halves]
  rows = sft.load_rows(jsonl_path)
  for step in range(12):  # crosses two epoch boundaries of every shard
    got = next(single)
    # The definition, from the raw rows: block k holds shard k's rows of this step.
    epoch, index = divmod(step, 5)
    expected = []
    for k in range(num_shards):
      order = np.random.default_rng([3, epoch, k]).permutation(10)[2 * index : 2 * index + 2]
      expected += [sft.tokenize_row(rows[k + num_shards * int(j)], TOK, 16)[0] for j in order]
    for r, tokens in enumerate(expected):
      np.testing.assert_array_equal(got['tokens'][r, : len(tokens)], tokens)
    parts = [next(p) for p in procs]
    for key in sft.BATCH_KEYS:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), got[key])
  state = json.loads(json.dumps(procs[1].get_state()))
  assert state == {'step': 12, 'seed': 3, 'num_shards': 4}
  resumed = make(halves[1])
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['tokens'], next(procs[1])['tokens'])
  with pytest.raises(ValueError, match='num_shards'):
    resumed.set_state(dict(state, num_shards=2))
  with pytest.raises(ValueError, match='multiple of the number of processes'):
    sft.process_shards(3, 0, 2)
  with pytest.raises(ValueError, match='shard 1 of 4 has 1 packed rows'):
    sft.ShardedSFTIterator(
      {1: sft.build_sft_arrays(rows[:1], TOK, 16, packing=False)}, batch, num_shards
    )
