"""The evaluation harness: generate on every task, score, aggregate, write files.

PEFT-Arena's axes (docs/METRICS.md, "Target, General, Forget"; defined once in
``peft_jax.evals.axes``), on the 0-1 scale of the task scores: ``target`` / ``general`` are the
mean main scores of the ``'target'`` / ``'general'`` tasks; ``Forget`` and ``Target gain`` are
``axes.forget`` and ``axes.target_gain``.

With ``num_samples = n > 1`` a task's per-example score is the mean over its n samples (avg@n,
as PEFT-Arena's math evaluation), and ``pass@k`` (:func:`peft_jax.evals.scorers.pass_at_k`) is
reported for each requested k.

Generation goes through a ``generate_fn(prompts, *, max_new_tokens, chat, temperature, key) ->
list[str]``; :func:`model_generate_fn` builds one from a model with
:func:`peft_jax.evals.generation.generate_text`, and tests pass a deterministic fake. A
``'loglik'`` task (perplexity) goes through a ``loglik_fn(texts) -> (nll [B], tokens [B])``
instead (:func:`peft_jax.evals.loglik.model_loglik_fn`), in the same fixed-size batches.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from peft_jax.common import files
from peft_jax.evals import scorers
from peft_jax.evals.generation import generate_text
from peft_jax.evals.loglik import model_loglik_fn
from peft_jax.evals.tasks import Task

GenerateFn = Callable[..., list[str]]


def model_generate_fn(model: Any, params: Any, tokenizer: Any, **sampling: Any) -> GenerateFn:
  """A ``generate_fn`` over :func:`peft_jax.evals.generation.generate_text` (greedy when
  temperature 0)."""

  def generate_fn(prompts, *, max_new_tokens, chat, temperature, key):
    return generate_text(
      model,
      params,
      tokenizer,
      list(prompts),
      chat=chat,
      key=key,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      **sampling,
    )

  return generate_fn


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
  """``text`` up to (not including) the earliest occurrence of any stop string."""
  positions = [text.find(s) for s in stop if s and s in text]
  return text[: min(positions)] if positions else text


def batch_rows(num_prompts: int, batch_size: int) -> int:
  """Rows of a generation call for ``num_prompts`` prompts (``1 <= num_prompts <= batch_size``):
  the smallest power of two >= ``num_prompts``, capped at ``batch_size``."""
  return min(batch_size, 1 << max(0, int(num_prompts) - 1).bit_length())


def _generate_all(
  generate_fn: GenerateFn, task: Task, key: jax.Array, batch_size: int
) -> list[list[str]]:
  """``[examples][num_samples]`` generations, in batches of ``batch_size`` prompts.

  Prompts are batched in order of length (a stable sort, so the samples of one prompt stay
  together) so that a batch pads little. The last batch is filled up, by repeating its last
  prompt (extra outputs dropped), to :func:`batch_rows`: the smallest power of two that holds it
  (at most ``batch_size``), so that few batch shapes compile and a task smaller than
  ``batch_size`` does not decode mostly copies.
  """
  prompts = [example.prompt for example in task.examples for _ in range(task.num_samples)]
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  outputs: list[str] = [''] * len(prompts)
  for batch_index, start in enumerate(range(0, len(order), batch_size)):
    indices = order[start : start + batch_size]
    batch = [prompts[i] for i in indices]
    batch += [batch[-1]] * (batch_rows(len(batch), batch_size) - len(batch))
    generated = generate_fn(
      batch,
      max_new_tokens=task.max_new_tokens,
      chat=task.chat,
      temperature=task.temperature,
      key=jax.random.fold_in(key, batch_index),
    )
    if len(generated) != len(batch):
      raise ValueError(
        f'task {task.name!r}: generate_fn returned {len(generated)} texts for a '
        f'batch of {len(batch)} prompts'
      )
    for i, text in zip(indices, generated):
      outputs[i] = truncate_at_stop(str(text), task.stop)
  n = task.num_samples
  return [outputs[i * n : (i + 1) * n] for i in range(len(task.examples))]


def _loglik_all(loglik_fn: Callable, task: Task, batch_size: int) -> list[dict[str, float]]:
  """``[{'nll', 'tokens'}]`` per example, in batches of ``batch_size`` texts sorted by length
  (the last batch filled by repeating its last text, so every call has one shape)."""
  texts = [example.prompt for example in task.examples]
  order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
  out: list[dict[str, float]] = [{}] * len(texts)
  for start in range(0, len(order), batch_size):
    indices = order[start : start + batch_size]
    batch = [texts[i] for i in indices]
    batch += [batch[-1]] * (batch_size - len(batch))
    nll, tokens = loglik_fn(batch)
    nll, tokens = np.asarray(nll, np.float64), np.asarray(tokens, np.int64)
    if nll.shape != (len(batch),) or tokens.shape != (len(batch),):
      raise ValueError(
        f'task {task.name!r}: loglik_fn returned shapes {nll.shape}, {tokens.shape} for a batch '
        f'of {len(batch)} texts'
      )
    for j, i in enumerate(indices):
      out[i] = {'nll': float(nll[j]), 'tokens': int(tokens[j])}
  return out


def _evaluate_loglik(loglik_fn, task: Task, batch_size: int):
  if loglik_fn is None:
    raise ValueError(
      f'task {task.name!r} scores log-likelihoods: pass a loglik_fn (or the model) to evaluate it'
    )
  values = _loglik_all(loglik_fn, task, batch_size)
  rows, records = [], []
  for example, value in zip(task.examples, values):
    scores = task.scorer.score(value, example)
    records.append(scores)
    rows.append(
      {'prompt': example.prompt, 'reference': None, 'meta': dict(example.meta), 'scores': scores}
    )
  return rows, records


def evaluate_task(
  generate_fn: Optional[GenerateFn],
  task: Task,
  *,
  key: jax.Array,
  batch_size: int,
  loglik_fn: Optional[Callable] = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Generates and scores one task (a ``'loglik'`` task: scores its texts with ``loglik_fn``).

  Returns:
    ``(result, rows)``: ``result = {'kind', 'main_metric', 'score' (main metric, 0-1),
    'metrics': {...}, 'num_examples', 'num_samples', 'per_example'}`` (``per_example``: the
    main metric's per-example statistics with the task's ``kind``,
    ``peft_jax.evals.intervals.unit_stats``; ``None`` when the scorer defines none); ``rows``
    one dict per example with the prompt, reference, meta, generations and per-sample and
    averaged scores.
  """
  rows, records, correct_counts = [], [], []
  if task.mode == 'loglik':
    rows, records = _evaluate_loglik(loglik_fn, task, batch_size)
    generations = []
  else:
    if generate_fn is None:
      raise ValueError(f'task {task.name!r} generates text: pass a generate_fn (or the model)')
    generations = _generate_all(generate_fn, task, key, batch_size)
  for example, samples in zip(task.examples, generations):
    sample_scores = [task.scorer.score(text, example) for text in samples]
    averaged = {name: float(np.mean([s[name] for s in sample_scores])) for name in sample_scores[0]}
    records.append(averaged)
    correct_counts.append(sum(int(s[task.scorer.correct_metric] > 0.5) for s in sample_scores))
    rows.append(
      {
        'prompt': example.prompt,
        'reference': example.reference,
        'meta': dict(example.meta),
        'generations': samples,
        'sample_scores': sample_scores,
        'scores': averaged,
      }
    )
  metrics = task.scorer.aggregate(records, task.examples)
  for k in task.pass_k:
    estimates = scorers.pass_at_k(task.num_samples, np.asarray(correct_counts, np.int32), k)
    metrics[f'pass@{k}'] = float(np.mean(np.asarray(estimates)))
  metrics = {name: float(value) for name, value in metrics.items()}
  result = {
    'kind': task.kind,
    'main_metric': task.scorer.main_metric,
    'score': metrics[task.scorer.main_metric],
    'metrics': metrics,
    'num_examples': len(task.examples),
    'num_samples': task.num_samples,
    'per_example': (
      None
      if task.scorer.per_example is None
      else dict(task.scorer.per_example(records, task.examples), kind=task.kind)
    ),
  }
  return result, rows


