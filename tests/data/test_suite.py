"""The generated capability suite: determinism, disjoint splits, official formats, correct answers.

Every answer is recomputed here from the example text alone (Python eval for expressions, a
stack for brackets, a walk for navigation, parsing for counting/tracking/word problems), and every
IFEval training completion is checked both by small checkers written here from the IFEval rules
(docs/METRICS.md, "IFEval") and by the project's official checkers (peft_jax/evals/ifeval.py).
"""

import filecmp
import json
import os
import re

import pytest

from peft_jax.data import suite
from peft_jax.evals import ifeval as official_ifeval
from peft_jax.evals import scorers
from peft_jax.evals import tasks as eval_tasks

# The 25 registered IFEval ids with their official kwarg names.
OFFICIAL_KWARGS = {
  'keywords:existence': {'keywords'},
  'keywords:frequency': {'keyword', 'frequency', 'relation'},
  'keywords:forbidden_words': {'forbidden_words'},
  'keywords:letter_frequency': {'letter', 'let_frequency', 'let_relation'},
  'language:response_language': {'language'},
  'length_constraints:number_sentences': {'num_sentences', 'relation'},
  'length_constraints:number_paragraphs': {'num_paragraphs'},
  'length_constraints:number_words': {'num_words', 'relation'},
  'length_constraints:nth_paragraph_first_word': {'num_paragraphs', 'nth_paragraph', 'first_word'},
  'detectable_content:number_placeholders': {'num_placeholders'},
  'detectable_content:postscript': {'postscript_marker'},
  'detectable_format:number_bullet_lists': {'num_bullets'},
  'detectable_format:constrained_response': set(),
  'detectable_format:number_highlighted_sections': {'num_highlights'},
  'detectable_format:multiple_sections': {'section_spliter', 'num_sections'},
  'detectable_format:json_format': set(),
  'detectable_format:title': set(),
  'combination:two_responses': set(),
  'combination:repeat_prompt': {'prompt_to_repeat'},
  'startend:end_checker': {'end_phrase'},
  'startend:quotation': set(),
  'change_case:capital_word_frequency': {'capital_frequency', 'capital_relation'},
  'change_case:english_capital': set(),
  'change_case:english_lowercase': set(),
  'punctuation:no_comma': set(),
}

BBH_FILE_TASKS = (
  'boolean_expressions',
  'word_sorting',
  'dyck_languages',
  'multistep_arithmetic_two',
  'object_counting',
  'tracking_shuffled_objects_three_objects',
  'navigate',
)


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  first = str(tmp_path_factory.mktemp('suite_seed0'))
  paths = suite.generate_suite(first, seed=0)
  return first, paths


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _bbh(path):
  with open(path) as f:
    data = json.load(f)
  assert set(data) == {'examples'}
  return data['examples']


# ---------------------------------------------------------------------------------------------
# Determinism, layout, manifest.
# ---------------------------------------------------------------------------------------------


def test_same_seed_writes_byte_identical_files(generated, tmp_path):
  first, paths = generated
  second = str(tmp_path / 'again')
  paths_again = suite.generate_suite(second, seed=0)
  assert sorted(paths) == sorted(paths_again)
  for name, path in paths.items():
    assert filecmp.cmp(path, paths_again[name], shallow=False), name
  other = suite.generate_suite(str(tmp_path / 'seed1'), seed=1)
  assert not filecmp.cmp(
    paths['general/ifeval_train'], other['general/ifeval_train'], shallow=False
  )


def test_layout_and_manifest_counts(generated):
  root, paths = generated
  expected = {
    'general/ifeval_train',
    'general/ifeval_test',
    'general/nq_train',
    'general/nq_test',
    'targets/gsm_train',
    'targets/gsm_test',
    'targets/cipher_train',
    'targets/cipher_test',
    'sft/general',
    'sft/gsm',
    'sft/cipher',
    'pretrain/corpus',
    'manifest',
  }
  expected |= {
    f'general/bbh/{split}/{task}' for split in ('train', 'test') for task in BBH_FILE_TASKS
  }
  assert set(paths) == expected
  assert set(suite.BBH_TASKS) == set(BBH_FILE_TASKS)
  with open(paths['manifest']) as f:
    manifest = json.load(f)
  assert manifest['seed'] == 0
  for name, count in manifest['counts'].items():
    path = os.path.join(root, manifest['files'][name])
    records = _bbh(path) if path.endswith('.json') else _jsonl(path)
    assert len(records) == count, name
  sizes = suite.DEFAULT_SIZES
  assert manifest['counts']['general/ifeval_train'] == sizes['ifeval_train']
  assert manifest['counts']['general/bbh/test/navigate'] == sizes['bbh_test']
  assert manifest['counts']['targets/gsm_test'] == sizes['gsm_test']


