"""Evaluation tasks read from local files in the real benchmark formats (docs/CONVENTIONS.md).

A :class:`Task` is what the harness needs: the final prompt text of each example, the reference,
a :class:`Scorer` (per-sample metrics, their aggregation and the main metric) and generation
settings. ``kind`` places the task on PEFT-Arena's axes (docs/METRICS.md, "Tasks and main metrics"): ``'target'``
(GSM8K, MATH-500: the domain fine-tuned for) or ``'general'`` (IFEval, BBH, NQ-open: what
fine-tuning may make the model forget).

File formats:

* GSM8K: JSONL ``{"question", "answer"}``, final answer after ``'#### '``.
* MATH-500: JSONL ``{"problem", "solution", "answer"}``.
* IFEval: JSONL ``{"key", "prompt", "instruction_id_list", "kwargs"}``.
* BBH: a directory of ``<subtask>.json`` files ``{"examples": [{"input", "target"}]}`` (or one
  such file); optional chain-of-thought exemplars ``<fewshot_dir>/<subtask>.txt``.
* NQ-open: JSONL ``{"question", "answer": [aliases...]}``.
* Facts (closed-book QA, docs/REAL.md): JSONL ``{"id", "question", "answer": [aliases...]}``,
  optional ``"distractors": [...]`` (answers that make a response wrong even when it also holds
  a gold alias) and ``"relation"`` (per-relation accuracy is reported); scored by normalised
  whole-word containment (``peft_jax.evals.scorers.score_contains``).
* Perplexity (log-likelihood, not generative): JSONL ``{"id", "text"}``. The main score is
  higher-is-better: the mean over passages of ``exp(-NLL_i / n_i)`` (one over each passage's
  perplexity, in (0, 1]); the corpus NLL per token and its perplexity are reported beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from peft_jax.evals import ifeval, intervals, scorers

KINDS = ('target', 'general')
# How a task is run: 'generate' (text from a generate_fn, then scored) or 'loglik' (per-example
# log-likelihood of the example's text from a loglik_fn; peft_jax.evals.loglik).
MODES = ('generate', 'loglik')


@dataclasses.dataclass(frozen=True)
class Example:
  """One evaluation item.

  Attributes:
    prompt: the full text given to the model (few-shot prefix and template applied).
    reference: what the scorer compares against (a final answer, a list of aliases, or the
      IFEval instruction list).
    meta: extra fields kept in the output files (ids, subtask name, IFEval kwargs).
  """

  prompt: str
  reference: Any
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Scorer:
  """How a task is scored.

  Attributes:
    score: ``(generation, example) -> {metric: value}`` for one generated sample (for a
      ``'loglik'`` task: ``({'nll', 'tokens'}, example)``).
    aggregate: ``([per-example metrics], [examples]) -> {metric: value}``; the main metric is in
      [0, 1], higher is better (a perplexity task reports its NLL and perplexity beside it).
    main_metric: the aggregate metric reported on the PEFT-Arena axes.
    correct_metric: the per-sample 0/1 metric pass@k counts.
    per_example: ``([per-example metrics], [examples]) -> unit_stats dict``: the per-example
      statistics from which the main metric is recomputed exactly and bootstrapped
      (``peft_jax.evals.intervals``); ``None``: the task gets no interval.
  """

  score: Callable[[str, Example], dict[str, float]]
  aggregate: Callable[[Sequence[Mapping[str, float]], Sequence[Example]], dict[str, float]]
  main_metric: str
  correct_metric: str
  per_example: Optional[Callable[[Sequence[Mapping[str, float]], Sequence[Example]], dict]] = None


@dataclasses.dataclass(frozen=True)
class Task:
  """A named set of examples with its scorer and generation settings.

  Attributes:
    name: task name used in output files (``'gsm8k'``, ``'bbh'``, ...).
    kind: ``'target'`` or ``'general'``.
    examples: the examples, in file order.
    scorer: the task's :class:`Scorer`.
    max_new_tokens: generation budget per sample.
    chat: format prompts with the tokenizer's chat template.
    temperature: 0 = greedy.
    num_samples: samples per prompt (n of pass@k and avg@n).
    pass_k: the k values to report pass@k for (each ``<= num_samples``).
    stop: strings that end a generation: the text from the earliest one on is cut before
      scoring (a base model keeps writing the next few-shot "Question:" otherwise).
    mode: ``'generate'`` or ``'loglik'`` (the example's prompt is the text scored; generation
      settings are unused).
  """

  name: str
  kind: str
  examples: tuple[Example, ...]
  scorer: Scorer
  max_new_tokens: int = 512
  chat: bool = False
  temperature: float = 0.0
  num_samples: int = 1
  pass_k: tuple[int, ...] = ()
  stop: tuple[str, ...] = ()
  mode: str = 'generate'

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}')
    if self.mode not in MODES:
      raise ValueError(f'task {self.name!r}: mode must be one of {MODES}, got {self.mode!r}')
    if self.mode == 'loglik' and (self.num_samples != 1 or self.pass_k):
      raise ValueError(f'task {self.name!r}: a loglik task has one score per example, no pass@k')
    if not self.examples:
      raise ValueError(f'task {self.name!r} has no examples')
    if self.num_samples < 1:
      raise ValueError(f'task {self.name!r}: num_samples must be >= 1, got {self.num_samples}')
    bad_k = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
    if bad_k:
      raise ValueError(
        f'task {self.name!r}: pass_k values {bad_k} must lie in [1, num_samples={self.num_samples}]'
      )


# ---------------------------------------------------------------------------------------------
# Scorers per task family.
# ---------------------------------------------------------------------------------------------


def _mean_aggregate(metric_names: Sequence[str]):
  def aggregate(records, examples):
    del examples
    return {name: sum(r[name] for r in records) / len(records) for name in metric_names}

  return aggregate


def _mean_units(metric: str):
  """A plain mean over examples: numerator = the example's metric, denominator 1."""

  def per_example(records, examples):
    del examples
    return intervals.unit_stats([r[metric] for r in records])

  return per_example


