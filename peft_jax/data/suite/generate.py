"""Writes the offline capability suite: general and target tasks, SFT pairs, pretraining corpus.

Layout under ``out_dir`` (formats: docs/CONVENTIONS.md):

    general/ifeval_{train,test}.jsonl   IFEval {key, prompt, instruction_id_list, kwargs}
                                        (+ 'completion' in train: a compliant answer)
    general/nq_{train,test}.jsonl       NQ-open {question, answer: [aliases]}
    general/bbh/{train,test}/<task>.json  BBH {"examples": [{input, target}]}, one file per task
                                        named as in BBH, so a BBH loader reads the folder
                                        (+ 'completion' in train: CoT ending "So the answer is X.")
    targets/gsm_{train,test}.jsonl      GSM8K {question, answer: "...\\n#### n"}
    targets/cipher_{train,test}.jsonl   same format, letter transformations
    sft/general.jsonl                   {prompt, completion, task}: all general training pairs
    sft/gsm.jsonl, sft/cipher.jsonl     {prompt, completion}: target training pairs
    pretrain/corpus.jsonl               {text, source}: fact documents + general training pairs
                                        (prompt + completion; no target-domain text)
    manifest.json                       seed, sizes, counts, file paths, prompt formats

SFT prompts are final text, formatted as the evaluation prompts them (peft_jax/evals/tasks.py):
IFEval and NQ in the chat format (:func:`render_prompt`; NQ inside ``NQ_PROMPT``), BBH as
``BBH_PROMPT`` and the targets as ``GSM_PROMPT`` in plain text. A tokenizer adds bos before the
prompt and eos after the completion; a corpus document is the same prompt + completion.

Every split is drawn from its own seeded ``random.Random``, so the same seed writes byte-identical
files. Test examples are drawn first; a training example whose prompt text equals any test prompt
is redrawn (for IFEval: whose request + first instruction equals a test one's, so that no test
prompt is even a prefix of a training prompt), so no test prompt appears in training. NQ splits
the facts instead: every fact is in the corpus, and a test question asks about a fact whose
question never appears in training.
"""

from __future__ import annotations

import json
import os
import random
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from peft_jax.data import tokenizer_train
from peft_jax.data.suite import bbh_tasks, ifeval_tasks, targets
from peft_jax.data.suite import world as world_lib

GENERAL_TASKS = ('ifeval', 'nq', 'bbh')
TARGET_TASKS = ('gsm', 'cipher')

DEFAULT_SIZES = {
  'people': 80,
  'cities': 20,
  'animals': 20,
  'fact_docs_per_entity': 4,
  'nq_test_fraction': 0.3,
  'ifeval_train': 1500,
  'ifeval_test': 200,
  'bbh_train': 300,  # per task
  'bbh_test': 50,  # per task
  'gsm_train': 1000,
  'gsm_test': 200,
  'cipher_train': 1000,
  'cipher_test': 200,
}


# The evaluation's prompt templates (peft_jax/evals/tasks.py), so that training text looks like
# what the model is asked at evaluation.
NQ_PROMPT = 'Answer the question with a short answer.\nQuestion: {question}\nAnswer:'
BBH_PROMPT = "Q: {question}\nA: Let's think step by step."
GSM_PROMPT = 'Question: {question}\nAnswer:'


def nq_prompt(question: str) -> str:
  """The final (chat-formatted) prompt of an NQ question in the SFT pairs and the corpus."""
  return tokenizer_train.render_prompt(NQ_PROMPT.format(question=question))


def _rng(seed: int, name: str) -> random.Random:
  # String seeds hash with SHA-512 in Python's random: stable across runs and platforms.
  return random.Random(f'peft_jax-suite:{seed}:{name}')