def test_bad_sizes_raise_naming_the_key(tmp_path):
  with pytest.raises(KeyError, match='ifeval_trian'):
    suite.generate_suite(str(tmp_path), sizes={'ifeval_trian': 10})
  with pytest.raises(ValueError, match='gsm_test'):
    suite.generate_suite(str(tmp_path), sizes={'gsm_test': 0})


# ---------------------------------------------------------------------------------------------
# Disjoint splits; target text kept out of pretraining.
# ---------------------------------------------------------------------------------------------


def test_train_and_test_are_disjoint_for_every_task(generated):
  _, paths = generated
  pairs = [
    ('general/ifeval', 'prompt'),
    ('general/nq', 'question'),
    ('targets/gsm', 'question'),
    ('targets/cipher', 'question'),
  ]
  for stem, field in pairs:
    train = [r[field] for r in _jsonl(paths[stem + '_train'])]
    test = [r[field] for r in _jsonl(paths[stem + '_test'])]
    assert len(set(test)) == len(test), stem
    assert not set(train) & set(test), stem
  for task in BBH_FILE_TASKS:
    train = {e['input'] for e in _bbh(paths[f'general/bbh/train/{task}'])}
    test = [e['input'] for e in _bbh(paths[f'general/bbh/test/{task}'])]
    assert len(set(test)) == len(test), task
    assert not train & set(test), task


def test_corpus_has_general_training_text_and_no_target_or_test_text(generated):
  _, paths = generated
  corpus = _jsonl(paths['pretrain/corpus'])
  assert all(set(d) == {'text', 'source'} and d['text'] for d in corpus)
  everything = '\n'.join(d['text'] for d in corpus)
  assert '####' not in everything
  for marker in ('Shift each letter', 'Reverse the letters', ' dollars a day'):
    assert marker not in everything
  # The GSM prompt format (the target's plain 'Question: ...' prompts) never starts a document.
  assert not any(d['text'].startswith('Question: ') for d in corpus)
  for stem in ('targets/gsm', 'targets/cipher'):
    for split in ('_train', '_test'):
      for record in _jsonl(paths[stem + split]):
        assert record['question'] not in everything
  for record in _jsonl(paths['general/ifeval_train'])[:200]:
    assert record['prompt'] in everything and record['completion'] in everything
  for record in _jsonl(paths['general/ifeval_test']):
    assert record['prompt'] not in everything
  for task in BBH_FILE_TASKS:
    for example in _bbh(paths[f'general/bbh/test/{task}']):
      # As a whole question (a short boolean expression may be the tail of a longer one).
      assert suite.BBH_PROMPT.format(question=example['input']) not in everything
  sources = {d['source'] for d in corpus}
  assert {'facts', 'ifeval', 'nq'} | {f'bbh/{t}' for t in BBH_FILE_TASKS} == sources


_NQ_TEMPLATE_WORDS = set(
  'where was born what is the job of favourite colour which country in river flows through '
  'famous for kind animal does eat live'.split()
)


def test_nq_test_facts_are_in_the_corpus_but_not_their_questions(generated):
  _, paths = generated
  corpus = _jsonl(paths['pretrain/corpus'])
  fact_sentences = [
    s for d in corpus if d['source'] == 'facts' for s in re.split(r'(?<=\.) ', d['text'])
  ]
  everything = '\n'.join(d['text'] for d in corpus)
  nq_test = _jsonl(paths['general/nq_test'])
  assert len(nq_test) > 50
  for record in nq_test:
    assert set(record) == {'question', 'answer'}
    assert isinstance(record['answer'], list) and all(isinstance(a, str) for a in record['answer'])
    assert record['question'] == record['question'].strip() and not record['question'].endswith('?')
    subject = ' '.join(w for w in record['question'].split() if w not in _NQ_TEMPLATE_WORDS)
    value = record['answer'][0]
    stated = [
      s
      for s in fact_sentences
      if re.search(rf'\b{re.escape(subject)}\b', s) and re.search(rf'\b{value}\b', s)
    ]
    assert stated, record
    assert record['question'] not in everything


