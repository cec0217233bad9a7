"""What every stage of a study reads: the base model, the tasks, the target's data splits and the
probe prompts; and the config slices the stages' fingerprints are computed from.

Two steps: :func:`resolve_study` settles every path, task spec and data split from the config
alone (no model is loaded; ``write=False`` writes nothing, for ``--dry_run``), and
:func:`build_context` loads the base model and the tasks on top of it.

Target data. The learning-rate sweep scores each candidate on a *validation* split of the target,
never on its test split. In the bundled world it is the last ``config.sweep.validation_size``
problems of the suite's ``targets/<target>_train.jsonl``, held out from the SFT data (the SFT file
has one row per training problem, in the same order), so the fine-tuning data, the validation
split and the test split are disjoint. In a custom world it is ``config.validation_path`` (a file
of the target task's type); without one the sweep is off and the run says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional

import ml_collections
import numpy as np

from peft_jax import hub
from peft_jax.arena import world
from peft_jax.common import files
from peft_jax.data.suite import layout
from peft_jax.evals import axes
from peft_jax.evals import tasks as tasks_lib

PyTree = Any
SPLITS_DIR = 'splits'


@dataclasses.dataclass
class StudyPlan:
  """Everything a study needs that is settled from its config, before any model is loaded.

  Attributes:
    base_dir: the resolved base model path.
    suite_dir: the offline suite's folder (None: custom tasks only).
    task_specs / path_specs: the evaluation task specs (eval limits; the α-grid's limits).
    validation_specs: the target's validation task spec(s) (empty: no sweep possible), then the
      general tasks' validation specs (their train splits) when ``config.sweep.general_limits``.
    target_train_path: the SFT data every method trains on (the validation rows removed).
    notes: what was decided and why (printed by the pipeline).
    identity: digests of the base model and the data files (part of every stage's slice).
  """

  base_dir: str
  suite_dir: Optional[str]
  task_specs: list
  path_specs: list
  validation_specs: list
  target_train_path: str
  notes: list
  identity: dict


@dataclasses.dataclass
class ArenaContext:
  config: ml_collections.ConfigDict
  workdir: str
  base_dir: str
  suite_dir: Optional[str]
  model: Any
  base_params: PyTree
  tokenizer: Any
  tasks: list  # evaluation tasks (eval limits)
  path_tasks: list  # the same tasks at the α-grid's smaller limits
  target_train_path: str
  general_prompts: list  # probe prompts for activation geometry and CSD
  target_prompts: list
  validation_tasks: list = dataclasses.field(default_factory=list)
  plan: Optional[StudyPlan] = None


# ---- identities -----------------------------------------------------------------------------

_DIGESTS: dict = {}
BIG_FILE = 1 << 30  # bigger files are identified by size and mtime instead of their content


def path_identity(path: str) -> str:
  """A digest of a file's (or a folder's files') content: what a stage's inputs were read from.

  Files above 1 GiB are identified by size and modification time (hashing them would cost more
  than most stages).
  """
  path = os.path.abspath(path)
  if os.path.isdir(path):
    h = hashlib.sha256()
    for root, dirs, names in os.walk(path):
      dirs.sort()
      for name in sorted(names):
        full = os.path.join(root, name)
        h.update(os.path.relpath(full, path).encode() + b'\0' + path_identity(full).encode())
    return h.hexdigest()[:16]
  stat = os.stat(path)
  key = (path, stat.st_size, stat.st_mtime_ns)
  if key not in _DIGESTS:
    if stat.st_size > BIG_FILE:
      _DIGESTS[key] = f'size{stat.st_size}-mtime{stat.st_mtime_ns}'
    else:
      h = hashlib.sha256()
      with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
          h.update(chunk)
      _DIGESTS[key] = h.hexdigest()[:16]
  return _DIGESTS[key]


# ---- resolution -----------------------------------------------------------------------------


def _read_tasks_file(path: str) -> list[dict]:
  """Task specs from a JSON (or YAML) file: a list of spec objects, or ``{"tasks": [...]}``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.tasks_file={path!r} does not exist')
  with open(path) as f:
    text = f.read()
  if path.endswith(('.yaml', '.yml')):
    try:
      import yaml  # pylint: disable=g-import-not-at-top  # optional: only for YAML task files
    except ImportError as e:
      raise ImportError(f'{path}: reading YAML task files needs PyYAML (pip install pyyaml)') from e
    try:
      data = yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise ValueError(f'{path}: not valid YAML: {e}') from e
  else:
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: line {e.lineno} column {e.colno}: not valid JSON: {e.msg}') from e
  if isinstance(data, dict) and 'tasks' in data:
    data = data['tasks']
  if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
    raise ValueError(f'{path}: expected a list of task specs (JSON objects), got {type(data)}')
  base = os.path.dirname(os.path.abspath(path))
  out = []
  for i, spec in enumerate(data):
    spec = dict(spec)
    for key in ('path', 'fewshot_path', 'fewshot_dir'):  # relative to the tasks file
      if spec.get(key) and not os.path.isabs(spec[key]):
        spec[key] = os.path.join(base, spec[key])
    if 'type' not in spec or 'path' not in spec:
      raise KeyError(f'{path}: task {i} needs "type" and "path"; got keys {sorted(spec)}')
    out.append(spec)
  return out


def _with_limits(spec: dict, limits, max_new_tokens) -> dict:
  """The config's per-task eval settings, unless the spec sets its own."""
  spec = dict(spec)
  name = spec.get('name') or spec['type']
  if limits and name in limits and 'limit' not in spec:
    spec['limit'] = int(limits[name])
  if max_new_tokens and name in max_new_tokens and 'max_new_tokens' not in spec:
    spec['max_new_tokens'] = int(max_new_tokens[name])
  return spec


def _bundled_suite(config, workdir: str, base_dir: str, write: bool) -> tuple[str, dict]:
  meta_path = os.path.join(base_dir, world.SUITE_META)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
      f'{base_dir} has no {world.SUITE_META} (the seed and sizes of the '
      'suite it was pretrained on); the bundled world needs it'
    )
  with open(meta_path) as f:
    meta = json.load(f)
  suite_dir = os.path.join(workdir, 'suite')
  if write:
    world.ensure_suite(suite_dir, int(meta['seed']), meta.get('sizes') or {})
  return suite_dir, {'seed': int(meta['seed']), 'sizes': meta.get('sizes') or {}}


def _split_target(suite_dir: str, workdir: str, target: str, size: int, write: bool):
  """(SFT path without the validation rows, validation eval file) of a suite target."""
  out_dir = os.path.join(workdir, SPLITS_DIR)
  sft_out = os.path.join(out_dir, f'{target}_sft.jsonl')
  val_out = os.path.join(out_dir, f'{target}_validation.jsonl')
  if not write:
    return sft_out, val_out
  with open(layout.sft_path(suite_dir, target)) as f:
    sft_rows = [line for line in f if line.strip()]
  with open(layout.split_path(suite_dir, target, 'train')) as f:
    problems = [line for line in f if line.strip()]
  if len(sft_rows) != len(problems):
    raise ValueError(
      f'{layout.sft_path(suite_dir, target)} has {len(sft_rows)} rows but '
      f'{layout.split_path(suite_dir, target, "train")} {len(problems)}: the suite pairs them 1:1'
    )
  if not 0 < size < len(problems):
    raise ValueError(
      f'config.sweep.validation_size={size} must be in [1, {len(problems) - 1}] '
      f'(the target has {len(problems)} training problems)'
    )
  for row, problem in zip(sft_rows[-size:], problems[-size:]):
    if json.loads(problem)['question'] not in json.loads(row)['prompt']:
      raise ValueError(f'{layout.sft_path(suite_dir, target)}: rows are not in problem order')
  files.write_text(sft_out, ''.join(sft_rows[:-size]))
  files.write_text(val_out, ''.join(problems[-size:]))
  return sft_out, val_out


def sweep_enabled(config: ml_collections.ConfigDict) -> bool:
  sweep = config.get('sweep')
  return bool(sweep) and bool(sweep.get('enabled', False)) and len(sweep.factors) > 0


def resolve_study(
  config: ml_collections.ConfigDict, workdir: str, *, write: bool = True
) -> StudyPlan:
  """Paths, task specs and data splits of a study from its config (see the module docstring)."""
  base_dir = str(hub.resolve_path(config.base)) if config.base else ''
  if not base_dir:
    raise ValueError('config.base is empty; give a model directory, GGUF file or bundled:NAME')
  if not os.path.exists(base_dir):
    raise FileNotFoundError(f'config.base={config.base!r}: {base_dir} does not exist')
  notes: list[str] = []
  identity = {'base': path_identity(base_dir)}
  limits, max_new = config.eval.get('limits'), config.eval.get('max_new_tokens')
  path_limits = config.paths.get('limits')
  suite_dir, validation, general_validation = None, [], []
  if config.world == 'bundled':
    suite_dir, identity['suite'] = _bundled_suite(config, workdir, base_dir, write)
    specs = layout.eval_task_specs(suite_dir, limits, max_new)
    path_specs = layout.eval_task_specs(suite_dir, path_limits, max_new)
    target_train = layout.sft_path(suite_dir, config.target)
    if sweep_enabled(config):
      target_train, val_path = _split_target(
        suite_dir, workdir, config.target, int(config.sweep.validation_size), write
      )
      spec = next(s for s in specs if s['name'] == config.target)
      validation = [{k: v for k, v in dict(spec, path=val_path).items() if k != 'limit'}]
      general_validation = [
        _with_limits(
          {k: v for k, v in s.items() if k != 'limit'},
          config.sweep.get('general_limits') or {},
          max_new,
        )
        for s in layout.eval_task_specs(suite_dir, None, max_new, split='train')
        if s['kind'] == axes.GENERAL_KIND
        and s['name'] in (config.sweep.get('general_limits') or {})
      ]
  elif config.world == 'custom':
    if config.get('tasks_file'):
      raw = _read_tasks_file(config.tasks_file)
      notes.append(f'tasks from {config.tasks_file} ({len(raw)})')
    elif config.get('tasks'):
      raw = [dict(t) for t in config.tasks]
    else:
      raise ValueError(
        'config.world=custom needs its tasks: --config.tasks_file=tasks.json (a JSON list of '
        'task specs, see peft_jax.evals.load_task) or config.tasks in Python'
      )
    specs = [_with_limits(s, limits, max_new) for s in raw]
    # The α-grid's limits (config.paths.limits) take precedence over the evaluation's.
    path_specs = [_with_limits(s, path_limits, None) for s in raw]
    path_specs = [_with_limits(p, limits, max_new) for p in path_specs]
    if not config.target_train_path:
      raise ValueError('config.world=custom needs config.target_train_path (the SFT JSONL)')
    if not os.path.exists(config.target_train_path):
      raise FileNotFoundError(f'config.target_train_path={config.target_train_path!r} is missing')
    target_train = os.path.abspath(config.target_train_path)
    target_spec = next((s for s in specs if (s.get('name') or s['type']) == config.target), None)
    if sweep_enabled(config):
      if config.get('validation_path') and target_spec is not None:
        validation = [
          {k: v for k, v in dict(target_spec, path=config.validation_path).items() if k != 'limit'}
        ]
      else:
        notes.append(
          'learning-rate sweep off: a custom world needs config.validation_path (a file of '
          'the target task, disjoint from its test file); the configured rates are used'
        )
  else:
    raise ValueError(
      f"config.world={config.world!r}; valid: 'bundled', 'custom', 'real' (arena.real_world)"
    )
  names = [s.get('name') or s['type'] for s in specs]
  if config.target not in names:
    raise ValueError(f'config.target={config.target!r} is not an evaluated task; tasks: {names}')
  if config.world == 'custom':
    for spec in specs + validation:
      if os.path.exists(spec['path']):
        identity[f'task:{spec.get("name") or spec["type"]}:{spec["path"]}'] = path_identity(
          spec['path']
        )
    identity['target_train'] = path_identity(target_train)
  return StudyPlan(
    base_dir=base_dir,
    suite_dir=suite_dir,
    task_specs=specs,
    path_specs=path_specs,
    validation_specs=validation + general_validation,
    target_train_path=target_train,
    notes=notes,
    identity=identity,
  )


def build_context(
  config: ml_collections.ConfigDict, workdir: str, plan: Optional[StudyPlan] = None
) -> ArenaContext:
  """Loads the base and the tasks, and draws the probe prompts (seeded)."""
  plan = plan or resolve_study(config, workdir)
  model, params, tokenizer = hub.load_pretrained(plan.base_dir)
  if tokenizer is None:
    raise FileNotFoundError(
      f'{plan.base_dir} has no tokenizer files (tokenizer.json, tokenizer_config.json); '
      'the arena generates text and needs one'
    )
  tasks = [tasks_lib.load_task(spec) for spec in plan.task_specs]
  path_tasks = [tasks_lib.load_task(spec) for spec in plan.path_specs]
  validation_tasks = [tasks_lib.load_task(spec) for spec in plan.validation_specs]
  n = int(config.geometry.num_prompts)
  general_prompts = [e.prompt for t in tasks if t.kind == axes.GENERAL_KIND for e in t.examples]
  target_prompts = [e.prompt for t in tasks if t.name == config.target for e in t.examples]
  rng = np.random.default_rng(config.seed)
  general_prompts = [
    general_prompts[i]
    for i in sorted(rng.choice(len(general_prompts), min(n, len(general_prompts)), replace=False))
  ]
  target_prompts = target_prompts[:n]
  return ArenaContext(
    config=config,
    workdir=workdir,
    base_dir=plan.base_dir,
    suite_dir=plan.suite_dir,
    model=model,
    base_params=params,
    tokenizer=tokenizer,
    tasks=tasks,
    path_tasks=path_tasks,
    target_train_path=plan.target_train_path,
    general_prompts=general_prompts,
    target_prompts=target_prompts,
    validation_tasks=validation_tasks,
    plan=plan,
  )
