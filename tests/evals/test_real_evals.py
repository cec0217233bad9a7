"""The real-base evaluation pieces: fact-answer normalisation and containment scoring, the
perplexity family against float64 PyTorch, retention sets and above-chance subtasks from fake
records (docs/REAL.md)."""

import json
import math
import os
import sys
import zlib

import jax
import numpy as np
import pytest
import torch

from peft_jax import hub
from peft_jax.common.text import normalize_fact
from peft_jax.evals import harness, intervals, real, retention, scorers, tasks
from peft_jax.evals.loglik import LoglikScorer, encode_for_loglik, model_loglik_fn

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import helpers_hf  # noqa: E402  pylint: disable=g-import-not-at-top


def _write_jsonl(path, rows):
  with open(path, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


@pytest.mark.parametrize(
  'text, expected',
  [
    ('Washington, D.C.', 'washington dc'),
    ('Brasília', 'brasilia'),
    ('Bogotá', 'bogota'),
    ('Nur-Sultan', 'nur sultan'),
    ("Sana'a", 'sanaa'),
    ('The Hague', 'hague'),
    ('St. John’s', 'st johns'),
    ('“Paris”—France', 'paris france'),
    ('Trinidad & Tobago', 'trinidad and tobago'),
    ('  Côte   d’Ivoire ', 'cote divoire'),
  ],
)
def test_normalize_fact(text, expected):
  assert normalize_fact(text) == expected


@pytest.mark.parametrize(
  'generation, gold, distractors, expected',
  [
    ('The capital of France is Paris.', ['Paris'], [], 1.0),
    ('PARIS', ['Paris'], [], 1.0),
    ('The capital of Brazil is Brasilia.', ['Brasília'], [], 1.0),
    ('It is Washington, D.C.', ['Washington D.C.', 'Washington'], [], 1.0),
    ('A Parisian would know.', ['Paris'], [], 0.0),  # whole words only
    ('The capital of Brazil is Sao Paulo.', ['Brasília'], [], 0.0),
    ('Kenya is in East Africa.', ['Africa'], ['Europe', 'Asia'], 1.0),
    ('Kenya is in Africa, not Europe.', ['Africa'], ['Europe', 'Asia'], 0.0),
    ('Japan is in the Asia-Pacific region.', ['Asia'], ['Oceania'], 1.0),
    ('Peru is located in South America.', ['America', 'Americas'], ['Asia'], 1.0),
    ('', ['Paris'], [], 0.0),
  ],
)
def test_score_contains(generation, gold, distractors, expected):
  assert scorers.score_contains(generation, gold, distractors) == expected


def test_score_contains_rejects_a_bare_string():
  with pytest.raises(TypeError, match='list of aliases'):
    scorers.score_contains('Paris', 'Paris')


def test_facts_task_through_the_harness(tmp_path):
  path = tmp_path / 'facts.jsonl'
  _write_jsonl(
    path,
    [
      {
        'id': 'capital:fr',
        'question': 'Capital of France?',
        'answer': ['Paris'],
        'relation': 'capital',
      },
      {
        'id': 'capital:jp',
        'question': 'Capital of Japan?',
        'answer': ['Tokyo'],
        'relation': 'capital',
      },
      {
        'id': 'continent:ke',
        'question': 'Continent of Kenya?',
        'answer': ['Africa'],
        'distractors': ['Europe'],
        'relation': 'continent',
      },
    ],
  )
  task = tasks.load_task({'type': 'facts', 'path': str(path)})
  assert task.chat and task.kind == 'general' and task.max_new_tokens == 32
  answers = {
    'Capital of France?': 'It is Paris.',
    'Capital of Japan?': 'Kyoto',
    'Continent of Kenya?': 'Africa or Europe',
  }
  result, rows = harness.evaluate_task(
    lambda prompts, **_: [answers[p] for p in prompts], task, key=jax.random.key(0), batch_size=2
  )
  assert result['score'] == pytest.approx(1 / 3)
  assert result['metrics']['accuracy/capital'] == pytest.approx(0.5)
  assert result['metrics']['accuracy/continent'] == 0.0
  assert [r['meta']['id'] for r in rows] == ['capital:fr', 'capital:jp', 'continent:ke']
  assert retention.retained_ids(rows) == ['capital:fr']


def test_floor_is_the_best_fixed_answer(tmp_path):
  path = tmp_path / 'facts.jsonl'
  continents = ['Africa', 'Africa', 'Africa', 'Europe']
  others = {'Africa': ['Europe'], 'Europe': ['Africa']}
  rows = [
    {
      'id': f'c{i}',
      'question': 'q',
      'answer': [c],
      'distractors': others[c],
      'relation': 'continent',
    }
    for i, c in enumerate(continents)
  ] + [
    {'id': f'k{i}', 'question': 'q', 'answer': [city], 'relation': 'capital'}
    for i, city in enumerate(['Paris', 'Rome', 'Paris', 'Lima'])
  ]
  _write_jsonl(path, rows)
  task = tasks.load_task({'type': 'facts', 'path': str(path)})
  # Always "Africa" on continents (3 of 4), always "Paris" on capitals (2 of 4): 5 of 8.
  assert real.floor_score(task, {}) == pytest.approx(5 / 8)


def test_facts_loader_errors_name_the_row(tmp_path):
  path = tmp_path / 'bad.jsonl'
  _write_jsonl(path, [{'id': 'a', 'question': 'q', 'answer': 'Paris'}])
  with pytest.raises(ValueError, match=r"bad.jsonl: row 1 \(id 'a'\): 'answer' must be a list"):
    tasks.load_task({'type': 'facts', 'path': str(path)})
  _write_jsonl(path, [{'id': 'a', 'question': 'q', 'answer': ['x']}] * 2)
  with pytest.raises(ValueError, match="row 2: id 'a' repeats"):
    tasks.load_task({'type': 'facts', 'path': str(path)})


# ---- retention sets and above-chance subtasks ------------------------------------------------


def _records(ids, correct):
  return [{'meta': {'id': i}, 'scores': {'accuracy': float(c)}} for i, c in zip(ids, correct)]


def test_retention_set_from_fake_records(tmp_path):
  source = tmp_path / 'facts.jsonl'
  rows = [{'id': f'q{i}', 'question': f'question {i}', 'answer': [f'a{i}']} for i in range(6)]
  _write_jsonl(source, rows)
  # Records in another order than the file (the harness sorts nothing, a caller might).
  records = _records(['q4', 'q0', 'q3', 'q1', 'q5', 'q2'], [1, 1, 0, 0, 1, 0])
  assert retention.retained_ids(records) == ['q4', 'q0', 'q5']
  out = tmp_path / 'ret' / 'facts_retention.jsonl'
  spec = retention.retention_spec(
    {'type': 'facts', 'name': 'facts', 'path': str(source), 'limit': 6},
    records,
    str(out),
    source={'package': 'countryinfo'},
  )
  assert spec == {'type': 'facts', 'name': 'facts_retention', 'path': str(out)}
  with open(out) as f:
    kept = [json.loads(line) for line in f]
  assert kept == [rows[0], rows[4], rows[5]]  # file order, rows unchanged
  with open(str(out) + '.json') as f:
    meta = json.load(f)
  assert meta['num_items'] == 3 and meta['num_source_items'] == 6
  assert meta['ids'] == ['q0', 'q4', 'q5'] and meta['package'] == 'countryinfo'
  assert meta['from_task'] == 'facts'
  assert [e.meta['id'] for e in tasks.load_task(spec).examples] == ['q0', 'q4', 'q5']


def test_retention_errors(tmp_path):
  source = tmp_path / 'facts.jsonl'
  _write_jsonl(source, [{'id': 'q0', 'question': 'q', 'answer': ['a']}])
  with pytest.raises(ValueError, match='empty'):
    retention.retention_spec(
      {'type': 'facts', 'path': str(source)}, _records(['q0'], [0]), str(tmp_path / 'r.jsonl')
    )
  with pytest.raises(KeyError, match=r"lacks the retained ids \['q9'\]"):
    retention.write_retention_set(str(source), ['q9'], str(tmp_path / 'r.jsonl'))
  with pytest.raises(KeyError, match="no meta\\['id'\\]"):
    retention.retained_ids([{'meta': {}, 'scores': {'accuracy': 1.0}}])


def test_above_chance_subtasks_matches_a_numpy_bootstrap():
  rng = np.random.default_rng(3)
  outcomes = {
    'easy': (rng.random(40) < 0.9).astype(float),
    'coin': (rng.random(40) < 0.5).astype(float),
  }
  chance = {'easy': 0.5, 'coin': 0.5}
  rows = [
    {'meta': {'subtask': s}, 'scores': {'accuracy': v}} for s, vs in outcomes.items() for v in vs
  ]
  got = retention.above_chance_subtasks(rows, chance, resamples=500, seed=1)
  for subtask, values in outcomes.items():
    # Independent percentile bootstrap of the mean, drawn as the module documents.
    draw = np.random.default_rng([1, zlib.crc32(subtask.encode())])
    means = values[draw.integers(0, values.size, size=(500, values.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert got[subtask]['interval'] == pytest.approx([lo, hi], abs=1e-12)
    assert got[subtask]['accuracy'] == pytest.approx(values.mean())
    assert got[subtask]['above'] == (lo > 0.5)
  assert got['easy']['above'] and not got['coin']['above']
  with pytest.raises(KeyError, match='no chance level'):
    retention.above_chance_subtasks(rows, {'easy': 0.5})


# ---- perplexity: the NLL against float64 PyTorch ---------------------------------------------

TEXTS = (
  'the cat sat on the mat .',
  'hello world',
  'what is two plus two ? the dog sat on a mat . the cat is a cat .',
  'a dog',
  'the mat',
)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  path = tmp_path_factory.mktemp('ppl_model')
  hf_model = helpers_hf.tiny_hf_model('llama')
  hf_model.save_pretrained(path)
  helpers_hf.save_tiny_tokenizer(path)
  model, params, tokenizer = hub.load_pretrained(path)
  return hf_model, model, params, tokenizer


def _torch_nll(hf_model, tokenizer, texts):
  """Per text: (-sum_t log p(x_t | x_<t) for t >= 1, n - 1), float64, one unpadded row each."""
  reference = hf_model.double()
  out = []
  with torch.no_grad():
    for text in texts:
      ids = torch.tensor([tokenizer(text, add_special_tokens=True)['input_ids']])
      log_probs = torch.log_softmax(reference(input_ids=ids).logits[0, :-1], dim=-1)
      picked = log_probs.gather(-1, ids[0, 1:, None])[:, 0]
      out.append((-float(picked.sum()), ids.shape[1] - 1))
  hf_model.float()
  return out


def test_loglik_matches_float64_torch(tiny):
  hf_model, model, params, tokenizer = tiny
  reference = _torch_nll(hf_model, tokenizer, TEXTS)
  nll, count = model_loglik_fn(model, params, tokenizer, length_bucket=8)(list(TEXTS))
  assert count.tolist() == [n for _, n in reference]
  # float32 forward: each log-probability is off by a few ulp of the logits' scale (~10), so
  # the sum over n tokens is within n * 1e-4.
  np.testing.assert_allclose(nll, [v for v, _ in reference], rtol=0, atol=1e-4 * max(count))


def test_perplexity_task_through_the_harness(tiny, tmp_path):
  hf_model, model, params, tokenizer = tiny
  reference = _torch_nll(hf_model, tokenizer, TEXTS)
  path = tmp_path / 'ppl.jsonl'
  _write_jsonl(path, [{'id': f'p{i}', 'text': t} for i, t in enumerate(TEXTS)])
  task = tasks.load_task({'type': 'perplexity', 'name': 'ppl', 'path': str(path)})
  assert task.mode == 'loglik' and task.kind == 'general'
  summary = harness.evaluate(
    model, params, tokenizer, [task], key=jax.random.key(0), batch_size=2, out_dir=str(tmp_path)
  )
  result = summary['tasks']['ppl']
  inv = [math.exp(-v / n) for v, n in reference]
  nll_per_token = sum(v for v, _ in reference) / sum(n for _, n in reference)
  assert result['score'] == pytest.approx(np.mean(inv), rel=1e-4)
  assert result['metrics']['nll_per_token'] == pytest.approx(nll_per_token, rel=1e-4)
  assert result['metrics']['perplexity'] == pytest.approx(math.exp(nll_per_token), rel=1e-4)
  assert intervals.point_estimate(result['per_example']) == pytest.approx(result['score'])
  assert summary['general'] == pytest.approx(result['score'])  # higher is better, in (0, 1]
  with open(tmp_path / 'ppl.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['meta']['id'] for r in rows] == [f'p{i}' for i in range(len(TEXTS))]
  with pytest.raises(ValueError, match="task 'ppl' scores log-likelihoods: pass a loglik_fn"):
    harness.evaluate_task(None, task, key=jax.random.key(0), batch_size=2)


def test_stacked_loglik_is_each_grid_point(tiny):
  _, model, params, tokenizer = tiny
  other = jax.tree.map(lambda x: x * 1.1, params)
  stacked = jax.tree.map(lambda a, b: np.stack([a, b]), params, other)
  scorer = LoglikScorer(model, stacked, tokenizer, stacked=True, length_bucket=8)
  for index, single in enumerate((params, other)):
    want, _ = model_loglik_fn(model, single, tokenizer, length_bucket=8)(list(TEXTS))
    got, _ = scorer.fn(index)(list(TEXTS))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_encode_for_loglik_errors(tiny):
  tokenizer = tiny[3]
  with pytest.raises(ValueError, match='fewer than 2 tokens'):
    encode_for_loglik(tokenizer, ['cat'])
  tokens, mask = encode_for_loglik(tokenizer, list(TEXTS), max_length=4, length_bucket=8)
  assert tokens.shape == (len(TEXTS), 8) and mask.sum(1).max() == 4