# ---------------------------------------------------------------------------------------------
# IFEval: official fields and compliant completions.
# ---------------------------------------------------------------------------------------------


def _words(text):
  return re.findall(r'\w+', text)


def _compare(count, relation, limit):
  assert relation in ('less than', 'at least'), relation
  return count < limit if relation == 'less than' else count >= limit


def _own_check(instruction_id, response, kwargs, prompt):
  """Independent checkers from the IFEval rules (docs/METRICS.md, "IFEval checkers"), strict mode."""
  lowered = response.lower()
  if instruction_id == 'punctuation:no_comma':
    return ',' not in response
  if instruction_id == 'change_case:english_lowercase':
    return response == response.lower() and any(c.isalpha() for c in response)
  if instruction_id == 'change_case:english_capital':
    return response == response.upper() and any(c.isalpha() for c in response)
  if instruction_id == 'change_case:capital_word_frequency':
    count = sum(w.isupper() for w in _words(response))
    return _compare(count, kwargs['capital_relation'], kwargs['capital_frequency'])
  if instruction_id == 'keywords:existence':
    return all(re.search(k, response, re.I) for k in kwargs['keywords'])
  if instruction_id == 'keywords:forbidden_words':
    return not any(re.search(rf'\b{w}\b', response, re.I) for w in kwargs['forbidden_words'])
  if instruction_id == 'keywords:frequency':
    count = len(re.findall(kwargs['keyword'], response, re.I))
    return _compare(count, kwargs['relation'], kwargs['frequency'])
  if instruction_id == 'keywords:letter_frequency':
    return _compare(
      lowered.count(kwargs['letter']), kwargs['let_relation'], kwargs['let_frequency']
    )
  if instruction_id == 'length_constraints:number_sentences':
    count = len(re.findall(r'[.!?](?:\s|$)', response))
    return _compare(count, kwargs['relation'], kwargs['num_sentences'])
  if instruction_id == 'length_constraints:number_paragraphs':
    pieces = [p.strip() for p in re.split(r'\s?\*\*\*\s?', response)]
    return all(pieces) and len(pieces) == kwargs['num_paragraphs']
  if instruction_id == 'length_constraints:number_words':
    return _compare(len(_words(response)), kwargs['relation'], kwargs['num_words'])
  if instruction_id == 'length_constraints:nth_paragraph_first_word':
    paragraphs = [p for p in response.split('\n\n') if p.strip()]
    first = paragraphs[kwargs['nth_paragraph'] - 1].split()[0].lower()
    return (
      len(paragraphs) == kwargs['num_paragraphs']
      and re.split(r"[.,?!'\"]", first)[0] == kwargs['first_word']
    )
  if instruction_id == 'detectable_content:number_placeholders':
    return len(re.findall(r'\[[^\]]+\]', response)) >= kwargs['num_placeholders']
  if instruction_id == 'detectable_content:postscript':
    marker = kwargs['postscript_marker'].lower().rstrip('.')
    return any(line.strip().startswith(marker) for line in lowered.split('\n'))
  if instruction_id == 'detectable_format:number_bullet_lists':
    lines = response.split('\n')
    bullets = [l for l in lines if re.match(r'\s*\* \S', l) or re.match(r'\s*- ', l)]
    return len(bullets) == kwargs['num_bullets']
  if instruction_id == 'detectable_format:constrained_response':
    return any(
      option in response.strip()
      for option in ('My answer is yes.', 'My answer is no.', 'My answer is maybe.')
    )
  if instruction_id == 'detectable_format:number_highlighted_sections':
    return len(re.findall(r'\*[^\n*]+\*', response)) >= kwargs['num_highlights']
  if instruction_id == 'detectable_format:multiple_sections':
    headers = re.findall(rf'^{kwargs["section_spliter"]} \d+$', response, re.M)
    return len(headers) >= kwargs['num_sections']
  if instruction_id == 'detectable_format:json_format':
    json.loads(response)
    return True
  if instruction_id == 'detectable_format:title':
    return re.search(r'<<[^\n]+>>', response) is not None
  if instruction_id == 'combination:two_responses':
    pieces = response.split('******')
    return (
      len(pieces) == 2
      and all(p.strip() for p in pieces)
      and (pieces[0].strip() != pieces[1].strip())
    )
  if instruction_id == 'combination:repeat_prompt':
    return lowered.startswith(kwargs['prompt_to_repeat'].lower()) and prompt.startswith(
      kwargs['prompt_to_repeat']
    )
  if instruction_id == 'startend:end_checker':
    return lowered.rstrip('"').endswith(kwargs['end_phrase'].lower())
  if instruction_id == 'startend:quotation':
    return len(response) > 1 and response[0] == '"' and response[-1] == '"'
  raise AssertionError(f'no checker for {instruction_id}')