NUMERIC_SCORER = Scorer(
  score=lambda generation, example: {
    'accuracy': scorers.score_numeric(generation, example.reference)
  },
  aggregate=_mean_aggregate(['accuracy']),
  main_metric='accuracy',
  correct_metric='accuracy',
  per_example=_mean_units('accuracy'),
)

NQ_SCORER = Scorer(
  score=lambda generation, example: {
    'exact_match': scorers.score_nq(generation, example.reference)
  },
  aggregate=_mean_aggregate(['exact_match']),
  main_metric='exact_match',
  correct_metric='exact_match',
  per_example=_mean_units('exact_match'),
)


def _bbh_aggregate(records, examples):
  """Accuracy per subtask, and their unweighted mean (PEFT-Arena's BBH_avg)."""
  per_subtask: dict[str, list[float]] = {}
  for record, example in zip(records, examples):
    per_subtask.setdefault(example.meta['subtask'], []).append(record['accuracy'])
  result = {f'accuracy/{name}': sum(v) / len(v) for name, v in sorted(per_subtask.items())}
  result['accuracy'] = sum(sum(v) / len(v) for v in per_subtask.values()) / len(per_subtask)
  return result


def _bbh_units(records, examples):
  """Each example's accuracy, stratified by subtask (the aggregate averages subtasks)."""
  return intervals.unit_stats(
    [r['accuracy'] for r in records], strata=[e.meta['subtask'] for e in examples]
  )


BBH_SCORER = Scorer(
  score=lambda generation, example: {'accuracy': scorers.score_bbh(generation, example.reference)},
  aggregate=_bbh_aggregate,
  main_metric='accuracy',
  correct_metric='accuracy',
  per_example=_bbh_units,
)