def _draw_split(
  make: Callable[[random.Random], Dict],
  rng: random.Random,
  key: str,
  num_train: int,
  num_test: int,
  task: str,
) -> Tuple[List[Dict], List[Dict]]:
  """Draws `num_test` then `num_train` examples with pairwise distinct `example[key]` texts."""
  seen: Set[str] = set()
  splits = []
  for count in (num_test, num_train):
    examples = []
    attempts = 0
    while len(examples) < count:
      attempts += 1
      if attempts > 50 * count + 1000:
        raise ValueError(
          f'task {task!r}: could not draw {count} distinct examples (only '
          f'{len(examples)}); lower sizes[{task!r}_train/_test]'
        )
      example = make(rng)
      if example[key] in seen:
        continue
      seen.add(example[key])
      examples.append(example)
    splits.append(examples)
  test, train = splits
  return train, test


def _write_jsonl(path: str, records: List[Mapping]) -> str:
  with open(path, 'w') as f:
    for record in records:
      f.write(json.dumps(record, sort_keys=False) + '\n')
  return path


def _write_json(path: str, value) -> str:
  with open(path, 'w') as f:
    json.dump(value, f, indent=1)
    f.write('\n')
  return path


def generate_suite(
  out_dir: str, seed: int = 0, sizes: Optional[Mapping[str, float]] = None
) -> Dict[str, str]:
  """Generates the whole suite under `out_dir` (see the module docstring for the layout).

  Args:
    out_dir: directory to write into (created if missing).
    seed: the one seed every split derives from.
    sizes: overrides of DEFAULT_SIZES (unknown keys raise).

  Returns:
    {name: path} of every written file, e.g. 'general/ifeval_train' -> '.../ifeval_train.jsonl',
    'manifest' -> '.../manifest.json'.
  """
  unknown = sorted(set(sizes or {}) - set(DEFAULT_SIZES))
  if unknown:
    raise KeyError(f'unknown suite size keys {unknown}; valid keys: {sorted(DEFAULT_SIZES)}')
  size = dict(DEFAULT_SIZES, **(sizes or {}))
  for name, value in size.items():
    if name != 'nq_test_fraction' and (int(value) != value or value < 1):
      raise ValueError(f'sizes[{name!r}] must be a positive integer, got {value!r}')
  for sub in ('general/bbh/train', 'general/bbh/test', 'targets', 'sft', 'pretrain'):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  paths: Dict[str, str] = {}
  counts: Dict[str, int] = {}

  def save(name: str, records, as_bbh: bool = False) -> None:
    extension = '.json' if as_bbh else '.jsonl'
    path = os.path.join(out_dir, name + extension)
    paths[name] = (
      _write_json(path, {'examples': records}) if as_bbh else _write_jsonl(path, records)
    )
    counts[name] = len(records)

  world = world_lib.build_world(
    _rng(seed, 'world'),
    num_people=int(size['people']),
    num_cities=int(size['cities']),
    num_animals=int(size['animals']),
  )
  general_sft: List[Dict] = []

  # IFEval.
  ifeval_train, ifeval_test = _draw_split(
    lambda r: ifeval_tasks.make_example(r, world),
    _rng(seed, 'ifeval'),
    'split_key',
    int(size['ifeval_train']),
    int(size['ifeval_test']),
    'ifeval',
  )
  test_records = [
    {
      'key': 1000 + i,
      'prompt': e['prompt'],
      'instruction_id_list': e['instruction_id_list'],
      'kwargs': e['kwargs'],
    }
    for i, e in enumerate(ifeval_test)
  ]
  train_records = [
    {
      'key': 100000 + i,
      'prompt': e['prompt'],
      'instruction_id_list': e['instruction_id_list'],
      'kwargs': e['kwargs'],
      'completion': e['completion'],
    }
    for i, e in enumerate(ifeval_train)
  ]
  save('general/ifeval_train', train_records)
  save('general/ifeval_test', test_records)
  general_sft += [
    {
      'prompt': tokenizer_train.render_prompt(e['prompt']),
      'completion': e['completion'],
      'task': 'ifeval',
    }
    for e in train_records
  ]

  # NQ-open over the world's facts.
  nq_train_facts, nq_test_facts = world_lib.split_facts(
    world.facts, _rng(seed, 'nq'), float(size['nq_test_fraction'])
  )
  nq_train = [
    {'question': world_lib.nq_question(f), 'answer': world_lib.nq_answers(f, world)}
    for f in nq_train_facts
  ]
  nq_test = [
    {'question': world_lib.nq_question(f), 'answer': world_lib.nq_answers(f, world)}
    for f in nq_test_facts
  ]
  save('general/nq_train', nq_train)
  save('general/nq_test', nq_test)
  general_sft += [
    {'prompt': nq_prompt(e['question']), 'completion': e['answer'][0], 'task': 'nq'}
    for e in nq_train
  ]

  # BBH.
  for task, make in bbh_tasks.BBH_GENERATORS.items():
    train, test = _draw_split(
      make, _rng(seed, 'bbh/' + task), 'input', int(size['bbh_train']), int(size['bbh_test']), task
    )
    save(f'general/bbh/train/{task}', train, as_bbh=True)
    save(
      f'general/bbh/test/{task}',
      [{'input': e['input'], 'target': e['target']} for e in test],
      as_bbh=True,
    )
    general_sft += [
      {
        'prompt': BBH_PROMPT.format(question=e['input']),
        'completion': ' ' + e['completion'],
        'task': f'bbh/{task}',
      }
      for e in train
    ]
  save('sft/general', general_sft)

  # Targets.
  first_names = sorted({p.split(' ')[0] for p in world.people})
  for task, make in (
    ('gsm', lambda r: targets.gsm_problem(r, first_names)),
    ('cipher', targets.cipher_problem),
  ):
    train, test = _draw_split(
      make,
      _rng(seed, task),
      'question',
      int(size[f'{task}_train']),
      int(size[f'{task}_test']),
      task,
    )
    save(f'targets/{task}_train', train)
    save(f'targets/{task}_test', test)
    save(
      f'sft/{task}',
      [
        {'prompt': GSM_PROMPT.format(question=e['question']), 'completion': ' ' + e['answer']}
        for e in train
      ],
    )

  # Pretraining corpus: fact documents and the general training pairs, prompt + completion.
  corpus_rng = _rng(seed, 'corpus')
  documents = [
    {'text': text, 'source': 'facts'}
    for text in world_lib.fact_documents(world, corpus_rng, int(size['fact_docs_per_entity']))
  ]
  documents += [{'text': e['prompt'] + e['completion'], 'source': e['task']} for e in general_sft]
  corpus_rng.shuffle(documents)
  save('pretrain/corpus', documents)

  manifest = {
    'seed': seed,
    'sizes': size,
    'counts': counts,
    'general_tasks': list(GENERAL_TASKS),
    'bbh_tasks': list(bbh_tasks.BBH_TASKS),
    'ifeval_instruction_ids': list(ifeval_tasks.IFEVAL_INSTRUCTION_IDS),
    'target_tasks': list(TARGET_TASKS),
    'world': {
      'people': len(world.people),
      'cities': len(world.cities),
      'animals': len(world.animals),
      'facts': len(world.facts),
    },
    'prompt_formats': {
      'chat': tokenizer_train.render_chat('{prompt}', '{response}'),
      'ifeval': tokenizer_train.render_prompt('{prompt}'),
      'nq': nq_prompt('{question}'),
      'bbh': BBH_PROMPT,
      'gsm': GSM_PROMPT,
      'cipher': GSM_PROMPT,
    },
    'files': {name: os.path.relpath(path, out_dir) for name, path in sorted(paths.items())},
  }
  paths['manifest'] = _write_json(os.path.join(out_dir, 'manifest.json'), manifest)
  return paths


def tokenizer_training_files(paths: Mapping[str, str]) -> List[str]:
  """The files a suite tokenizer trains on, from :func:`generate_suite`'s returned paths: the
  pretraining corpus and the target training sets (so target text tokenises well too, although
  pretraining never sees it)."""
  names = ['pretrain/corpus'] + [f'targets/{task}_train' for task in TARGET_TASKS]
  missing = [n for n in names if n not in paths]
  if missing:
    raise KeyError(
      f'suite paths lack {missing}; pass the dict generate_suite returned '
      f'(keys such as {sorted(paths)[:4]})'
    )
  return [paths[n] for n in names]
