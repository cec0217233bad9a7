"""Loaders on files in the real benchmark formats, and the harness with a fake generate_fn."""

import json
import math
import os

import jax
import pytest

from peft_jax.evals import axes, harness, tasks


def _write_jsonl(path, rows):
  with open(path, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('eval_data')
  _write_jsonl(
    root / 'gsm8k.jsonl',
    [
      {
        'question': 'Natalia sold 48 clips in April and half as many in May. How many in total?',
        'answer': 'In May she sold 48/2 = <<48/2=24>>24.\n48+24 = <<48+24=72>>72\n#### 72',
      },
      {
        'question': 'Weng earns $12 an hour for 50 minutes. How much?',
        'answer': '12/60 = $<<12/60=0.2>>0.2 per minute.\n0.2 x 50 = $<<0.2*50=10>>10\n#### 10',
      },
      {'question': 'A big number?', 'answer': 'It is big.\n#### 1,024'},
    ],
  )
  _write_jsonl(
    root / 'math500.jsonl',
    [
      {
        'problem': 'What is $\\frac{2}{4}$ simplified?',
        'solution': 'It is $\\boxed{\\frac{1}{2}}$.',
        'answer': '\\frac{1}{2}',
        'subject': 'Prealgebra',
        'level': 1,
        'unique_id': 'test/a.json',
      },
      {
        'problem': 'Convert $(0,3)$ to polar.',
        'solution': '... $\\boxed{(3,\\frac{\\pi}{2})}$',
        'answer': '\\left( 3, \\frac{\\pi}{2} \\right)',
        'subject': 'Precalculus',
        'level': 2,
        'unique_id': 'test/b.json',
      },
    ],
  )
  # IFEval rows as exported by Hugging Face: every kwargs key present, unused ones None.
  all_none = {'num_words': None, 'relation': None, 'keyword': None, 'language': None}
  _write_jsonl(
    root / 'ifeval.jsonl',
    [
      {
        'key': 1000,
        'prompt': 'Write four words without commas.',
        'instruction_id_list': ['punctuation:no_comma', 'length_constraints:number_words'],
        'kwargs': [dict(all_none), {**all_none, 'num_words': 3, 'relation': 'at least'}],
      },
      {
        'key': 1001,
        'prompt': 'Answer in lowercase.',
        'instruction_id_list': ['change_case:english_lowercase'],
        'kwargs': [dict(all_none)],
      },
    ],
  )
  bbh = root / 'bbh'
  bbh.mkdir()
  (bbh / 'boolean_expressions.json').write_text(
    json.dumps(
      {
        'examples': [
          {'input': 'not ( True ) and ( True ) is', 'target': 'False'},
          {'input': 'True and not not ( not False ) is', 'target': 'True'},
        ]
      }
    )
  )
  (bbh / 'date_understanding.json').write_text(
    json.dumps(
      {
        'examples': [
          {
            'input': 'Today is 9/7. What is the date tomorrow?\nOptions:\n(A) 9/8\n(B) 9/6',
            'target': '(A)',
          }
        ]
      }
    )
  )
  fewshot = root / 'cot'
  fewshot.mkdir()
  (fewshot / 'boolean_expressions.txt').write_text(
    'Evaluate boolean expressions.\n\nQ: True is\nA: So the answer is True.\n'
  )
  (fewshot / 'date_understanding.txt').write_text('Infer the date.\n')
  _write_jsonl(
    root / 'nq.jsonl',
    [
      {'question': 'capital of france', 'answer': ['Paris']},
      {'question': 'first us president', 'answer': ['George Washington', 'Washington']},
    ],
  )
  return root


def _specs(root):
  return [
    {'type': 'gsm8k', 'path': str(root / 'gsm8k.jsonl')},
    {'type': 'math500', 'path': str(root / 'math500.jsonl')},
    {'type': 'ifeval', 'path': str(root / 'ifeval.jsonl')},
    {'type': 'bbh', 'path': str(root / 'bbh'), 'fewshot_dir': str(root / 'cot')},
    {'type': 'nq_open', 'path': str(root / 'nq.jsonl')},
  ]


# The fake model's answers, keyed by a distinctive piece of each prompt.
ANSWERS = {
  # A base model keeps going with the next few-shot question; the stop string cuts it off.
  'Natalia': '48/2 = 24, 48 + 24 = 72.\n#### 72\nQuestion: What is 1+1?\nAnswer: #### 2',
  'Weng': 'The answer is 11.',
  'big number': 'So it is \\boxed{1024}.',
  'simplified': 'We get \\boxed{0.5}',
  'polar': 'r = 3 so \\boxed{(3,\\frac{\\pi}{2})}',
  'four words': 'one two three four',
  'lowercase': 'Sure, here it is:\nthe dog is in the house and it is happy with the food',
  'not ( True )': 'not True is False. So the answer is False.',
  'not not': 'So the answer is False.',
  'tomorrow': '9/7 plus one day. So the answer is (A).',
  'france': 'Paris.',
  'president': 'Abraham Lincoln',
}


def fake_generate(prompts, *, max_new_tokens, chat, temperature, key):
  del max_new_tokens, chat, temperature, key
  outputs = []
  for prompt in prompts:
    question = prompt.rsplit('Q:', 1)[-1] if 'Q:' in prompt else prompt
    matches = [answer for marker, answer in ANSWERS.items() if marker in question]
    assert len(matches) == 1, prompt
    outputs.append(matches[0])
  return outputs


def test_loaders_read_real_formats(data_dir):
  loaded = {spec['type']: tasks.load_task(spec) for spec in _specs(data_dir)}
  gsm8k = loaded['gsm8k']
  assert gsm8k.kind == 'target' and [e.reference for e in gsm8k.examples] == ['72', '10', '1,024']
  assert gsm8k.examples[0].prompt.startswith('Question: Natalia')
  assert loaded['math500'].examples[1].reference == '\\left( 3, \\frac{\\pi}{2} \\right)'
  assert loaded['math500'].examples[1].meta['unique_id'] == 'test/b.json'
  ifeval_task = loaded['ifeval']
  assert ifeval_task.kind == 'general' and ifeval_task.chat
  assert ifeval_task.examples[0].meta['kwargs'] == [{}, {'num_words': 3, 'relation': 'at least'}]
  assert ifeval_task.examples[0].prompt == 'Write four words without commas.'
  bbh = loaded['bbh']
  assert [e.meta['subtask'] for e in bbh.examples] == [
    'boolean_expressions',
    'boolean_expressions',
    'date_understanding',
  ]
  assert bbh.examples[0].prompt.startswith('Evaluate boolean expressions.')
  assert bbh.examples[0].prompt.endswith(
    "Q: not ( True ) and ( True ) is\nA: Let's think step by step."
  )
  assert loaded['nq_open'].examples[1].reference == ['George Washington', 'Washington']
  limited = tasks.load_task(
    {'type': 'bbh', 'path': str(data_dir / 'bbh'), 'limit': 1, 'subtasks': ['boolean_expressions']}
  )
  assert len(limited.examples) == 1


def test_loader_errors_name_the_problem(data_dir, tmp_path):
  with pytest.raises(KeyError, match="unknown keys \\['shots'\\]"):
    tasks.load_task({'type': 'gsm8k', 'path': str(data_dir / 'gsm8k.jsonl'), 'shots': 5})
  with pytest.raises(KeyError, match="unknown task type 'gsm9k'"):
    tasks.load_task({'type': 'gsm9k', 'path': 'x'})
  with pytest.raises(FileNotFoundError, match='missing.jsonl'):
    tasks.load_task({'type': 'nq_open', 'path': str(tmp_path / 'missing.jsonl')})
  bad = tmp_path / 'bad.jsonl'
  _write_jsonl(bad, [{'question': 'q', 'answer': 'a\n#### 1'}, {'question': 'q2'}])
  with pytest.raises(KeyError, match="bad.jsonl:2: missing field\\(s\\) \\['answer'\\]"):
    tasks.load_task({'type': 'gsm8k', 'path': str(bad)})
  with pytest.raises(KeyError, match="BBH subtasks \\['navigate'\\] not found"):
    tasks.load_task({'type': 'bbh', 'path': str(data_dir / 'bbh'), 'subtasks': ['navigate']})
  bad_ifeval = tmp_path / 'bad_ifeval.jsonl'
  _write_jsonl(
    bad_ifeval,
    [
      {
        'key': 1,
        'prompt': 'p',
        'instruction_id_list': ['punctuation:no_comma'],
        'kwargs': [{'num_words': 3}],
      }
    ],
  )
  with pytest.raises(
    KeyError, match="bad_ifeval.jsonl: IFEval key 1: .*unknown kwargs \\['num_words'\\]"
  ):
    tasks.load_task({'type': 'ifeval', 'path': str(bad_ifeval)})
  assert harness.truncate_at_stop('a\nQ: b\nQuestion: c', ['\nQuestion:', '\nQ:']) == 'a'
  assert harness.truncate_at_stop('abc', []) == 'abc'
  with pytest.raises(ValueError, match='pass_k values \\[3\\]'):
    tasks.load_task(
      {'type': 'gsm8k', 'path': str(data_dir / 'gsm8k.jsonl'), 'num_samples': 2, 'pass_k': [3]}
    )


def test_harness_scores_files_and_axes(data_dir, tmp_path):
  loaded = [tasks.load_task(spec) for spec in _specs(data_dir)]
  out_dir = tmp_path / 'eval_out'
  summary = harness.evaluate(
    None,
    None,
    None,
    loaded,
    key=jax.random.key(0),
    batch_size=2,
    out_dir=str(out_dir),
    generate_fn=fake_generate,
  )
  results = summary['tasks']
  assert results['gsm8k']['score'] == pytest.approx(2 / 3)
  assert results['math500']['score'] == 1.0
  assert results['ifeval']['metrics'] == pytest.approx(
    {
      'prompt_level_strict_acc': 0.5,
      'inst_level_strict_acc': 2 / 3,
      'prompt_level_loose_acc': 1.0,
      'inst_level_loose_acc': 1.0,
    }
  )
  assert results['ifeval']['score'] == pytest.approx(2 / 3)
  # Unweighted mean over subtasks (0.5 and 1.0), not over examples (2/3).
  assert results['bbh']['metrics'] == pytest.approx(
    {'accuracy/boolean_expressions': 0.5, 'accuracy/date_understanding': 1.0, 'accuracy': 0.75}
  )
  assert results['nq_open']['score'] == 0.5
  assert summary['target'] == pytest.approx((2 / 3 + 1.0) / 2)
  general = (2 / 3 + 0.75 + 0.5) / 3
  assert summary['general'] == pytest.approx(general)
  assert axes.forget(summary['general'], 0.4) == pytest.approx(general - 0.4)
  assert axes.target_gain(0.5, summary['target']) == pytest.approx(summary['target'] - 0.5)

  files = sorted(os.listdir(out_dir))
  assert files == [
    'bbh.jsonl',
    'gsm8k.jsonl',
    'ifeval.jsonl',
    'math500.jsonl',
    'nq_open.jsonl',
    'summary.json',
  ]  # no temp files left behind
  assert json.loads((out_dir / 'summary.json').read_text()) == summary
  rows = [json.loads(line) for line in (out_dir / 'gsm8k.jsonl').read_text().splitlines()]
  assert [r['scores']['accuracy'] for r in rows] == [1.0, 0.0, 1.0]
  assert rows[1]['generations'] == ['The answer is 11.'] and rows[1]['reference'] == '10'
  assert rows[0]['generations'] == ['48/2 = 24, 48 + 24 = 72.\n#### 72']


def test_harness_pass_at_k_from_samples(data_dir):
  task = tasks.load_task(
    {
      'type': 'gsm8k',
      'path': str(data_dir / 'gsm8k.jsonl'),
      'limit': 2,
      'num_samples': 4,
      'temperature': 0.7,
      'pass_k': [1, 2],
    }
  )
  seen = {}
  keys = []

  def sampling_generate(prompts, *, max_new_tokens, chat, temperature, key):
    del max_new_tokens, chat
    assert temperature == 0.7
    keys.append(jax.random.key_data(key).tolist())
    outputs = []
    for prompt in prompts:
      count = seen[prompt] = seen.get(prompt, 0) + 1
      # First example: only its first sample is right (c=1); second example: never right (c=0).
      outputs.append('#### 72' if 'Natalia' in prompt and count == 1 else '#### 0')
    return outputs

  summary = harness.evaluate(
    None, None, None, [task], key=jax.random.key(1), batch_size=3, generate_fn=sampling_generate
  )
  metrics = summary['tasks']['gsm8k']['metrics']
  assert metrics['accuracy'] == pytest.approx((1 / 4 + 0) / 2)
  assert metrics['pass@1'] == pytest.approx((1 / 4 + 0) / 2)
  pass2_first = 1 - math.comb(3, 2) / math.comb(4, 2)
  assert metrics['pass@2'] == pytest.approx(pass2_first / 2)
  assert len(keys) == 3 and len({str(k) for k in keys}) == 3  # a fresh key per batch


def test_harness_rejects_bad_generate_fn_and_duplicates(data_dir):
  task = tasks.load_task({'type': 'nq_open', 'path': str(data_dir / 'nq.jsonl')})
  with pytest.raises(ValueError, match='returned 1 texts for a batch of 2'):
    harness.evaluate(
      None,
      None,
      None,
      [task],
      key=jax.random.key(0),
      batch_size=2,
      generate_fn=lambda prompts, **kwargs: ['x'],
    )
  with pytest.raises(ValueError, match="repeated: \\['nq_open'\\]"):
    harness.evaluate(
      None, None, None, [task, task], key=jax.random.key(0), batch_size=2, generate_fn=fake_generate
    )


def test_harness_batches_by_length_with_full_batches(data_dir):
  task = tasks.load_task({'type': 'gsm8k', 'path': str(data_dir / 'gsm8k.jsonl')})
  batches = []

  def recording_generate(prompts, **kwargs):
    batches.append(list(prompts))
    return fake_generate(prompts, **kwargs)

  summary = harness.evaluate(
    None, None, None, [task], key=jax.random.key(0), batch_size=2, generate_fn=recording_generate
  )
  assert summary['tasks']['gsm8k']['score'] == pytest.approx(2 / 3)
  assert [len(b) for b in batches] == [2, 1]  # the last batch: the next power of two >= 1
  lengths = [len(p) for b in batches for p in b]
  assert lengths == sorted(lengths)
  # A task smaller than the batch: one call of 4 rows (the power of two >= 3), not 8, filled
  # with its own last prompt.
  batches.clear()
  again = harness.evaluate(
    None, None, None, [task], key=jax.random.key(0), batch_size=8, generate_fn=recording_generate
  )
  assert again['tasks']['gsm8k']['score'] == pytest.approx(2 / 3)
  assert [len(b) for b in batches] == [4]
  assert batches[0][2] == batches[0][3] and len(set(batches[0])) == 3
  assert [harness.batch_rows(n, 64) for n in (1, 2, 3, 8, 9, 48, 64)] == [1, 2, 4, 8, 16, 64, 64]
  assert harness.batch_rows(5, 6) == 6