def summarize(task_results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """PEFT-Arena axes from per-task results: ``target``/``general`` means, 0-1 (None if no task)."""
  axes: dict[str, Any] = {}
  for kind in ('target', 'general'):
    scores = [r['score'] for r in task_results.values() if r['kind'] == kind]
    axes[kind] = float(np.mean(scores)) if scores else None
  return {'tasks': {name: dict(result) for name, result in task_results.items()}, **axes}


def evaluate(
  model: Any,
  params: Any,
  tokenizer: Any,
  tasks: Sequence[Task],
  *,
  key: jax.Array,
  batch_size: int,
  out_dir: Optional[str] = None,
  generate_fn: Optional[GenerateFn] = None,
  loglik_fn: Optional[Callable] = None,
) -> dict[str, Any]:
  """Evaluates a model (or any ``generate_fn``) on ``tasks``.

  Args:
    model, params, tokenizer: used through :func:`model_generate_fn` unless ``generate_fn`` is
      given (then they may be ``None``).
    tasks: the tasks; names must be unique.
    key: PRNG key; a task uses ``fold_in(key, crc32(task name))`` and its batch b
      ``fold_in(., b)``, so a task's samples do not depend on which other tasks run.
    batch_size: prompts per generation call.
    out_dir: if set, writes ``<out_dir>/<task>.jsonl`` (one row per example) and
      ``<out_dir>/summary.json``, each atomically.
    generate_fn: ``(prompts, *, max_new_tokens, chat, temperature, key) -> list[str]``.
    loglik_fn: ``(texts) -> (nll [B], tokens [B])`` for ``'loglik'`` tasks (default: built from
      the model when one is given, :func:`peft_jax.evals.loglik.model_loglik_fn`).
  Returns:
    ``{'tasks': {name: result}, 'target': float|None, 'general': float|None}`` (axes on 0-100).
  """
  names = [task.name for task in tasks]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise ValueError(f'task names must be unique; repeated: {duplicates}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if generate_fn is None:
    if model is None or tokenizer is None:
      raise ValueError('evaluate needs model, params and tokenizer, or a generate_fn')
    generate_fn = model_generate_fn(model, params, tokenizer)
  if loglik_fn is None and model is not None and tokenizer is not None:
    loglik_fn = model_loglik_fn(model, params, tokenizer)
  task_results = {}
  for task in tasks:
    task_key = jax.random.fold_in(key, zlib.crc32(task.name.encode()) & 0x7FFFFFFF)
    result, rows = evaluate_task(
      generate_fn, task, key=task_key, batch_size=batch_size, loglik_fn=loglik_fn
    )
    task_results[task.name] = result
    if out_dir is not None:
      files.write_jsonl(os.path.join(out_dir, f'{task.name}.jsonl'), rows, sort_keys=True)
  summary = summarize(task_results)
  if out_dir is not None:
    files.write_json(os.path.join(out_dir, 'summary.json'), summary, indent=2, sort_keys=True)
  return summary