def _ifeval_score(generation: str, example: Example) -> dict[str, float]:
  result = ifeval.score_ifeval_example(generation, example.reference, example.meta['kwargs'])
  return {
    name: float(result[name])
    for name in (
      'prompt_strict',
      'prompt_loose',
      'num_instructions',
      'inst_strict_followed',
      'inst_loose_followed',
    )
  }


def _ifeval_aggregate(records, examples):
  del examples
  return ifeval.ifeval_accuracies(records)


def _ifeval_units(records, examples):
  """Instruction-level strict accuracy as a ratio over prompts: instructions followed over
  instructions, per prompt."""
  del examples
  return intervals.unit_stats(
    [r['inst_strict_followed'] for r in records], [r['num_instructions'] for r in records]
  )


# PEFT-Arena's General axis uses IFEval instruction-level strict accuracy.
IFEVAL_SCORER = Scorer(
  score=_ifeval_score,
  aggregate=_ifeval_aggregate,
  main_metric='inst_level_strict_acc',
  correct_metric='prompt_strict',
  per_example=_ifeval_units,
)


def _facts_score(generation: str, example: Example) -> dict[str, float]:
  reference = example.reference
  return {
    'accuracy': scorers.score_contains(
      generation, reference['aliases'], reference.get('distractors', ())
    )
  }


def _facts_aggregate(records, examples):
  """Accuracy over every item (the main metric) and per relation."""
  per_relation: dict[str, list[float]] = {}
  for record, example in zip(records, examples):
    per_relation.setdefault(example.meta.get('relation') or 'all', []).append(record['accuracy'])
  result = {'accuracy': sum(r['accuracy'] for r in records) / len(records)}
  if len(per_relation) > 1:
    result.update({f'accuracy/{k}': sum(v) / len(v) for k, v in sorted(per_relation.items())})
  return result


FACTS_SCORER = Scorer(
  score=_facts_score,
  aggregate=_facts_aggregate,
  main_metric='accuracy',
  correct_metric='accuracy',
  per_example=_mean_units('accuracy'),
)


def _loglik_score(value: Mapping[str, float], example: Example) -> dict[str, float]:
  nll, tokens = float(value['nll']), float(value['tokens'])
  if tokens < 1:
    raise ValueError(
      f'perplexity example {example.meta.get("id")!r}: no token is predicted (the text must '
      'encode to at least 2 tokens)'
    )
  return {'nll': nll, 'tokens': tokens, 'inv_perplexity': math.exp(-nll / tokens)}


def _loglik_aggregate(records, examples):
  """``inv_perplexity`` (main): the mean over passages of ``exp(-NLL_i / n_i)``;
  ``nll_per_token`` = ``sum NLL_i / sum n_i`` (nats) and ``perplexity`` = its exp."""
  del examples
  nll = sum(r['nll'] for r in records) / sum(r['tokens'] for r in records)
  return {
    'inv_perplexity': sum(r['inv_perplexity'] for r in records) / len(records),
    'nll_per_token': nll,
    'perplexity': math.exp(nll),
    'tokens': float(sum(r['tokens'] for r in records)),
  }


PERPLEXITY_SCORER = Scorer(
  score=_loglik_score,
  aggregate=_loglik_aggregate,
  main_metric='inv_perplexity',
  correct_metric='inv_perplexity',
  per_example=_mean_units('inv_perplexity'),
)


# ---------------------------------------------------------------------------------------------
# Loaders.
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: str, required: Sequence[str]) -> list[dict[str, Any]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'task file {path!r} does not exist')
  rows = []
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f'{path}:{line_number}: not valid JSON ({error})') from error
      missing = [field for field in required if field not in row]
      if missing:
        raise KeyError(
          f'{path}:{line_number}: missing field(s) {missing}; this format needs '
          f'{list(required)}, the line has {sorted(row)}'
        )
      rows.append(row)
  return rows


def _read_text(path: Optional[str]) -> str:
  if not path:
    return ''
  if not os.path.isfile(path):
    raise FileNotFoundError(f'few-shot file {path!r} does not exist')
  with open(path, encoding='utf-8') as f:
    return f.read()


