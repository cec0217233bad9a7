"""The arena on a real pretrained base: ``config.world = 'real'`` (docs/REAL.md, "The arena on a
real base").

What differs from the bundled world:

* **The suite** is ``peft_jax.data.real_suite``'s, written into ``<workdir>/suite`` from
  ``config.real.suite_seed`` / ``config.real.sizes``. Its identity (part of every stage's
  fingerprint) is the manifest's sources (package versions and data digests, the Python version
  the pydoc text comes from) and a digest of the written files.
* **The target** is ``gsm``; as in the bundled world, the last ``config.sweep.validation_size``
  training problems are held out of the SFT data as the sweep's validation split. The sweep's
  general validation (``config.sweep.general_limits``) is ``pydoc_ppl`` on held-out passages
  disjoint from the test passages (the other general tasks have no second split).
* **The evaluated tasks depend on the base.** The ``base_eval`` stage (:func:`stage_base_eval`)
  first evaluates the base on every suite task (``selection/<task>.jsonl``), then chooses from
  those per-example rows the retention set (the ``facts`` items the base answered:
  ``facts_retention_set.jsonl`` in the stage folder) and the BBH subtasks above chance, and scores
  the base on the resulting task list (every response served from the first pass, so the base
  scores 1 on its retention set by construction). Its result holds the chosen task specs; the
  stages that evaluate a fine-tuned model (``eval_``, ``paths_``, ``trajectory_``) take
  ``base_eval`` as an input stage, so a changed selection recomputes them.

Perplexity (``pydoc_ppl``) is scored through a ``loglik_fn`` in every stage that evaluates
tasks (``peft_jax.arena.study``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import ml_collections

from peft_jax import hub
from peft_jax.arena import context as context_lib
from peft_jax.arena.context import ArenaContext, StudyPlan
from peft_jax.common import files
from peft_jax.data import pydoc_tasks, real_suite
from peft_jax.evals import axes, real, retention
from peft_jax.evals import tasks as tasks_lib
from peft_jax.evals.generation import Generator
from peft_jax.evals.loglik import LoglikScorer
from peft_jax.hub import gguf

WORLD = 'real'
TARGET = 'gsm'
SUITE_DIR = 'suite'
SELECTION_DIR = 'selection'
# Not ``facts_retention.jsonl``: the second evaluation in the stage writes its per-example
# rows to ``<out_dir>/<task>.jsonl``, and the retention task is named ``facts_retention``.
RETENTION_FILE = 'facts_retention_set.jsonl'
PPL_TASK = 'pydoc_ppl'
PPL_VALIDATION_FILE = 'pydoc_ppl_validation.jsonl'


def is_real(config: ml_collections.ConfigDict) -> bool:
  return config.get('world') == WORLD


def _real_settings(config: ml_collections.ConfigDict) -> tuple[int, dict]:
  settings = config.get('real') or {}
  return int(settings.get('suite_seed', 0)), dict(settings.get('sizes') or {})


def _suite_identity(suite_dir: str, seed: int, sizes: dict) -> dict:
  identity: dict[str, Any] = {'seed': seed, 'sizes': sizes}
  if os.path.exists(os.path.join(suite_dir, 'manifest.json')):
    identity['sources'] = real_suite.read_manifest(suite_dir)['sources']
    identity['files'] = context_lib.path_identity(suite_dir)
  return identity


def _ppl_validation(suite_dir: str, workdir: str, size: int, write: bool) -> str:
  """Perplexity passages held out from the test passages: the next ``size`` of the same draw
  (``heldout_passages`` is a deterministic round-robin, so its first ``n`` are the test set)."""
  path = os.path.join(workdir, context_lib.SPLITS_DIR, PPL_VALIDATION_FILE)
  if not write:
    return path
  manifest = real_suite.read_manifest(suite_dir)
  num_test, seed = int(manifest['sizes']['pydoc_passages']), int(manifest['seed'])
  passages = pydoc_tasks.heldout_passages(num_test + size, seed=seed)
  with open(os.path.join(suite_dir, 'general', 'pydoc_ppl_test.jsonl'), encoding='utf-8') as f:
    test = {json.loads(line)['text'] for line in f if line.strip()}
  if set(passages[:num_test]) != test:
    raise ValueError(f'{suite_dir}: the pydoc test passages are not the first {num_test} drawn')
  rows = [
    {'id': f'pydoc_val:{i}', 'text': p} for i, p in enumerate(passages[num_test:]) if p not in test
  ]
  files.write_jsonl(path, rows)
  return path


def resolve_real(
  config: ml_collections.ConfigDict, workdir: str, *, write: bool = True
) -> StudyPlan:
  """The real world's :class:`StudyPlan` (module docstring). ``task_specs`` / ``path_specs``
  are what the base is evaluated on first (every BBH subtask, no retention set)."""
  if not config.base:
    raise ValueError('config.base is empty; give a model directory, GGUF file or a hub name')
  gguf_file = gguf.find_gguf_file(config.base)  # a named base: its installed GGUF file
  base_dir = str(gguf_file) if gguf_file is not None else str(hub.resolve_path(config.base))
  if not os.path.exists(base_dir):
    raise FileNotFoundError(f'config.base={config.base!r}: {base_dir} does not exist')
  if config.target != TARGET:
    raise ValueError(f"config.world='real' has one target, {TARGET!r}; got {config.target!r}")
  seed, sizes = _real_settings(config)
  suite_dir = os.path.join(workdir, SUITE_DIR)
  if write:
    real_suite.write_real_suite(suite_dir, seed=seed, sizes=sizes)
  limits, max_new = config.eval.get('limits'), config.eval.get('max_new_tokens')
  specs = real_suite.task_specs(suite_dir, limits=limits, max_new_tokens=max_new)
  path_specs = real_suite.task_specs(
    suite_dir, limits=config.paths.get('limits'), max_new_tokens=max_new
  )
  notes = [f'real world: suite {suite_dir} (seed {seed}), base {base_dir}']
  target_train = os.path.join(suite_dir, 'sft', f'{TARGET}.jsonl')
  validation = []
  if context_lib.sweep_enabled(config):
    target_train, val_path = context_lib._split_target(  # pylint: disable=protected-access
      suite_dir, workdir, TARGET, int(config.sweep.validation_size), write
    )
    spec = next(s for s in specs if s['name'] == TARGET)
    validation = [{k: v for k, v in dict(spec, path=val_path).items() if k != 'limit'}]
    general = dict(config.sweep.get('general_limits') or {})
    unknown = sorted(set(general) - {PPL_TASK})
    if unknown:
      raise ValueError(
        f'config.sweep.general_limits names {unknown}: in the real world only {PPL_TASK!r} has a '
        'validation split (held-out passages); the other general tasks have only a test split'
      )
    if PPL_TASK in general:
      path = _ppl_validation(suite_dir, workdir, int(general[PPL_TASK]), write)
      ppl = next(s for s in specs if s['name'] == PPL_TASK)
      validation.append({k: v for k, v in dict(ppl, path=path).items() if k != 'limit'})
  identity = {
    'base': context_lib.path_identity(base_dir),
    'suite': _suite_identity(suite_dir, seed, sizes),
  }
  return StudyPlan(
    base_dir=base_dir,
    suite_dir=suite_dir,
    task_specs=specs,
    path_specs=path_specs,
    validation_specs=validation,
    target_train_path=target_train,
    notes=notes,
    identity=identity,
  )


def _memo_generate_fn(generate_fn):
  """``generate_fn`` answering each (prompt, settings) once: a second pass over the same prompts
  returns the first pass's responses, whatever the batches."""
  cache: dict[tuple, str] = {}

  def memo(prompts, *, max_new_tokens, chat, temperature, key):
    settings = (int(max_new_tokens), bool(chat), float(temperature))
    todo = list(dict.fromkeys(p for p in prompts if (p, *settings) not in cache))
    if todo:
      texts = generate_fn(
        todo, max_new_tokens=max_new_tokens, chat=chat, temperature=temperature, key=key
      )
      cache.update({(p, *settings): t for p, t in zip(todo, texts)})
    return [cache[(p, *settings)] for p in prompts]

  return memo