def test_ifeval_files_have_official_fields_ids_and_kwarg_names(generated):
  _, paths = generated
  train = _jsonl(paths['general/ifeval_train'])
  test = _jsonl(paths['general/ifeval_test'])
  for records, extra in ((train, {'completion'}), (test, set())):
    keys = [r['key'] for r in records]
    assert len(set(keys)) == len(keys) and all(isinstance(k, int) for k in keys)
    for record in records:
      assert set(record) == {'key', 'prompt', 'instruction_id_list', 'kwargs'} | extra
      assert len(record['instruction_id_list']) == len(record['kwargs'])
      assert len(set(record['instruction_id_list'])) == len(record['instruction_id_list'])
      for instruction_id, kwargs in zip(record['instruction_id_list'], record['kwargs']):
        assert instruction_id in OFFICIAL_KWARGS, instruction_id
        assert set(kwargs) == OFFICIAL_KWARGS[instruction_id], (instruction_id, kwargs)
    used = {i for r in records for i in r['instruction_id_list']}
    assert len(used) >= 13 if records is test else len(used) == 24
  assert set(suite.IFEVAL_INSTRUCTION_IDS) <= set(OFFICIAL_KWARGS)
  assert len(suite.IFEVAL_INSTRUCTION_IDS) == 24
  assert sum(len(r['instruction_id_list']) == 2 for r in train) > 300


def test_every_ifeval_training_completion_follows_its_instructions(generated):
  _, paths = generated
  train = _jsonl(paths['general/ifeval_train'])
  checked = 0
  for record in train:
    response = record['completion']
    for instruction_id, kwargs in zip(record['instruction_id_list'], record['kwargs']):
      assert _own_check(instruction_id, response, kwargs, record['prompt']), (
        instruction_id,
        kwargs,
        response,
      )
      assert official_ifeval.follows_strict(instruction_id, response, kwargs), (
        instruction_id,
        kwargs,
        response,
      )
      checked += 1
  assert checked > len(train)
  results = [
    official_ifeval.score_ifeval_example(r['completion'], r['instruction_id_list'], r['kwargs'])
    for r in train
  ]
  accuracies = official_ifeval.ifeval_accuracies(results)
  assert all(value == 1.0 for value in accuracies.values()), accuracies


def test_constrained_response_answers_are_true_facts(generated):
  _, paths = generated
  facts = ' '.join(d['text'] for d in _jsonl(paths['pretrain/corpus']) if d['source'] == 'facts')
  checked = 0
  for record in _jsonl(paths['general/ifeval_train']):
    if record['instruction_id_list'][0] != 'detectable_format:constrained_response':
      continue
    match = re.match(r'Does (\w+ \w+) work as a (\w+)\?', record['prompt'])
    if match:
      stated = re.search(
        rf'{match[1]} works as the local {match[2]}\.|The job of {match[1]} '
        rf'is {match[2]}\.|The work of {match[1]} is that of a {match[2]}\.',
        facts,
      )
      assert (stated is not None) == record['completion'].startswith('My answer is yes.'), record
      checked += 1
  assert checked > 0


# ---------------------------------------------------------------------------------------------
# BBH: answers recomputed from the inputs.
# ---------------------------------------------------------------------------------------------