GSM8K_TEMPLATE = 'Question: {question}\nAnswer:'
MATH_TEMPLATE = 'Problem: {question}\nPut your final answer within \\boxed{{}}.\nSolution:'
NQ_TEMPLATE = 'Answer the question with a short answer.\nQuestion: {question}\nAnswer:'
BBH_TEMPLATE = "Q: {question}\nA: Let's think step by step."


def load_gsm8k(
  path: str, *, template: str = GSM8K_TEMPLATE, fewshot: str = '', limit: Optional[int] = None
) -> list[Example]:
  """GSM8K JSONL; the reference is the final answer after ``####``."""
  rows = _read_jsonl(path, ('question', 'answer'))[: limit or None]
  return [
    Example(
      prompt=fewshot + template.format(question=row['question']),
      reference=scorers.extract_gsm8k_reference(row['answer']),
      meta={'index': index},
    )
    for index, row in enumerate(rows)
  ]


def load_math500(
  path: str, *, template: str = MATH_TEMPLATE, fewshot: str = '', limit: Optional[int] = None
) -> list[Example]:
  """MATH-500 JSONL; the reference is the ``answer`` field."""
  rows = _read_jsonl(path, ('problem', 'solution', 'answer'))[: limit or None]
  return [
    Example(
      prompt=fewshot + template.format(question=row['problem']),
      reference=str(row['answer']),
      meta={'index': index, **{k: row[k] for k in ('unique_id', 'level', 'subject') if k in row}},
    )
    for index, row in enumerate(rows)
  ]


def load_ifeval(path: str, *, limit: Optional[int] = None) -> list[Example]:
  """IFEval JSONL; kwargs entries lose their ``None`` values and are validated per id."""
  rows = _read_jsonl(path, ('key', 'prompt', 'instruction_id_list', 'kwargs'))[: limit or None]
  examples = []
  for row in rows:
    ids, kwargs_list = list(row['instruction_id_list']), list(row['kwargs'])
    if len(ids) != len(kwargs_list):
      raise ValueError(
        f'{path}: IFEval key {row["key"]}: {len(ids)} instruction ids but '
        f'{len(kwargs_list)} kwargs entries'
      )
    try:
      cleaned = [ifeval.clean_kwargs(i, k) for i, k in zip(ids, kwargs_list)]
    except KeyError as error:
      raise KeyError(f'{path}: IFEval key {row["key"]}: {error.args[0]}') from error
    examples.append(
      Example(prompt=row['prompt'], reference=ids, meta={'key': row['key'], 'kwargs': cleaned})
    )
  return examples


def load_nq_open(
  path: str, *, template: str = NQ_TEMPLATE, fewshot: str = '', limit: Optional[int] = None
) -> list[Example]:
  """NQ-open JSONL; the reference is the list of gold aliases."""
  rows = _read_jsonl(path, ('question', 'answer'))[: limit or None]
  examples = []
  for index, row in enumerate(rows):
    if not isinstance(row['answer'], list) or not row['answer']:
      raise ValueError(
        f"{path}: NQ-open row {index}: 'answer' must be a non-empty list of "
        f'aliases, got {row["answer"]!r}'
      )
    examples.append(
      Example(
        prompt=fewshot + template.format(question=row['question']),
        reference=[str(a) for a in row['answer']],
        meta={'index': index},
      )
    )
  return examples


FACTS_TEMPLATE = '{question}'


def load_facts(
  path: str, *, template: str = FACTS_TEMPLATE, fewshot: str = '', limit: Optional[int] = None
) -> list[Example]:
  """Closed-book facts JSONL; the reference is ``{'aliases', 'distractors'}``."""
  rows = _read_jsonl(path, ('id', 'question', 'answer'))[: limit or None]
  examples, seen = [], set()
  for line, row in enumerate(rows, start=1):
    for field in ('answer', 'distractors'):
      value = row.get(field, [])
      if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise ValueError(
          f'{path}: row {line} (id {row["id"]!r}): {field!r} must be a list of strings'
        )
    if not row['answer']:
      raise ValueError(f'{path}: row {line} (id {row["id"]!r}): no gold answer')
    if row['id'] in seen:
      raise ValueError(f'{path}: row {line}: id {row["id"]!r} repeats')
    seen.add(row['id'])
    examples.append(
      Example(
        prompt=fewshot + template.format(question=row['question']),
        reference={'aliases': list(row['answer']), 'distractors': list(row.get('distractors', []))},
        meta={'id': row['id'], **{k: row[k] for k in ('relation', 'subject') if k in row}},
      )
    )
  return examples