def select_tasks(
  config: ml_collections.ConfigDict,
  suite_dir: str,
  rows: Mapping[str, list],
  out_dir: str,
  final_dir: str,
) -> dict:
  """The evaluated task list from the base's per-example ``rows`` (``{task: rows}``).

  Writes the retention set to ``<out_dir>/facts_retention_set.jsonl`` (its specs point at
  ``final_dir``, where the stage folder ends up). Returns ``{'task_specs', 'path_specs',
  'retention', 'bbh', 'bbh_kept', 'messages'}``; an empty retention set leaves
  ``facts_retention`` out with a message saying so.
  """
  manifest = real_suite.read_manifest(suite_dir)
  messages = []
  source = manifest['sources']['facts']
  ids = retention.retained_ids(rows['facts'])
  retention_info: dict[str, Any] = {
    'num_items': len(ids),
    'of': len(rows['facts']),
    'source': f'{source["package"]}=={source["version"]}',
  }
  retention_path = None
  if ids:
    facts_spec = real_suite.task_specs(suite_dir)[0]
    retention.retention_spec(
      facts_spec,
      rows['facts'],
      os.path.join(out_dir, RETENTION_FILE),
      source={'package': source['package'], 'version': source['version']},
    )
    retention_path = os.path.join(final_dir, RETENTION_FILE)
    retention_info.update(path=retention_path, ids=ids)
  else:
    messages.append(
      f'retention set empty: the base answered none of the {len(rows["facts"])} facts items '
      'correctly, so facts_retention is left out of the evaluated tasks'
    )
  bbh, kept = {}, None
  if 'bbh' in rows:
    bbh = retention.above_chance_subtasks(rows['bbh'], manifest['bbh_chance'])
    kept = [s for s, r in bbh.items() if r['above']]
    if not kept:
      messages.append(
        f'BBH left out: none of its {len(bbh)} subtasks is above chance on the base '
        '(the lower end of the 95% interval above the majority-answer rate)'
      )
  max_new = config.eval.get('max_new_tokens')

  def specs(limits):
    return real_suite.task_specs(
      suite_dir,
      limits=limits,
      max_new_tokens=max_new,
      bbh_subtasks=kept,
      retention_path=retention_path,
    )

  return {
    'task_specs': specs(config.eval.get('limits')),
    'path_specs': specs(config.paths.get('limits')),
    'retention': retention_info,
    'bbh': bbh,
    'bbh_kept': kept,
    'messages': messages,
  }