_CATEGORY_WORDS = {
  'fruits': {'apple', 'banana', 'peach', 'plum', 'grape', 'orange'},
  'vegetables': {'carrot', 'onion', 'potato', 'cabbage', 'yam', 'celery stalk'},
  'animals': {'cat', 'dog', 'goat', 'rabbit', 'pig', 'cow'},
  'musical instruments': {'piano', 'flute', 'drum', 'violin', 'trumpet', 'accordion'},
}
_COUNT_WORDS = {'a': 1, 'an': 1, 'two': 2, 'three': 3}


def _singular(noun):
  for suffix in ('es', 's'):
    for candidate in (noun[: -len(suffix)],):
      if noun.endswith(suffix) and any(candidate in c for c in _CATEGORY_WORDS.values()):
        return candidate
  return noun


def _solve_bbh(task, text):
  if task == 'boolean_expressions':
    assert text.endswith(' is') and set(text.split()) <= {
      'True',
      'False',
      'and',
      'or',
      'not',
      '(',
      ')',
      'is',
    }
    return str(eval(text[: -len(' is')]))  # pylint: disable=eval-used
  if task == 'word_sorting':
    return ' '.join(sorted(text.split('List: ')[1].split()))
  if task == 'dyck_languages':
    pairs = {'(': ')', '[': ']', '{': '}', '<': '>'}
    stack = []
    for symbol in text.split('Input: ')[1].split():
      if symbol in pairs:
        stack.append(pairs[symbol])
      else:
        assert stack.pop() == symbol
    return ' '.join(reversed(stack))
  if task == 'multistep_arithmetic_two':
    expression = text[: -len(' =')]
    assert re.fullmatch(r'[\d\s()+*-]+', expression)
    return str(eval(expression))  # pylint: disable=eval-used
  if task == 'object_counting':
    match = re.fullmatch(r'I have (.*)\. How many (.*) do I have\?', text)
    items, category = match[1], match[2]
    total = 0
    for phrase in re.split(r', and |, | and ', items):
      count_word, noun = phrase.split(' ', 1)
      if _singular(noun) in _CATEGORY_WORDS[category]:
        total += _COUNT_WORDS[count_word]
    return str(total)
  if task == 'tracking_shuffled_objects_three_objects':
    holding = dict(re.findall(r'(Alice|Bob|Claire) has a (\w+) ball', text))
    for first, second in re.findall(r'(\w+) and (\w+) swap balls', text):
      holding[first], holding[second] = holding[second], holding[first]
    asked = re.search(r'At the end, (\w+) has the', text)[1]
    options = dict((colour, letter) for letter, colour in re.findall(r'\((\w)\) (\w+) ball', text))
    return f'({options[holding[asked]]})'
  if task == 'navigate':
    position, heading = 0j, 1j
    for instruction in re.findall(r'(Take \d+ steps?|Turn around|Turn left|Turn right)\.', text):
      if instruction.startswith('Take'):
        position += heading * int(instruction.split()[1])
      else:
        heading *= {'Turn around': -1, 'Turn left': 1j, 'Turn right': -1j}[instruction]
    return 'Yes' if position == 0 else 'No'
  raise AssertionError(task)


@pytest.mark.parametrize('task', BBH_FILE_TASKS)
def test_bbh_targets_are_correct_and_completions_end_with_them(generated, task):
  _, paths = generated
  train = _bbh(paths[f'general/bbh/train/{task}'])
  test = _bbh(paths[f'general/bbh/test/{task}'])
  for example in test:
    assert set(example) == {'input', 'target'}
  for example in train + test:
    assert _solve_bbh(task, example['input']) == example['target'], example
  for example in train:
    assert set(example) == {'input', 'target', 'completion'}
    assert example['completion'].endswith(f'So the answer is {example["target"]}.')
    assert scorers.score_bbh(example['completion'], example['target']) == 1.0
  targets = [e['target'] for e in train]
  # Not a constant answer: every task has at least two distinct targets.
  assert len(set(targets)) >= 2


# ---------------------------------------------------------------------------------------------
# Targets: GSM-style and cipher answers recomputed.
# ---------------------------------------------------------------------------------------------