def load_passages(path: str, *, limit: Optional[int] = None) -> list[Example]:
  """Perplexity JSONL ``{"id", "text"}``: the example's prompt is the text to score."""
  rows = _read_jsonl(path, ('id', 'text'))[: limit or None]
  examples = []
  for line, row in enumerate(rows, start=1):
    if not isinstance(row['text'], str) or not row['text'].strip():
      raise ValueError(f'{path}: row {line} (id {row["id"]!r}): "text" must be a non-empty string')
    meta = {'id': row['id'], **{k: row[k] for k in ('source', 'topic') if k in row}}
    examples.append(Example(prompt=row['text'], reference=None, meta=meta))
  return examples


def load_bbh(
  path: str,
  *,
  template: str = BBH_TEMPLATE,
  fewshot_dir: Optional[str] = None,
  subtasks: Optional[Sequence[str]] = None,
  limit: Optional[int] = None,
) -> list[Example]:
  """BBH: every ``<subtask>.json`` in directory ``path`` (or the one file ``path``).

  ``limit`` applies per subtask. With ``fewshot_dir``, ``<fewshot_dir>/<subtask>.txt`` (the
  chain-of-thought exemplars) is prepended to each prompt, separated by a blank line.
  """
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.endswith('.json'))
    available = [f[: -len('.json')] for f in files]
    if subtasks is not None:
      unknown = sorted(set(subtasks) - set(available))
      if unknown:
        raise KeyError(f'BBH subtasks {unknown} not found in {path!r}; available: {available}')
      available = [name for name in available if name in set(subtasks)]
    paths = [(name, os.path.join(path, name + '.json')) for name in available]
  elif os.path.isfile(path):
    paths = [(os.path.basename(path).rsplit('.', 1)[0], path)]
  else:
    raise FileNotFoundError(f'BBH path {path!r} is neither a directory nor a file')
  if not paths:
    raise FileNotFoundError(f'BBH directory {path!r} holds no <subtask>.json files')
  examples = []
  for subtask, file_path in paths:
    with open(file_path, encoding='utf-8') as f:
      data = json.load(f)
    if not isinstance(data, dict) or 'examples' not in data:
      raise KeyError(f"BBH file {file_path!r} must be an object with an 'examples' list")
    fewshot = ''
    if fewshot_dir:
      fewshot = _read_text(os.path.join(fewshot_dir, subtask + '.txt')).strip() + '\n\n'
    for index, row in enumerate(data['examples'][: limit or None]):
      missing = [k for k in ('input', 'target') if k not in row]
      if missing:
        raise KeyError(f'{file_path}: example {index} is missing {missing}')
      examples.append(
        Example(
          prompt=fewshot + template.format(question=row['input']),
          reference=str(row['target']),
          meta={'subtask': subtask, 'index': index},
        )
      )
  return examples


