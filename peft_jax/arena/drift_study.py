"""The drift study on a real base: do an adapter's nominal label and its measured gains agree?
(``config.world = 'real'``, ``config.drift_study``; docs/REAL.md, "The drift study";
definitions in docs/METRICS.md, "Capability drift").

For every nominal label (``config.drift_study.labels``: label -> the suite task it names, whose
SFT split ``sft/<task>.jsonl`` of the real suite it trains on; the target's is the arena's own
SFT data, without the sweep's validation rows) and every configuration
(``config.drift_study.configs``: name -> ``{'lr_factor', 'train'}``), one adapter of
``config.drift_study.method`` is trained and evaluated on every task the arena evaluates:

``train_drift_<label>_<cfg>``  the method's arena train config (``config.train``, then
                               ``config.methods[method]``), then ``config.drift_study.train``,
                               then the configuration's ``train`` overrides, its peak learning rate
                               times ``lr_factor``, on the label's SFT data (resumable)
``eval_drift_<label>_<cfg>``   the adapter on every task (the base evaluation's selection)
``drift_study``                the drift matrix over those adapters
                               (``peft_jax.evals.drift.drift_report``: Δ, drift, flags, the
                               per-label spread) and the configuration-sensitivity view
                               (:func:`sensitivity`)

Each stage is fingerprinted like the arena's: the train stage by its resolved train config (the
data path and the suite identity included), the evaluation by the task specs and its inputs, the
matrix by the labels, configurations and its inputs. The study's runs share one compiled train
step when their shapes agree (the peak rate and the data are runtime values).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from peft_jax.arena import real_world, study
from peft_jax.data import real_suite
from peft_jax.evals import drift
from peft_jax.train import config as train_config_lib
from peft_jax.train import trainer

STAGE = 'drift_study'
CONFIG_KEYS = ('lr_factor', 'train')


def settings(config: ml_collections.ConfigDict) -> Any:
  return config.get('drift_study') or None


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether the config asks for the study (labels given); an error outside the real world."""
  found = settings(config)
  if not found or not found.get('labels'):
    return False
  if not real_world.is_real(config):
    raise ValueError(
      "config.drift_study needs config.world='real' (its labels train on the real suite's SFT "
      f'splits {list(real_suite.SFT_TASKS)}); got world={config.get("world")!r}'
    )
  return True


def adapters(config: ml_collections.ConfigDict) -> list[dict]:
  """``[{'name', 'label', 'task', 'config_id', 'lr_factor', 'train'}]`` in label then config
  order; errors name the offending key."""
  found = settings(config)
  labels, configs = dict(found.labels), dict(found.get('configs') or {})
  if not configs:
    raise ValueError('config.drift_study.configs is empty; give at least one configuration')
  out = []
  for label, task in labels.items():
    if task not in real_suite.SFT_TASKS:
      raise ValueError(
        f'config.drift_study.labels.{label}={task!r}: a label names the suite task it trains; '
        f'valid: {list(real_suite.SFT_TASKS)}'
      )
    for name, cfg in configs.items():
      cfg = dict(cfg or {})
      unknown = sorted(set(cfg) - set(CONFIG_KEYS))
      if unknown:
        raise KeyError(
          f'config.drift_study.configs.{name}: unknown keys {unknown}; valid: {list(CONFIG_KEYS)}'
        )
      factor = float(cfg.get('lr_factor', 1.0))
      if not factor > 0:
        raise ValueError(f'config.drift_study.configs.{name}.lr_factor={factor} must be > 0')
      out.append(
        {
          'name': f'{label}_{name}',
          'label': label,
          'task': task,
          'config_id': name,
          'lr_factor': factor,
          'train': dict(cfg.get('train') or {}),
        }
      )
  return out


def sft_path(plan, task: str) -> str:
  """A label's SFT data: the suite's ``sft/<task>.jsonl``; for the target, the arena's own SFT
  data (the sweep's validation rows held out)."""
  if task == real_world.TARGET:
    return plan.target_train_path
  return os.path.join(plan.suite_dir, 'sft', f'{task}.jsonl')


def train_config(
  config: ml_collections.ConfigDict,
  adapter: Mapping[str, Any],
  plan,
  method_train_config: Callable[..., ml_collections.ConfigDict],
) -> ml_collections.ConfigDict:
  """The resolved train config of one study adapter (module docstring); ``plan``: the
  study's ``StudyPlan`` (base, suite, target data)."""
  method = settings(config).get('method', 'lora')
  c = method_train_config(config, method, plan.base_dir, sft_path(plan, adapter['task']))
  where = 'config.drift_study'
  c = train_config_lib.with_overrides(
    c, settings(config).get('train') or {}, where=f'{where}.train'
  )
  c = train_config_lib.with_overrides(
    c, adapter['train'], where=f'{where}.configs.{adapter["config_id"]}.train'
  )
  c.optimizer.peak_lr = float(c.optimizer.peak_lr) * adapter['lr_factor']
  c.checkpoint.snapshot_every = 0  # no trajectory for the study's runs
  return c