def test_gsm_solutions_are_correct(generated):
  _, paths = generated
  for split in ('train', 'test'):
    for record in _jsonl(paths[f'targets/gsm_{split}']):
      assert set(record) == {'question', 'answer'}
      *lines, final = record['answer'].split('\n')
      assert re.fullmatch(r'#### \d+', final), record
      results = []
      for line in lines:
        equations = re.findall(r'(\d+) ([-+*/]) (\d+) = (\d+)', line)
        assert len(equations) == 1, line
        a, op, b, c = equations[0]
        value = {
          '+': int(a) + int(b),
          '-': int(a) - int(b),
          '*': int(a) * int(b),
          '/': int(a) / int(b),
        }[op]
        assert value == int(c), line
        results.append(int(c))
      assert int(final[5:]) == results[-1]
      # Every number of the question is used by the solution.
      assert set(re.findall(r'\d+', record['question'])) <= set(
        re.findall(r'\d+', '\n'.join(lines))
      )
      assert scorers.extract_gsm8k_reference(record['answer']) == final[5:]


def test_cipher_answers_are_correct(generated):
  _, paths = generated
  kinds = set()
  for split in ('train', 'test'):
    for record in _jsonl(paths[f'targets/cipher_{split}']):
      answer = record['answer'].rsplit('\n#### ', 1)[1]
      reverse = re.fullmatch(r'Reverse the letters of the word ([a-z]+)\.', record['question'])
      shift = re.fullmatch(
        r'Shift each letter of the word ([a-z]+) (forward|backward) by (\d) '
        r'in the alphabet\.',
        record['question'],
      )
      if reverse:
        expected = reverse[1][::-1]
        kinds.add('reverse')
      else:
        step = int(shift[3]) * (1 if shift[2] == 'forward' else -1)
        expected = ''.join(chr((ord(c) - 97 + step) % 26 + 97) for c in shift[1])
        kinds.add(shift[2])
      assert answer == expected, record
  assert kinds == {'reverse', 'forward', 'backward'}


# ---------------------------------------------------------------------------------------------
# Integration with the evaluation loaders, templates and scorers.
# ---------------------------------------------------------------------------------------------


def test_prompt_formats_match_the_evaluation_templates():
  assert suite.NQ_PROMPT == eval_tasks.NQ_TEMPLATE
  assert suite.BBH_PROMPT == eval_tasks.BBH_TEMPLATE
  assert suite.GSM_PROMPT == eval_tasks.GSM8K_TEMPLATE


def test_evaluation_loaders_read_the_files_and_score_the_references_as_correct(generated):
  root, paths = generated
  bbh = eval_tasks.load_bbh(os.path.join(root, 'general/bbh/test'))
  assert {e.meta['subtask'] for e in bbh} == set(BBH_FILE_TASKS)
  assert len(bbh) == len(BBH_FILE_TASKS) * suite.DEFAULT_SIZES['bbh_test']
  assert (
    len(eval_tasks.load_ifeval(paths['general/ifeval_test']))
    == (suite.DEFAULT_SIZES['ifeval_test'])
  )
  nq = eval_tasks.load_nq_open(paths['general/nq_test'])
  assert len(nq) == len(_jsonl(paths['general/nq_test']))
  for stem in ('targets/gsm_test', 'targets/cipher_test'):
    loaded = eval_tasks.load_gsm8k(paths[stem])
    for example, record in zip(loaded, _jsonl(paths[stem])):
      assert example.reference == record['answer'].rsplit('#### ', 1)[1]
  for record in _jsonl(paths['sft/general']):
    if record['task'] == 'nq':
      question = re.search(r'Question: (.*)\n', record['prompt'])[1]
      aliases = next(
        r['answer'] for r in _jsonl(paths['general/nq_train']) if r['question'] == question
      )
      assert scorers.score_nq(record['completion'], aliases) == 1.0
  for stem in ('sft/gsm', 'sft/cipher'):
    for record in _jsonl(paths[stem])[:100]:
      reference = scorers.extract_gsm8k_reference(record['completion'])
      assert scorers.score_numeric(record['completion'], reference) == 1.0
      wrong = record['completion'].rsplit('#### ', 1)[0] + '#### ' + reference[::-1] + '9'
      assert scorers.score_numeric(wrong, reference) == 0.0
