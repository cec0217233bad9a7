"""What every stage of a study reads: the base model, the tasks and the probe prompts."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import ml_collections
import numpy as np

from peft_jax import hub
from peft_jax.arena import world
from peft_jax.data.suite import layout
from peft_jax.evals import axes
from peft_jax.evals import tasks as tasks_lib

PyTree = Any


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


def resolve_world(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, Optional[str]]:
  """(base model dir, suite dir or None) for the configured world."""
  base_dir = str(hub.resolve_path(config.base))
  if config.world == 'bundled':
    meta_path = os.path.join(base_dir, world.SUITE_META)
    if not os.path.exists(meta_path):
      raise FileNotFoundError(
        f'{base_dir} has no {world.SUITE_META} (the seed and sizes of the '
        'suite it was pretrained on); the bundled world needs it'
      )
    with open(meta_path) as f:
      meta = json.load(f)
    suite_dir = os.path.join(workdir, 'suite')
    world.ensure_suite(suite_dir, int(meta['seed']), meta.get('sizes') or {})
    return base_dir, suite_dir
  if config.world == 'custom':
    return base_dir, None
  raise ValueError(f"config.world={config.world!r}; valid: 'bundled', 'custom'")


def build_context(config: ml_collections.ConfigDict, workdir: str) -> ArenaContext:
  """Loads the base and the tasks, and draws the probe prompts (seeded)."""
  base_dir, suite_dir = resolve_world(config, workdir)
  model, params, tokenizer = hub.load_pretrained(base_dir)
  if tokenizer is None:
    raise FileNotFoundError(f'{base_dir} has no tokenizer files; the arena needs one')
  if suite_dir is not None:
    specs = layout.eval_task_specs(suite_dir, config.eval.limits, config.eval.max_new_tokens)
    path_specs = layout.eval_task_specs(suite_dir, config.paths.limits, config.eval.max_new_tokens)
    target_train = layout.sft_path(suite_dir, config.target)
  else:
    specs = [dict(spec) for spec in config.tasks]
    path_specs = [dict(s, limit=config.paths.limit) for s in specs]
    target_train = config.target_train_path
  tasks = [tasks_lib.load_task(spec) for spec in specs]
  path_tasks = [tasks_lib.load_task(spec) for spec in path_specs]
  names = [t.name for t in tasks]
  if config.target not in names:
    raise ValueError(f'config.target={config.target!r} is not an evaluated task; tasks: {names}')
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
    base_dir=base_dir,
    suite_dir=suite_dir,
    model=model,
    base_params=params,
    tokenizer=tokenizer,
    tasks=tasks,
    path_tasks=path_tasks,
    target_train_path=target_train,
    general_prompts=general_prompts,
    target_prompts=target_prompts,
  )
