"""The real-base suite: facts against countryinfo's JSON files read here independently, the
perplexity passages disjoint from every pydoc training text, determinism and the manifest."""

import collections
import importlib.metadata
import importlib.util
import json
import os

import pytest

from peft_jax.data import pydoc_tasks, real_suite
from peft_jax.evals import ifeval, tasks

SIZES = {
  'num_countries': 40,
  'ifeval_test': 8,
  'bbh_test': 12,
  'bbh_fewshot': 2,
  'pydoc_passages': 24,
  'gsm_train': 20,
  'gsm_test': 10,
  'ifeval_train': 6,
  'facts_train_countries': 5,
}


@pytest.fixture(scope='module')
def suite(tmp_path_factory):
  root = tmp_path_factory.mktemp('real_suite')
  paths = real_suite.write_real_suite(str(root / 'a'), seed=0, sizes=SIZES)
  return root, paths


def _jsonl(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _countryinfo_files():
  """countryinfo's data/*.json, read here without the module under test."""
  spec = importlib.util.find_spec('countryinfo')
  data_dir = os.path.join(list(spec.submodule_search_locations)[0], 'data')
  out = {}
  for name in sorted(os.listdir(data_dir)):
    if name.endswith('.json'):
      with open(os.path.join(data_dir, name), encoding='utf-8') as f:
        out[name[: -len('.json')]] = json.load(f)
  return out


def test_facts_match_the_countryinfo_files(suite):
  root, paths = suite
  top = dict(_usable_by_population(_countryinfo_files())[: SIZES['num_countries']])
  assert 'china' in top and 'india' in top and 'france' in top  # the most populous first

  items = _jsonl(paths['general/facts_test'])
  by_id = {item['id']: item for item in items}
  assert len(by_id) == len(items)
  assert {item['id'].split(':', 1)[1] for item in items} == set(top)
  for stem, row in top.items():
    capital = by_id[f'capital:{stem}']
    assert capital['answer'][0] == row['capital'] and row['name'] in capital['question']
    if f'capital_of:{stem}' in by_id:
      assert by_id[f'capital_of:{stem}']['answer'][0] == row['name']
      assert row['capital'] in by_id[f'capital_of:{stem}']['question']
    if f'continent:{stem}' in by_id:
      continent = by_id[f'continent:{stem}']
      gold = {'Americas': 'America'}.get(row['region'], row['region'])
      assert gold in continent['answer'] and gold not in continent['distractors']
    if f'demonym:{stem}' in by_id:
      assert by_id[f'demonym:{stem}']['answer'][0] == row['demonym']
  # Left out on purpose: continents of transcontinental countries, capitals echoed in the
  # question ("Mexico City is the capital of which country?").
  assert 'continent:russia' not in by_id and 'continent:turkey' not in by_id
  assert 'capital_of:mexico' not in by_id and 'capital:mexico' in by_id
  washington = by_id['capital:united_states_of_america']['answer']
  assert washington == ['Washington D.C.', 'Washington']

  # Every item loads as a facts task, and no gold answer is in its own question.
  task = tasks.load_task({'type': 'facts', 'path': paths['general/facts_test']})
  for example in task.examples:
    assert not any(
      f' {a.lower()} ' in f' {example.prompt.lower()} ' for a in example.reference['aliases']
    )

  manifest = json.load(open(paths['manifest']))
  facts = manifest['sources']['facts']
  assert facts['version'] == importlib.metadata.version('countryinfo') == '1.0.1'
  assert facts['countries'] == [row['name'] for row in top.values()]
  assert facts['relations'] == dict(collections.Counter(i['relation'] for i in items))


def _usable_by_population(files):
  regions = {'Africa', 'Americas', 'Asia', 'Europe', 'Oceania'}
  usable = [
    (stem, row)
    for stem, row in files.items()
    if row.get('capital')
    and row.get('region') in regions
    and row['name'] != 'Serbia and Montenegro'
  ]
  return sorted(usable, key=lambda item: (-(item[1].get('population') or 0), item[1]['name']))


def test_sft_splits_for_the_drift_study(suite):
  root, paths = suite
  # Facts: the relations of the next countries by population, none of the test items.
  ranked = _usable_by_population(_countryinfo_files())
  test_stems = {s for s, _ in ranked[: SIZES['num_countries']]}
  train = dict(ranked[SIZES['num_countries'] : SIZES['num_countries'] + 5])
  rows = _jsonl(paths['sft/facts'])
  test = _jsonl(paths['general/facts_test'])
  assert {r['id'].split(':', 1)[1] for r in rows} == set(train)
  assert not {r['id'].split(':', 1)[1] for r in rows} & test_stems
  assert not {r['messages'][0]['content'] for r in rows} & {t['question'] for t in test}
  for row in rows:
    relation, stem = row['id'].split(':', 1)
    user, assistant = row['messages']
    assert (user['role'], assistant['role']) == ('user', 'assistant')
    if relation == 'capital':
      assert assistant['content'] == train[stem]['capital'] + '.'
      assert train[stem]['name'] in user['content']
    elif relation == 'capital_of':
      assert assistant['content'] == train[stem]['name'] + '.'
  # IFEval: prompts apart from the test prompts, responses that follow every instruction.
  rows = _jsonl(paths['sft/ifeval'])
  test = _jsonl(paths['general/ifeval_test'])
  assert len(rows) == SIZES['ifeval_train']
  assert not {r['messages'][0]['content'] for r in rows} & {t['prompt'] for t in test}
  for row in rows:
    response = row['messages'][1]['content']
    result = ifeval.score_ifeval_example(response, row['instruction_id_list'], row['kwargs'])
    assert result['prompt_strict'] == 1.0, (row['instruction_id_list'], response[:200])
  manifest = json.load(open(paths['manifest']))
  assert manifest['sources']['facts']['train_countries'] == [r['name'] for r in train.values()]


def test_perplexity_passages_are_held_out(suite):
  _, paths = suite
  rows = _jsonl(paths['general/pydoc_ppl_test'])
  assert len(rows) == SIZES['pydoc_passages'] and len({r['id'] for r in rows}) == len(rows)
  texts = {r['text'] for r in rows}
  trained = set()
  for split in pydoc_tasks.topic_classification():
    trained |= set(split.texts)
  for split in pydoc_tasks.same_section_pairs():
    trained |= set(split.texts) | set(split.pairs)
  assert not texts & trained
  task_topics = set(pydoc_tasks.task_topics())
  assert not {r['topic'] for r in rows} & task_topics
  assert len({r['topic'] for r in rows}) > 10  # spread over many sections


def test_bbh_chance_and_suite_files(suite):
  root, paths = suite
  manifest = json.load(open(paths['manifest']))
  for task in manifest['bbh_tasks']:
    with open(paths[f'general/bbh/test/{task}']) as f:
      targets = [e['target'] for e in json.load(f)['examples']]
    assert len(targets) == SIZES['bbh_test']
    top = collections.Counter(targets).most_common(1)[0][1]
    assert manifest['bbh_chance'][task] == pytest.approx(top / len(targets))
    with open(paths[f'general/bbh/fewshot/{task}']) as f:
      fewshot = f.read()
    assert fewshot.count('Q: ') == SIZES['bbh_fewshot'] and 'So the answer is' in fewshot
  specs = real_suite.task_specs(str(root / 'a'), limits={'facts': 5})
  assert [s['name'] for s in specs] == ['facts', 'ifeval', 'bbh', 'pydoc_ppl', 'gsm']
  loaded = {s['name']: tasks.load_task(s) for s in specs}
  assert len(loaded['facts'].examples) == 5
  assert loaded['pydoc_ppl'].mode == 'loglik' and loaded['gsm'].kind == 'target'
  assert loaded['bbh'].examples[0].prompt.startswith('Q: ')  # the few-shot exemplars first
  kept = real_suite.task_specs(str(root / 'a'), bbh_subtasks=[], retention_path='/r.jsonl')
  assert [s['name'] for s in kept] == ['facts', 'facts_retention', 'ifeval', 'pydoc_ppl', 'gsm']
  one = real_suite.task_specs(str(root / 'a'), bbh_subtasks=['navigate'])
  assert {e.meta['subtask'] for e in tasks.load_task(one[2]).examples} == {'navigate'}
  for count_name, count in manifest['counts'].items():
    if not count_name.startswith('general/bbh'):
      assert len(_jsonl(paths[count_name])) == count


def test_same_seed_same_bytes(suite, tmp_path):
  root, paths = suite
  again = real_suite.write_real_suite(str(tmp_path / 'b'), seed=0, sizes=SIZES)
  for name, path in paths.items():
    with open(path, 'rb') as f, open(again[name], 'rb') as g:
      assert f.read() == g.read(), name


def test_read_countries_names_a_bad_file(tmp_path):
  (tmp_path / 'good.json').write_text(json.dumps({'name': 'A', 'capital': 'B', 'region': 'Asia'}))
  (tmp_path / 'index.js').write_text('// not data')
  assert [c.name for c in real_suite.read_countries(str(tmp_path))] == ['A']
  (tmp_path / 'broken.json').write_text('{"name": ')
  with pytest.raises(ValueError, match='broken.json: not valid JSON'):
    real_suite.read_countries(str(tmp_path))
  with pytest.raises(KeyError, match='unknown real-suite size keys'):
    real_suite.write_real_suite(str(tmp_path / 'x'), sizes={'countries': 3})
