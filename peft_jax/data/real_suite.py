"""The evaluation suite for a real pretrained base (docs/REAL.md): real facts, real text, the
suite's procedural tasks, written offline and deterministically.

Layout under ``out_dir``::

  general/facts_test.jsonl        closed-book QA of country facts {id, question, answer: [aliases],
                                  distractors, relation, subject}
  general/ifeval_test.jsonl       IFEval {key, prompt, instruction_id_list, kwargs} (the suite's
                                  generator; asked with the chat template)
  general/bbh/test/<task>.json    BBH {"examples": [{input, target}]}, every suite subtask
  general/bbh/fewshot/<task>.txt  three chain-of-thought exemplars per subtask (from its train draw)
  general/pydoc_ppl_test.jsonl    perplexity passages {id, text, topic}
  targets/gsm_{train,test}.jsonl  GSM8K {question, answer: "...\\n#### n"}
  sft/gsm.jsonl                   {prompt, completion}: the target's training pairs
  sft/ifeval.jsonl                {messages}: IFEval prompts drawn apart from the test prompts
                                  (no shared request + primary instruction) with the generator's
                                  compliant responses (the drift study's instruction label)
  sft/facts.jsonl                 {messages}: the facts relations about the
                                  ``facts_train_countries`` countries ranked after the test ones,
                                  answered with the first gold alias (the facts label)
  manifest.json                   sources (package versions, digests), seed, sizes, counts, the
                                  BBH chance levels, the prompt formats

Sources:

* **Facts** from the JSON files of the ``countryinfo`` package (MIT; read from its ``data/``
  folder, found with ``importlib.util.find_spec``; the package itself is never imported). The
  ``num_countries`` most populous countries (by the files' ``population``) are asked four
  relations: ``capital`` ("What is the capital of X?"), ``capital_of`` ("Y is the capital of
  which country?"), ``continent`` (the file's ``region``; transcontinental countries left out)
  and ``demonym``. Answers carry aliases (``_CAPITAL_ALIASES``, ``_COUNTRY_ALIASES``, the files'
  ``altSpellings`` longer than 3 letters) and continent questions the other continents as
  distractors; an item whose gold answer already occurs in its question is dropped, so echoing
  the question never scores.
* **Perplexity** on ``pydoc_data.topics`` passages of the sections no pydoc task trains on
  (``peft_jax.data.pydoc_tasks.heldout_passages``).
* **IFEval, BBH, GSM** from the offline suite's generators (``peft_jax.data.suite``); IFEval
  prompts are about the suite's invented world (its checkers read only the response's form).

Every draw comes from a ``random.Random`` seeded with ``(seed, name)``, so a seed writes
byte-identical files.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import sys
from typing import Any, Mapping, Optional, Sequence

from peft_jax.common import files
from peft_jax.common.text import contains_phrase
from peft_jax.data import pydoc_tasks
from peft_jax.data.suite import bbh_tasks, ifeval_tasks, targets
from peft_jax.data.suite import world as world_lib

COUNTRYINFO = 'countryinfo'
RELATIONS = ('capital', 'capital_of', 'continent', 'demonym')

DEFAULT_SIZES = {
  'num_countries': 100,
  'ifeval_test': 120,
  'bbh_test': 40,  # per subtask
  'bbh_fewshot': 3,
  'pydoc_passages': 128,
  'gsm_train': 1000,
  'gsm_test': 200,
  'ifeval_train': 200,  # SFT rows of the drift study's instruction label
  'facts_train_countries': 40,  # countries after the test ones, for the facts label's SFT rows
}
# The SFT splits (sft/<name>.jsonl), by the task whose capability they train (the drift study's
# nominal tasks, peft_jax.arena.drift_study).
SFT_TASKS = ('gsm', 'ifeval', 'facts')

QUESTION_TEMPLATES = {
  'capital': 'What is the capital of {country}?',
  'capital_of': '{capital} is the capital of which country?',
  'continent': 'Which continent is {country} in?',
  'demonym': 'What is the nationality of a person from {country}? Answer with one word.',
}
BBH_PROMPT = "Q: {question}\nA: Let's think step by step."
GSM_PROMPT = 'Question: {question}\nAnswer:'

# Spellings people (and models) use besides the file's own.
_CAPITAL_ALIASES = {
  'Washington D.C.': ('Washington',),
  'Kyiv': ('Kiev',),
  'Nur-Sultan': ('Astana',),
  'Brasília': ('Brasilia',),
  'Naypyidaw': ('Naypyitaw', 'Nay Pyi Taw'),
  "Sana'a": ('Sanaa',),
  'Sucre': ('La Paz',),  # Bolivia: constitutional capital and seat of government
  'Pretoria': ('Cape Town', 'Bloemfontein'),  # South Africa's three capitals
  'Yamoussoukro': ('Abidjan',),  # Ivory Coast: official and economic capital
  'Dodoma': ('Dar es Salaam',),  # Tanzania: capital since 1996, the seat before it
  'Porto-Novo': ('Cotonou',),  # Benin: official capital and seat of government
}
_COUNTRY_ALIASES = {
  'United States': ('USA', 'United States of America', 'America', 'US'),
  'United Kingdom': ('UK', 'Britain', 'Great Britain'),
  'Democratic Republic of the Congo': ('DR Congo', 'DRC', 'Congo'),
  'Republic of the Congo': ('Congo',),
  'Ivory Coast': ("Côte d'Ivoire", "Cote d'Ivoire"),
  'Czech Republic': ('Czechia',),
  'Myanmar': ('Burma',),
  'South Korea': ('Korea', 'Republic of Korea'),
  'North Korea': ('DPRK',),
  'United Arab Emirates': ('UAE',),
}
_DEMONYM_ALIASES = {
  'Argentinean': ('Argentine', 'Argentinian'),
  'Ecuadorean': ('Ecuadorian',),
  'Filipino': ('Filipina',),
  'British': ('Briton', 'English'),
  'Dutch': ('Dutchman', 'Dutchwoman', 'Netherlander'),
  'French': ('Frenchman', 'Frenchwoman'),
  'Kazakhstani': ('Kazakh',),
  'Uzbekistani': ('Uzbek',),
  'Tajikistani': ('Tajik',),
}
# Continent (the files' region) -> accepted names; the others' names are the distractors.
CONTINENTS = {
  'Africa': ('Africa',),
  'Americas': ('America', 'Americas', 'Caribbean'),
  'Asia': ('Asia', 'Middle East'),
  'Europe': ('Europe',),
  'Oceania': ('Oceania', 'Australia'),
}
# Countries commonly placed on two continents (continent questions leave them out).
_TRANSCONTINENTAL = frozenset(
  {'Russia', 'Turkey', 'Kazakhstan', 'Egypt', 'Azerbaijan', 'Georgia', 'Armenia', 'Cyprus'}
)
# Entities that no longer exist as countries.
_DEFUNCT = frozenset({'Serbia and Montenegro'})


@dataclasses.dataclass(frozen=True)
class Country:
  """The fields of one countryinfo file the facts use."""

  file: str
  name: str
  capital: str
  region: str
  subregion: str
  demonym: str
  population: int
  alt_spellings: tuple[str, ...]


def countryinfo_data_dir() -> str:
  """The ``data/`` folder of the installed countryinfo package (found, not imported)."""
  spec = importlib.util.find_spec(COUNTRYINFO)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
      'the real suite reads its facts from the countryinfo package: '
      "pip install --no-deps 'countryinfo==1.0.1' (or pip install 'peft_jax[real]')"
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], 'data')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'the countryinfo package at {path!r} has no data/ folder')
  return path


def countryinfo_version() -> str:
  try:
    return importlib.metadata.version(COUNTRYINFO)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def read_countries(data_dir: str) -> list[Country]:
  """Every ``*.json`` file of ``data_dir`` (sorted by file name) as a :class:`Country`."""
  countries = []
  for name in sorted(os.listdir(data_dir)):
    if not name.endswith('.json'):
      continue
    path = os.path.join(data_dir, name)
    with open(path, encoding='utf-8') as f:
      try:
        row = json.load(f)
      except json.JSONDecodeError as error:
        raise ValueError(f'{path}: not valid JSON ({error})') from error
    if not isinstance(row, dict) or not row.get('name'):
      raise KeyError(f'{path}: expected a JSON object with a "name"')
    countries.append(
      Country(
        file=name,
        name=str(row['name']),
        capital=str(row.get('capital') or ''),
        region=str(row.get('region') or ''),
        subregion=str(row.get('subregion') or ''),
        demonym=str(row.get('demonym') or ''),
        population=int(row.get('population') or 0),
        alt_spellings=tuple(str(a) for a in row.get('altSpellings') or ()),
      )
    )
  return countries


def _dedupe(values) -> list[str]:
  return list(dict.fromkeys(v for v in values if v))


def top_countries(countries: Sequence[Country], num: int) -> list[Country]:
  """The ``num`` most populous countries with a capital and a region (ties by name)."""
  usable = [c for c in countries if c.capital and c.region in CONTINENTS and c.name not in _DEFUNCT]
  ranked = sorted(usable, key=lambda c: (-c.population, c.name))
  if num < 1 or num > len(ranked):
    raise ValueError(f'num_countries={num}: need 1..{len(ranked)} (usable countries)')
  return ranked[:num]


def country_aliases(country: Country) -> list[str]:
  long_alts = [a for a in country.alt_spellings if len(a) > 3 and a.isascii()]
  return _dedupe([country.name, *_COUNTRY_ALIASES.get(country.name, ()), *long_alts])


def demonym_aliases(demonym: str) -> list[str]:
  return _dedupe([demonym, *_DEMONYM_ALIASES.get(demonym, ())])


def fact_items(countries: Sequence[Country]) -> list[dict[str, Any]]:
  """The QA items of ``countries`` (module docstring), in country then relation order."""
  items = []
  for country in countries:
    candidates = {
      'capital': (
        QUESTION_TEMPLATES['capital'].format(country=country.name),
        _dedupe([country.capital, *_CAPITAL_ALIASES.get(country.capital, ())]),
        [],
      ),
      'capital_of': (
        QUESTION_TEMPLATES['capital_of'].format(capital=country.capital),
        country_aliases(country),
        [],
      ),
    }
    if country.name not in _TRANSCONTINENTAL:
      candidates['continent'] = (
        QUESTION_TEMPLATES['continent'].format(country=country.name),
        list(CONTINENTS[country.region]),
        [a for region, names in CONTINENTS.items() if region != country.region for a in names],
      )
    if country.demonym and '/' not in country.demonym:
      candidates['demonym'] = (
        QUESTION_TEMPLATES['demonym'].format(country=country.name),
        demonym_aliases(country.demonym),
        [],
      )
    for relation in RELATIONS:
      if relation not in candidates:
        continue
      question, answers, distractors = candidates[relation]
      if any(contains_phrase(question, a) for a in answers):
        continue  # echoing the question would score: not a fair item
      items.append(
        {
          'id': f'{relation}:{os.path.splitext(country.file)[0]}',
          'question': question,
          'answer': answers,
          'distractors': distractors,
          'relation': relation,
          'subject': country.name,
        }
      )
  return items


def chat_sft_row(prompt: str, response: str) -> dict:
  """An SFT row asked with the chat template, as the facts and IFEval tasks ask their prompts."""
  return {
    'messages': [{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': response}]
  }


def facts_sft_row(item: Mapping[str, Any]) -> dict:
  """The SFT row of a facts item: its question (the facts task's prompt) and its first gold
  alias as a one-line answer."""
  return dict(chat_sft_row(item['question'], f'{item["answer"][0]}.'), id=item['id'])


def _rng(seed: int, name: str) -> random.Random:
  return random.Random(f'peft_jax-real:{seed}:{name}')


def _data_digest(data_dir: str, countries: Sequence[Country]) -> str:
  digest = hashlib.sha256()
  for country in sorted(countries, key=lambda c: c.file):
    with open(os.path.join(data_dir, country.file), 'rb') as f:
      digest.update(country.file.encode() + b'\0' + f.read())
  return digest.hexdigest()[:16]


def majority_rate(targets_: Sequence[str]) -> float:
  """The accuracy of always giving the most frequent target: a subtask's chance level."""
  counts = collections.Counter(t.strip() for t in targets_)
  return max(counts.values()) / len(targets_)


_NAMES = (
  'Anna',
  'Ben',
  'Carla',
  'David',
  'Emma',
  'Frank',
  'Grace',
  'Henry',
  'Julia',
  'Liam',
  'Maria',
  'Noah',
  'Olivia',
  'Peter',
  'Sara',
  'Tom',
)


def _draw_distinct(make, rng, key: str, counts: Sequence[int], task: str) -> list[list[dict]]:
  seen: set = set()
  out = []
  for count in counts:
    rows, attempts = [], 0
    while len(rows) < count:
      attempts += 1
      if attempts > 50 * count + 1000:
        raise ValueError(f'{task}: could not draw {count} distinct examples (got {len(rows)})')
      example = make(rng)
      if example[key] in seen:
        continue
      seen.add(example[key])
      rows.append(example)
    out.append(rows)
  return out


def write_real_suite(
  out_dir: str, seed: int = 0, sizes: Optional[Mapping[str, int]] = None
) -> dict[str, str]:
  """Writes the real suite under ``out_dir`` (module docstring); returns ``{name: path}``."""
  unknown = sorted(set(sizes or {}) - set(DEFAULT_SIZES))
  if unknown:
    raise KeyError(f'unknown real-suite size keys {unknown}; valid keys: {sorted(DEFAULT_SIZES)}')
  size = dict(DEFAULT_SIZES, **(sizes or {}))
  for key, value in size.items():
    if int(value) != value or value < 1:
      raise ValueError(f'sizes[{key!r}] must be a positive integer, got {value!r}')
  paths: dict[str, str] = {}
  counts: dict[str, int] = {}

  def save_jsonl(name: str, rows: list) -> None:
    paths[name] = files.write_jsonl(os.path.join(out_dir, name + '.jsonl'), rows)
    counts[name] = len(rows)

  # Facts.
  data_dir = countryinfo_data_dir()
  num_test, num_train = int(size['num_countries']), int(size['facts_train_countries'])
  ranked = top_countries(read_countries(data_dir), num_test + num_train)
  countries = ranked[:num_test]
  items = fact_items(countries)
  _rng(seed, 'facts').shuffle(items)  # a `limit` then takes a random subset of items
  save_jsonl('general/facts_test', items)
  # The facts label's SFT rows: the same relations about the next countries by population, so
  # no test item (nor its retention subset) is trained on.
  train_items = fact_items(ranked[num_test:])
  _rng(seed, 'facts_train').shuffle(train_items)
  save_jsonl('sft/facts', [facts_sft_row(item) for item in train_items])

  # Perplexity passages (sections no pydoc task trains on).
  passages = pydoc_tasks.heldout_passages(int(size['pydoc_passages']), seed=seed)
  topic_of = {p: t for t, ps in pydoc_tasks.pydoc_passages().items() for p in ps}
  save_jsonl(
    'general/pydoc_ppl_test',
    [{'id': f'pydoc:{i}', 'text': p, 'topic': topic_of[p]} for i, p in enumerate(passages)],
  )

  # IFEval over the suite's invented world.
  world = world_lib.build_world(_rng(seed, 'world'), num_people=80, num_cities=20, num_animals=20)
  # Test examples first, then the SFT examples, in one draw: the test rows do not depend on the
  # SFT size, and no SFT example shares a test example's request and primary instruction.
  ifeval, ifeval_train = _draw_distinct(
    lambda r: ifeval_tasks.make_example(r, world),
    _rng(seed, 'ifeval'),
    'split_key',
    [int(size['ifeval_test']), int(size['ifeval_train'])],
    'ifeval',
  )
  save_jsonl(
    'general/ifeval_test',
    [
      {
        'key': 1000 + i,
        'prompt': e['prompt'],
        'instruction_id_list': e['instruction_id_list'],
        'kwargs': e['kwargs'],
      }
      for i, e in enumerate(ifeval)
    ],
  )

  save_jsonl(
    'sft/ifeval',
    [
      dict(  # the instructions beside the messages, so the responses can be checked
        chat_sft_row(e['prompt'], e['completion']),
        instruction_id_list=e['instruction_id_list'],
        kwargs=e['kwargs'],
      )
      for e in ifeval_train
    ],
  )

  # BBH: test examples and few-shot exemplars drawn apart (distinct inputs).
  chance = {}
  for task, make in bbh_tasks.BBH_GENERATORS.items():
    test, shots = _draw_distinct(
      make,
      _rng(seed, 'bbh/' + task),
      'input',
      [int(size['bbh_test']), int(size['bbh_fewshot'])],
      task,
    )
    name = f'general/bbh/test/{task}'
    paths[name] = files.write_json(
      os.path.join(out_dir, name + '.json'),
      {'examples': [{'input': e['input'], 'target': e['target']} for e in test]},
      indent=1,
    )
    counts[name] = len(test)
    fewshot = '\n\n'.join(
      BBH_PROMPT.format(question=e['input']) + ' ' + e['completion'] for e in shots
    )
    paths[f'general/bbh/fewshot/{task}'] = files.write_text(
      os.path.join(out_dir, 'general', 'bbh', 'fewshot', task + '.txt'), fewshot + '\n'
    )
    chance[task] = majority_rate([e['target'] for e in test])

  # Target: GSM-style word problems.
  test, train = _draw_distinct(
    lambda r: targets.gsm_problem(r, _NAMES),
    _rng(seed, 'gsm'),
    'question',
    [int(size['gsm_test']), int(size['gsm_train'])],
    'gsm',
  )
  save_jsonl('targets/gsm_test', test)
  save_jsonl('targets/gsm_train', train)
  save_jsonl(
    'sft/gsm',
    [
      {'prompt': GSM_PROMPT.format(question=e['question']), 'completion': ' ' + e['answer']}
      for e in train
    ],
  )

  manifest = {
    'seed': seed,
    'sizes': size,
    'counts': counts,
    'sources': {
      'facts': {
        'package': COUNTRYINFO,
        'version': countryinfo_version(),
        'license': 'MIT',
        'data_dir': 'countryinfo/data',
        'countries': [c.name for c in countries],
        'train_countries': [c.name for c in ranked[num_test:]],
        'digest': _data_digest(data_dir, ranked),
        'relations': dict(collections.Counter(i['relation'] for i in items)),
      },
      'perplexity': {
        'source': 'pydoc_data.topics',
        'fingerprint': pydoc_tasks.source_fingerprint(),
      },
      'ifeval': 'peft_jax.data.suite.ifeval_tasks (invented world)',
      'bbh': 'peft_jax.data.suite.bbh_tasks',
      'gsm': 'peft_jax.data.suite.targets.gsm_problem',
      'python': '.'.join(str(v) for v in sys.version_info[:3]),
    },
    'bbh_chance': chance,
    'bbh_tasks': list(bbh_tasks.BBH_TASKS),
    'prompt_formats': {
      'facts': dict(QUESTION_TEMPLATES, chat=True),
      'ifeval': '{prompt} (chat)',
      'bbh': BBH_PROMPT + ' (3-shot, plain)',
      'gsm': GSM_PROMPT,
      'sft/facts': 'question -> first gold alias + "." (chat)',
      'sft/ifeval': "prompt -> the generator's compliant completion (chat)",
    },
    'files': {name: os.path.relpath(path, out_dir) for name, path in sorted(paths.items())},
  }
  paths['manifest'] = files.write_json(
    os.path.join(out_dir, 'manifest.json'), manifest, indent=1, sort_keys=True
  )
  return paths


def read_manifest(suite_dir: str) -> dict:
  path = os.path.join(suite_dir, 'manifest.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: write the suite first (write_real_suite)')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def task_specs(
  suite_dir: str,
  *,
  limits: Optional[Mapping[str, int]] = None,
  max_new_tokens: Optional[Mapping[str, int]] = None,
  bbh_subtasks: Optional[Sequence[str]] = None,
  retention_path: Optional[str] = None,
) -> list[dict]:
  """Task specs (``peft_jax.evals.load_task``) of the real suite: general tasks, then the target.

  ``bbh_subtasks``: the subtasks to keep (default: all; empty: no BBH task); ``retention_path``: a retention set's
  file (``peft_jax.evals.retention``), evaluated as the general task ``facts_retention``.
  """
  join = lambda *p: os.path.join(suite_dir, *p)
  specs = [
    dict(type='facts', name='facts', path=join('general', 'facts_test.jsonl'), kind='general'),
  ]
  if retention_path:
    specs.append(dict(type='facts', name='facts_retention', path=retention_path, kind='general'))
  specs += [
    dict(
      type='ifeval',
      name='ifeval',
      path=join('general', 'ifeval_test.jsonl'),
      kind='general',
      chat=True,
      max_new_tokens=192,
    ),
    dict(
      type='perplexity',
      name='pydoc_ppl',
      path=join('general', 'pydoc_ppl_test.jsonl'),
      kind='general',
    ),
    dict(
      type='gsm8k',
      name='gsm',
      path=join('targets', 'gsm_test.jsonl'),
      kind='target',
      max_new_tokens=128,
    ),
  ]
  if bbh_subtasks is None or list(bbh_subtasks):  # no subtask above chance: BBH is left out
    specs.insert(
      len(specs) - 2,
      dict(
        type='bbh',
        name='bbh',
        path=join('general', 'bbh', 'test'),
        kind='general',
        fewshot_dir=join('general', 'bbh', 'fewshot'),
        max_new_tokens=96,
        stop=['\nQ:', '\n\n'],
        **({'subtasks': list(bbh_subtasks)} if bbh_subtasks is not None else {}),
      ),
    )
  for spec in specs:
    if limits and spec['name'] in limits:
      spec['limit'] = int(limits[spec['name']])
    if max_new_tokens and spec['name'] in max_new_tokens:
      spec['max_new_tokens'] = int(max_new_tokens[spec['name']])
  return specs
