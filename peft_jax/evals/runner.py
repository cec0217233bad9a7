"""Evaluate a checkpoint (optionally with a PEFT adapter) from a config: what ``launch/evaluate``
runs.

Config fields (:func:`default_config`):

* ``model_dir``: Hugging Face directory (config.json + safetensors + tokenizer) or
  ``'bundled:NAME'``; loaded with :func:`peft_jax.hub.load_pretrained`.
* ``tokenizer_dir``: where the tokenizer lives when ``model_dir`` has none ('' = model_dir).
* ``adapter_dir``: a PEFT adapter directory ('' = evaluate the base model), loaded with
  :func:`peft_jax.hub.peft_format.load_adapter`; ``merge_adapter`` folds it into plain weights
  first (same outputs, faster decoding).
* ``tasks``: ``{name: task spec}`` as :func:`peft_jax.evals.tasks.load_task` reads them.
* ``seed``, ``batch_size``.
* ``baseline_summary``: a base model's ``summary.json``; when set, the summary also reports
  ``forget = General_base - General`` and ``target_gain = Target - Target_base`` (0-1).
* ``drift_adapters``: ``{name: {adapter_dir, label, nominal_task, config_id}}``; when non-empty,
  :func:`run_drift` evaluates the base and each adapter and writes the capability-drift matrix
  (``drift.json``, ``drift.csv``; ``launch.evaluate`` adds the report's ``drift_heatmap.png``)
  instead (``adapter_dir`` unused).

Outputs under ``workdir``: ``eval_config.json`` (the resolved config), and per task
``<task>.jsonl`` plus ``summary.json`` (written by the harness).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from peft_jax import hub
from peft_jax.adapters.inject import merge
from peft_jax.common import files
from peft_jax.evals import axes, drift, harness
from peft_jax.evals import tasks as tasks_lib
from peft_jax.hub.peft_format import load_adapter


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model_dir = ''
  config.tokenizer_dir = ''
  config.adapter_dir = ''
  config.merge_adapter = False
  config.seed = 0
  config.batch_size = 8
  config.baseline_summary = ''
  config.tasks = ml_collections.ConfigDict()
  config.drift_adapters = ml_collections.ConfigDict()
  # The same entries from a JSON file ({name: {adapter_dir, label, nominal_task[, config_id]}});
  # the command-line way (a locked config cannot gain keys from flags).
  config.drift_adapters_file = ''
  return config


def drift_entries(config: ml_collections.ConfigDict) -> dict:
  """``config.drift_adapters`` merged with the entries of ``config.drift_adapters_file``, by name."""
  entries = dict(config.drift_adapters.to_dict())
  path = config.get('drift_adapters_file') or ''
  if path:
    if not os.path.exists(path):
      raise FileNotFoundError(f'config.drift_adapters_file={path!r} does not exist')
    with open(path) as f:
      try:
        loaded = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(
          f'{path}: line {e.lineno} column {e.colno}: not valid JSON: {e.msg}'
        ) from e
    if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
      raise ValueError(f'{path}: expected {{name: {{adapter_dir, label, nominal_task}}}}')
    base = os.path.dirname(os.path.abspath(path))
    for name, entry in loaded.items():
      if name in entries:
        raise ValueError(f'{path}: adapter {name!r} is also in config.drift_adapters')
      entry = dict(entry)
      if entry.get('adapter_dir') and not os.path.isabs(entry['adapter_dir']):
        entry['adapter_dir'] = os.path.join(base, entry['adapter_dir'])
      entries[name] = entry
  return dict(sorted(entries.items()))


def _load_base(config):
  if not config.model_dir:
    raise ValueError('config.model_dir is empty: give a Hugging Face checkpoint directory')
  model, params, tokenizer = hub.load_pretrained(config.model_dir)
  if config.tokenizer_dir:
    tokenizer = hub.load_tokenizer(config.tokenizer_dir)
  if tokenizer is None:
    raise FileNotFoundError(
      f'model_dir {config.model_dir!r} holds no tokenizer files; set '
      f'config.tokenizer_dir to a directory with tokenizer.json'
    )
  return model, params, tokenizer


def _load_model(config):
  model, params, tokenizer = _load_base(config)
  if config.adapter_dir:
    params = load_adapter(params, config.adapter_dir)
    if config.merge_adapter:
      params = merge(params)
  return model, params, tokenizer


def load_tasks(task_specs: Any) -> list[tasks_lib.Task]:
  """``{name: spec}`` -> tasks (the key is the task name unless the spec sets one)."""
  specs = task_specs.to_dict() if hasattr(task_specs, 'to_dict') else dict(task_specs)
  if not specs:
    raise ValueError('config.tasks is empty; give at least one {name: {type, path, ...}}')
  return [tasks_lib.load_task({'name': name, **dict(spec)}) for name, spec in specs.items()]


def add_baseline_deltas(summary: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
  """Adds ``forget`` and ``target_gain`` (0-1) where both summaries have the axis."""
  summary = dict(summary)
  if summary.get('general') is not None and baseline.get('general') is not None:
    summary['forget'] = axes.forget(baseline['general'], summary['general'])
  if summary.get('target') is not None and baseline.get('target') is not None:
    summary['target_gain'] = axes.target_gain(baseline['target'], summary['target'])
  summary['baseline'] = {'general': baseline.get('general'), 'target': baseline.get('target')}
  return summary


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Loads the model (+ adapter) and tasks, evaluates, writes files; returns the summary."""
  task_list = load_tasks(config.tasks)
  baseline = None
  if config.baseline_summary:
    if not os.path.isfile(config.baseline_summary):
      raise FileNotFoundError(f'config.baseline_summary {config.baseline_summary!r} does not exist')
    with open(config.baseline_summary, encoding='utf-8') as f:
      baseline = json.load(f)
  os.makedirs(workdir, exist_ok=True)
  files.write_json(
    os.path.join(workdir, 'eval_config.json'), config.to_dict(), indent=2, sort_keys=True
  )
  model, params, tokenizer = _load_model(config)
  summary = harness.evaluate(
    model,
    params,
    tokenizer,
    task_list,
    key=jax.random.key(config.seed),
    batch_size=config.batch_size,
    out_dir=workdir,
  )
  if baseline is not None:
    summary = add_baseline_deltas(summary, baseline)
    files.write_json(os.path.join(workdir, 'summary.json'), summary, indent=2, sort_keys=True)
  return summary