def _load(spec: dict, final_dir: str, out_dir: str) -> tasks_lib.Task:
  """A task whose file may still lie in the stage's temporary folder."""
  path = spec['path']
  if path.startswith(final_dir + os.sep):
    path = os.path.join(out_dir, os.path.relpath(path, final_dir))
  return tasks_lib.load_task(dict(spec, path=path))


def stage_base_eval(ctx: ArenaContext, out_dir: str, final_dir: str) -> dict:
  """The base on every suite task, the task selection, then the base on the selected tasks
  (module docstring). ``final_dir``: where ``out_dir`` is moved when the stage completes."""
  generator = Generator(ctx.model, ctx.base_params, ctx.tokenizer)
  generate_fn = _memo_generate_fn(generator.fn())
  loglik_fn = LoglikScorer(ctx.model, ctx.base_params, ctx.tokenizer).fn()
  batch = ctx.config.eval.batch_size
  first = [tasks_lib.load_task(s) for s in ctx.plan.task_specs]
  selection_dir = os.path.join(out_dir, SELECTION_DIR)
  selection = axes.evaluate_scores(generate_fn, first, batch, selection_dir, loglik_fn=loglik_fn)
  rows = {}
  for task in first:
    with open(os.path.join(selection_dir, f'{task.name}.jsonl'), encoding='utf-8') as f:
      rows[task.name] = [json.loads(line) for line in f if line.strip()]
  chosen = select_tasks(ctx.config, ctx.suite_dir, rows, out_dir, final_dir)
  tasks = [_load(s, final_dir, out_dir) for s in chosen['task_specs']]
  scores = axes.evaluate_scores(generate_fn, tasks, batch, out_dir, loglik_fn=loglik_fn)
  chance = real_suite.read_manifest(ctx.suite_dir)['bbh_chance']
  floors = {
    t.name: (
      1.0 / float(ctx.model.config.vocab_size)
      if t.mode == 'loglik'
      else real.floor_score(t, chance)
    )
    for t in tasks
  }
  chosen['selection'] = {
    'tasks': selection['tasks'],
    'intervals': selection['intervals']['tasks'],
    'n': selection['n'],
  }
  chosen['floors'] = floors
  return dict(scores, real=chosen)


def evaluated_specs(plan: StudyPlan, base_result: Optional[Mapping]) -> tuple[list, list]:
  """(eval specs, α-grid specs) the fine-tuned models are evaluated on: the base evaluation's
  selection in the real world, the plan's specs otherwise."""
  chosen = (base_result or {}).get('real')
  if not chosen:
    return plan.task_specs, plan.path_specs
  return chosen['task_specs'], chosen['path_specs']


def apply_base_eval(ctx: ArenaContext, base_result: Mapping) -> ArenaContext:
  """Points ``ctx.tasks`` / ``ctx.path_tasks`` at the base evaluation's selection (real world;
  other worlds: unchanged). Idempotent; reloads only when the selection changed."""
  chosen = base_result.get('real')
  if not chosen:
    return ctx
  key = json.dumps([chosen['task_specs'], chosen['path_specs']], sort_keys=True)
  if getattr(ctx, '_real_selection', None) != key:
    ctx.tasks = [tasks_lib.load_task(s) for s in chosen['task_specs']]
    ctx.path_tasks = [tasks_lib.load_task(s) for s in chosen['path_specs']]
    ctx._real_selection = key  # pylint: disable=protected-access
  return ctx


def notes(base_result: Optional[Mapping]) -> list[str]:
  """What the base evaluation decided (retention set size, BBH subtasks), for the log/report."""
  chosen = (base_result or {}).get('real')
  if not chosen:
    return []
  ret = chosen['retention']
  out = [f'retention set: {ret["num_items"]} of {ret["of"]} facts items ({ret["source"]})']
  if chosen.get('bbh_kept') is not None:
    out.append(f'BBH subtasks above chance on the base: {chosen["bbh_kept"] or "none"}')
  return out + list(chosen['messages'])


def extra_eval_inputs(config: ml_collections.ConfigDict) -> list[str]:
  """Input stages of the stages that evaluate a fine-tuned model, besides its training."""
  return ['base_eval'] if is_real(config) else []
