"""The base model on the real suite (docs/REAL.md): every task's score with its bootstrap
interval, n, floor (the score of a model that ignores its input) and seconds; the retention set and the above-chance BBH subtasks chosen from
the base's own records.

:func:`evaluate_base` is what ``launch/real_eval.py`` runs and what an arena's base-evaluation
stage on ``world='real'`` needs: its ``retention`` and ``bbh`` entries give the task specs the
fine-tuned models are then evaluated on (``real_suite.task_specs(..., bbh_subtasks=...,
retention_path=...)``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from peft_jax.common import files
from peft_jax.data import real_suite
from peft_jax.evals import harness, intervals, retention
from peft_jax.evals import tasks as tasks_lib
from peft_jax.evals.generation import Generator
from peft_jax.evals.loglik import LoglikScorer

RETENTION_FILE = 'facts_retention.jsonl'


# Responses that ignore every instruction: IFEval's floor is the better of their scores.
IGNORING_RESPONSES = (
  '',
  'I am not sure what you mean, but here is a short answer. The weather was mild today, and '
  'the streets were quiet. Nothing else happened.',
)


def _best_constant(task: tasks_lib.Task, candidates, examples=None) -> float:
  """The highest main score a fixed response (one of ``candidates``) gets on ``examples``."""
  examples = list(task.examples if examples is None else examples)
  best = 0.0
  for candidate in candidates:
    records = [task.scorer.score(candidate, e) for e in examples]
    best = max(best, float(task.scorer.aggregate(records, examples)[task.scorer.main_metric]))
  return best


def floor_score(task: tasks_lib.Task, bbh_chance: Mapping[str, float]) -> float:
  """The score of a model that ignores its input (docs/REAL.md, "Floors"): the best fixed
  answer, chosen per relation (facts) or per subtask (BBH: its majority-answer rate), or over
  the references (GSM); IFEval: the better of :data:`IGNORING_RESPONSES`; perplexity: the
  uniform distribution over the vocabulary (``1 / V``, set by the caller)."""
  if task.scorer is tasks_lib.BBH_SCORER:
    subtasks = sorted({e.meta['subtask'] for e in task.examples})
    return float(np.mean([bbh_chance[s] for s in subtasks]))
  if task.scorer is tasks_lib.IFEVAL_SCORER:
    return _best_constant(task, IGNORING_RESPONSES)
  if task.scorer is tasks_lib.FACTS_SCORER:
    groups: dict[str, list] = {}
    for e in task.examples:
      groups.setdefault(e.meta.get('relation', 'all'), []).append(e)
    total = sum(
      len(g) * _best_constant(task, sorted({e.reference['aliases'][0] for e in g}), g)
      for g in groups.values()
    )
    return total / len(task.examples)
  return _best_constant(task, sorted({str(e.reference) for e in task.examples}))


def evaluate_base(
  model: Any,
  params: Any,
  tokenizer: Any,
  suite_dir: str,
  out_dir: str,
  *,
  limits: Optional[Mapping[str, int]] = None,
  batch_size: int = 16,
  resamples: int = intervals.DEFAULT_RESAMPLES,
  seed: int = intervals.DEFAULT_SEED,
) -> dict[str, Any]:
  """Evaluates the base on every real-suite task; writes ``<out_dir>/<task>.jsonl``,
  ``<out_dir>/facts_retention.jsonl`` (+ ``.json``) and ``<out_dir>/base_eval.json``.

  Returns:
    ``{'tasks': {name: {'score', 'interval', 'n', 'floor', 'seconds', 'main_metric', 'kind',
    'metrics'}}, 'retention': {'path', 'num_items', 'of', 'spec'}, 'bbh': {subtask: {...}},
    'bbh_kept': [...], 'nll_per_token': {'value', 'interval'}, 'sources': ...}``.
  """
  manifest = real_suite.read_manifest(suite_dir)
  specs = real_suite.task_specs(suite_dir, limits=limits)
  generator = Generator(model, params, tokenizer)
  loglik = LoglikScorer(model, params, tokenizer)
  results, rows_of, per_example = {}, {}, {}
  for spec in specs:
    task = tasks_lib.load_task(spec)
    start = time.perf_counter()
    result, rows = harness.evaluate_task(
      generator.fn(), task, key=jax.random.key(0), batch_size=batch_size, loglik_fn=loglik.fn()
    )
    seconds = time.perf_counter() - start
    files.write_jsonl(os.path.join(out_dir, f'{task.name}.jsonl'), rows, sort_keys=True)
    rows_of[task.name] = rows
    per_example[task.name] = result['per_example']
    if task.mode == 'loglik':
      floor = 1.0 / float(model.config.vocab_size)
    else:
      floor = floor_score(task, manifest['bbh_chance'])
    results[task.name] = {
      'kind': task.kind,
      'main_metric': result['main_metric'],
      'score': result['score'],
      'n': result['num_examples'],
      'floor': floor,
      'seconds': round(seconds, 1),
      'metrics': result['metrics'],
    }
  bounds = intervals.score_intervals(per_example, resamples=resamples, seed=seed)
  for name in results:
    results[name]['interval'] = bounds['tasks'][name]

  # The corpus NLL per token, as a ratio over passages, with its own interval.
  ppl_rows = rows_of['pydoc_ppl']
  nll_units = intervals.parse_units(
    intervals.unit_stats(
      [r['scores']['nll'] for r in ppl_rows], [r['scores']['tokens'] for r in ppl_rows]
    )
  )
  nll_reps = intervals.estimate(
    nll_units, intervals.resample_indices(nll_units, resamples, intervals.task_rng(seed, 'nll'))
  )

  facts_spec = next(s for s in specs if s['name'] == 'facts')
  retention_path = os.path.join(out_dir, RETENTION_FILE)
  facts_source = manifest['sources']['facts']
  retention_task = retention.retention_spec(
    facts_spec,
    rows_of['facts'],
    retention_path,
    source={'package': facts_source['package'], 'version': facts_source['version']},
  )
  relations: dict[str, list[int]] = {}
  for row in rows_of['facts']:
    counts = relations.setdefault(row['meta']['relation'], [0, 0])
    counts[0] += int(row['scores']['accuracy'] > 0.5)
    counts[1] += 1
  bbh = retention.above_chance_subtasks(
    rows_of['bbh'], manifest['bbh_chance'], resamples=resamples, seed=seed
  )
  summary = {
    'tasks': results,
    'nll_per_token': {
      'value': float(intervals.estimate(nll_units)),
      'interval': intervals.percentile_interval(nll_reps),
    },
    'retention': {
      'path': retention_path,
      'num_items': len(retention.retained_ids(rows_of['facts'])),
      'of': results['facts']['n'],
      'per_relation': {k: {'retained': v[0], 'of': v[1]} for k, v in sorted(relations.items())},
      'spec': retention_task,
      'source': f'{facts_source["package"]}=={facts_source["version"]}',
    },
    'bbh': bbh,
    'bbh_kept': [s for s, r in bbh.items() if r['above']],
    'sources': manifest['sources'],
    'batch_size': batch_size,
    'bootstrap': {'resamples': resamples, 'seed': seed, 'confidence': intervals.CONFIDENCE},
  }
  files.write_json(os.path.join(out_dir, 'base_eval.json'), summary, indent=1, sort_keys=True)
  return summary