def sensitivity(report: Mapping[str, Any]) -> dict[str, Any]:
  """The configuration-sensitivity view of a drift report: per label, per configuration, the
  nominal gain, the task of the largest gain and the flags; and whether the configurations of
  a label gain most on different tasks (``capability_differs``) or disagree on the sign of the
  nominal gain (``sign_change``, from the report's ``by_label``).

  The task of the largest gain is ``argmax_t Δ[a, t]`` (ties: the first in task order), ``None``
  when no task gains (every ``Δ <= 0``).
  """
  tasks = list(report['tasks'])
  out = {}
  for label, summary in report['by_label'].items():
    rows = [a for a in report['adapters'] if a['label'] == label]
    per_config = []
    for row in rows:
      deltas = np.array([row['deltas'][t] for t in tasks], dtype=np.float64)
      best = int(np.argmax(deltas))
      per_config.append(
        {
          'adapter': row['name'],
          'config_id': row['config_id'],
          'nominal_task': row['nominal_task'],
          'nominal_gain': row['nominal_gain'],
          'top_task': tasks[best] if deltas[best] > 0 else None,
          'top_gain': float(deltas[best]),
          'drift': row['drift'],
          'flags': list(row['flags']),
        }
      )
    top = {r['top_task'] for r in per_config}
    out[label] = {
      'configs': per_config,
      'capability_differs': len(top) > 1,
      'sign_change': bool(summary['sign_change']),
      'nominal_gain': summary['nominal_gain'],
    }
  return out


def stage_matrix(
  base_scores: Mapping[str, float],
  scores: Mapping[str, Mapping[str, float]],
  specs: list[dict],
  out_dir: str,
) -> dict:
  """The drift report of the study's adapters (``scores``: adapter name -> task scores), with
  its ``sensitivity``; writes ``drift.json`` and ``drift.csv``."""
  report = drift.drift_report(
    base_scores,
    [
      drift.AdapterScores(
        name=a['name'],
        label=a['label'],
        nominal_task=a['task'],
        scores=scores[a['name']],
        config_id=a['config_id'],
      )
      for a in specs
    ],
  )
  drift.write_drift_outputs(report, out_dir)
  return dict(report, sensitivity=sensitivity(report))


def add_stages(
  graph,
  config: ml_collections.ConfigDict,
  plan,
  slices: Mapping[str, dict],
  get_ctx: Callable,
  *,
  method_train_config: Callable[..., ml_collections.ConfigDict],
  train_slice: Callable[[ml_collections.ConfigDict], dict],
) -> list[str]:
  """Declares the study's stages on ``graph`` (``graph.add(name, slice, inputs, fn=...,
  in_place=...)``, ``graph.runner``); returns their names (none when the study is off)."""
  if not enabled(config):
    return []
  specs = adapters(config)
  programs = trainer.ProgramCache()  # one compiled step for every run of the same shapes
  extra = real_world.extra_eval_inputs(config)
  names, evals = [], []
  for adapter in specs:
    c = train_config(config, adapter, plan, method_train_config)
    train_name, eval_name = f'train_drift_{adapter["name"]}', f'eval_drift_{adapter["name"]}'
    cache: dict = {}
    graph.resident[train_name] = cache  # one run in memory at a time (pipeline._Graph.hold)

    def run_dir(name=train_name):
      return os.path.join(graph.runner.path(name), 'run')

    def train_result(c=c, cache=cache, run_dir=run_dir, name=train_name):
      # The run itself, or (a finished run) its restore; kept for the evaluation that follows.
      if 'result' not in cache:
        graph.hold(name)
        cache['result'] = trainer.train(c, run_dir(), programs=programs)
      return cache['result']

    def train_fn(d, c=c, adapter=adapter, run_dir=run_dir, train_result=train_result):
      del d
      out = study.stage_train(str(c.adapter.method), lambda r: train_result(), run_dir())
      return dict(
        out,
        label=adapter['label'],
        nominal_task=adapter['task'],
        config_id=adapter['config_id'],
        peak_lr=float(c.optimizer.peak_lr),
        data=os.path.relpath(str(c.data.path), os.path.dirname(plan.suite_dir)),
      )

    def tree(cache=cache, train_result=train_result, name=train_name):
      if 'tree' not in cache:
        graph.hold(name)
        cache['tree'] = jax.device_get(train_result().tree)
        cache.pop('result')  # the tree is all the evaluation needs
      return cache['tree']

    graph.add(
      train_name,
      dict(
        slices['world'],
        train=train_slice(c),
        optimizer_state='peak_lr',
        label=adapter['label'],
        nominal_task=adapter['task'],
      ),
      fn=train_fn,
      in_place=True,
    )
    graph.add(
      eval_name,
      slices['eval'],
      [train_name] + extra,
      fn=lambda d, tree=tree: study.stage_eval(get_ctx(), tree(), d),
    )
    names += [train_name, eval_name]
    evals.append(eval_name)

  def matrix_fn(d):
    scores = {a['name']: graph.runner.result(f'eval_drift_{a["name"]}')['tasks'] for a in specs}
    return stage_matrix(graph.runner.result('base_eval')['tasks'], scores, specs, d)

  graph.add(
    STAGE,
    dict(slices['drift'], adapters=specs),
    ['base_eval'] + evals,
    fn=matrix_fn,
  )
  return names + [STAGE]


def results_entry(result: Mapping[str, Any]) -> dict:
  """The report's ``drift_study`` entry from the ``drift_study`` stage result: the drift matrix
  (as the report's ``drift``), each adapter's configuration and nominal task, and the
  configuration-sensitivity view."""
  adapters_ = result['adapters']
  return {
    'adapters': [a['name'] for a in adapters_],
    'labels': {a['name']: a['label'] for a in adapters_},
    'config_ids': {a['name']: a['config_id'] for a in adapters_},
    'nominal_tasks': {a['name']: a['nominal_task'] for a in adapters_},
    'tasks': list(result['tasks']),
    'delta': [[a['deltas'][t] for t in result['tasks']] for a in adapters_],
    'flagged': {a['name']: a['flags'] for a in adapters_ if a['flags']},
    'sensitivity': result['sensitivity'],
  }