_DRIFT_ADAPTER_KEYS = ('adapter_dir', 'label', 'nominal_task', 'config_id')


def run_drift(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the base and every ``config.drift_adapters`` entry; writes the drift outputs.

  Returns:
    the drift report (:func:`peft_jax.evals.drift.drift_report`).
  """
  entries = drift_entries(config)
  if not entries:
    raise ValueError(
      'config.drift_adapters is empty; give {name: {adapter_dir, label, nominal_task[, config_id]}}'
    )
  specs = []
  for name, entry in entries.items():
    unknown = sorted(set(entry) - set(_DRIFT_ADAPTER_KEYS))
    missing = sorted(k for k in ('adapter_dir', 'label', 'nominal_task') if not entry.get(k))
    if unknown or missing:
      raise KeyError(
        f'config.drift_adapters.{name}: unknown keys {unknown}, missing {missing}; '
        f'valid keys: {list(_DRIFT_ADAPTER_KEYS)}'
      )
    specs.append(
      drift.AdapterSpec(
        name=name,
        label=entry['label'],
        nominal_task=entry['nominal_task'],
        adapter=entry['adapter_dir'],
        config_id=entry.get('config_id') or None,
      )
    )
  task_list = load_tasks(config.tasks)
  task_names = [t.name for t in task_list]
  for spec in specs:
    if spec.nominal_task not in task_names:
      raise KeyError(
        f'config.drift_adapters.{spec.name}.nominal_task {spec.nominal_task!r} is '
        f'not a configured task; tasks: {task_names}'
      )
  os.makedirs(workdir, exist_ok=True)
  files.write_json(
    os.path.join(workdir, 'eval_config.json'), config.to_dict(), indent=2, sort_keys=True
  )
  model, params, tokenizer = _load_base(config)
  _, _, report = drift.evaluate_adapters(
    model,
    params,
    tokenizer,
    task_list,
    specs,
    key=jax.random.key(config.seed),
    batch_size=config.batch_size,
    out_dir=workdir,
    merge=config.merge_adapter,
  )
  return report