# Per task family: loader, scorer, default kind, default max_new_tokens, default chat, default
# stop strings (the start of the next turn of each family's prompt template).
_FAMILIES = {
  'gsm8k': (load_gsm8k, NUMERIC_SCORER, 'target', 512, False, ('\nQuestion:',)),
  'math500': (load_math500, NUMERIC_SCORER, 'target', 1024, False, ('\nProblem:',)),
  'ifeval': (load_ifeval, IFEVAL_SCORER, 'general', 1024, True, ()),
  'bbh': (load_bbh, BBH_SCORER, 'general', 512, False, ('\nQ:',)),
  'nq_open': (load_nq_open, NQ_SCORER, 'general', 64, True, ('\nQuestion:',)),
  'facts': (load_facts, FACTS_SCORER, 'general', 32, True, ('\n\n',)),
  'perplexity': (load_passages, PERPLEXITY_SCORER, 'general', 0, False, ()),
}
_LOGLIK_FAMILIES = ('perplexity',)
_SPEC_KEYS = (
  'type',
  'name',
  'path',
  'kind',
  'limit',
  'max_new_tokens',
  'chat',
  'temperature',
  'num_samples',
  'pass_k',
  'template',
  'fewshot_path',
  'fewshot_dir',
  'subtasks',
  'stop',
)


def load_task(spec: Mapping[str, Any]) -> Task:
  """Builds a :class:`Task` from a small dict / ``ConfigDict``.

  Keys: ``type`` (one of gsm8k, math500, ifeval, bbh, nq_open, facts, perplexity; required),
  ``path`` (required),
  ``name`` (default: type), ``kind``, ``limit``, ``max_new_tokens``, ``chat``, ``temperature``,
  ``num_samples``, ``pass_k``, ``stop`` (list of strings; default per type), ``template``
  (with ``{question}``; not IFEval), ``fewshot_path``
  (text prepended to every prompt; gsm8k/math500/nq_open), ``fewshot_dir`` and ``subtasks``
  (BBH). Defaults follow PEFT-Arena: IFEval and NQ use the chat template, decoding is greedy.
  """
  spec = dict(spec.to_dict() if hasattr(spec, 'to_dict') else spec)
  unknown = sorted(set(spec) - set(_SPEC_KEYS))
  if unknown:
    raise KeyError(f'task spec has unknown keys {unknown}; valid keys: {list(_SPEC_KEYS)}')
  for required in ('type', 'path'):
    if not spec.get(required):
      raise KeyError(f'task spec needs {required!r}; got keys {sorted(spec)}')
  family = spec['type']
  if family not in _FAMILIES:
    raise KeyError(f'unknown task type {family!r}; valid types: {sorted(_FAMILIES)}')
  loader, scorer, kind, max_new_tokens, chat, stop = _FAMILIES[family]
  loader_kwargs: dict[str, Any] = {'limit': spec.get('limit')}
  if spec.get('template') is not None:
    if family in ('ifeval',) + _LOGLIK_FAMILIES:
      raise KeyError(
        f"task spec key 'template' does not apply to {family} (its texts are used as they are)"
      )
    loader_kwargs['template'] = spec['template']
  if spec.get('fewshot_path'):
    if family not in ('gsm8k', 'math500', 'nq_open', 'facts'):
      raise KeyError(
        f"task spec key 'fewshot_path' applies to gsm8k/math500/nq_open/facts, not {family}"
        + (" (BBH takes 'fewshot_dir')" if family == 'bbh' else '')
      )
    loader_kwargs['fewshot'] = _read_text(spec['fewshot_path'])
  for bbh_key in ('fewshot_dir', 'subtasks'):
    if spec.get(bbh_key) is not None:
      if family != 'bbh':
        raise KeyError(f'task spec key {bbh_key!r} applies to bbh only, not {family}')
      loader_kwargs[bbh_key] = spec[bbh_key]
  examples = loader(spec['path'], **loader_kwargs)
  return Task(
    name=spec.get('name') or family,
    kind=spec.get('kind') or kind,
    examples=tuple(examples),
    scorer=scorer,
    max_new_tokens=int(spec.get('max_new_tokens') or max_new_tokens),
    chat=bool(spec['chat']) if spec.get('chat') is not None else chat,
    temperature=float(spec.get('temperature') or 0.0),
    num_samples=int(spec.get('num_samples') or 1),
    pass_k=tuple(int(k) for k in (spec.get('pass_k') or ())),
    stop=tuple(spec['stop']) if spec.get('stop') is not None else stop,
    mode='loglik' if family in _LOGLIK_FAMILIES else 'generate',
  )
