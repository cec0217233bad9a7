"""Geometry of one finished training run: ``python -m launch.analyze --workdir=RUN``.

Reads a ``launch.train`` run directory (its ``config.json``, final checkpoint and, when training
kept them, trajectory snapshots) and writes ``RUN/analysis/analysis.json`` plus
``RUN/analysis/arrays.npz``:

* weights: spectral summary of every adapted kernel, retention and update-energy profiles;
* activations: CKA / Procrustes / raw residual / Gram distortion per layer on general prompts;
  CSD of every adapted kernel on general vs target prompts (the run's own training prompts are
  the target distribution);
* paths (when ``config.tasks`` is set): interpolation and the method's own path on an α-grid,
  each grid one vmapped program;
* trajectory (when snapshots exist): distance from base, CKA to base per layer and the chosen
  kernel's spectral summary at every snapshot step.

The metric code is the arena's (``peft_jax.arena.study``), so a run analysed here and the
same method in the arena report the same numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from peft_jax import geometry, hub
from peft_jax.adapters import api as adapters_api
from peft_jax.arena import study
from peft_jax.arena.context import ArenaContext
from peft_jax.common import files, trees
from peft_jax.data import sft
from peft_jax.evals import tasks as tasks_lib
from peft_jax.evals.generation import prompt_activations
from peft_jax.geometry import programs
from peft_jax.train import checkpoint as ckpt_lib
from peft_jax.train import trainer


def sft_prompts(path: str, limit: int) -> list[str]:
  """Prompt texts of the first ``limit`` rows of an SFT file ({prompt} or {messages})."""
  rows = sft.load_rows(path)
  out = []
  for row in rows[:limit]:
    if row.get('prompt') is not None:
      out.append(str(row['prompt']))
    elif row.get('messages'):
      out.append(str(next(m['content'] for m in row['messages'] if m['role'] == 'user')))
  if not out:
    raise ValueError(f'{path} holds no prompts (rows need "prompt" or user "messages")')
  return out


def load_run(run_dir: str):
  """``(train_config, TrainResult, base_params)`` of a finished run (restored, not retrained)."""
  config_path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{run_dir} holds no config.json: not a launch.train run directory')
  with open(config_path) as f:
    train_config = ml_collections.ConfigDict(json.load(f))
  latest = trainer.ckpt_lib.StateCheckpointer(os.path.join(run_dir, 'checkpoints')).latest_step()
  if latest != train_config.total_steps:
    raise ValueError(
      f'{run_dir}: latest checkpoint is step {latest}, the run has '
      f'{train_config.total_steps} steps; finish it (rerun launch.train) first'
    )
  result = trainer.train(train_config, run_dir)  # restores the final step; runs no step
  _, base_params, _, _ = trainer.build_model(train_config)
  return train_config, result, base_params


def analyze_run(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Writes ``<run_dir>/analysis/{analysis.json, arrays.npz}``; returns the JSON dict."""
  run_dir = os.path.abspath(run_dir)
  train_config, result, base_params = load_run(run_dir)
  method = train_config.adapter.method
  tree = jax.device_get(result.tree)
  if not train_config.model.path:
    raise ValueError(
      'analysis needs a tokenizer: the run must start from an HF directory (config.model.path)'
    )
  tokenizer = hub.load_tokenizer(train_config.model.path)
  general_path = config.general_data or train_config.data.path
  target_path = config.target_data or train_config.data.path
  tasks = [tasks_lib.load_task(dict(t)) for t in config.tasks]
  target_name = config.target or (next((t.name for t in tasks if t.kind == 'target'), ''))
  ctx = ArenaContext(
    config=config,
    workdir=run_dir,
    base_dir=train_config.model.path,
    suite_dir=None,
    model=result.model,
    base_params=base_params,
    tokenizer=tokenizer,
    tasks=tasks,
    path_tasks=tasks,
    target_train_path=train_config.data.path,
    general_prompts=sft_prompts(general_path, int(config.geometry.num_prompts)),
    target_prompts=sft_prompts(target_path, int(config.geometry.num_prompts)),
  )
  out_dir = os.path.join(run_dir, 'analysis')
  tmp = files.temporary_directory_for(out_dir)
  analysis: dict[str, Any] = {
    'run': run_dir,
    'method': method,
    'geometry': study.stage_geometry(ctx, tree, tmp),
  }
  arrays = dict(np.load(os.path.join(tmp, 'profiles.npz')))
  if tasks:
    if not target_name:
      raise ValueError('config.tasks has no task of kind "target"; set config.target')
    ctx.config.target = target_name
    analysis['paths'] = study.stage_paths(ctx, tree, tmp)
  snapshots_dir = os.path.join(run_dir, 'trajectory')
  if os.path.isdir(snapshots_dir):
    snapshots = ckpt_lib.load_trajectory(snapshots_dir, result.state.params)
    analysis['trajectory'], trajectory_arrays = trajectory_metrics(
      ctx, result, base_params, snapshots
    )
    arrays.update(trajectory_arrays)
  np.savez(os.path.join(tmp, 'arrays.npz'), **arrays)
  os.remove(os.path.join(tmp, 'profiles.npz'))
  files.write_json(os.path.join(tmp, 'analysis.json'), analysis)
  files.replace_directory(tmp, out_dir)
  return analysis


def trajectory_metrics(ctx, result, base_params, snapshots):
  """Distance from base, per-layer CKA to base and the chosen kernel's spectra at every step."""
  steps = sorted(snapshots)
  trees_at = [jax.device_get(adapters_api.combine(snapshots[s], result.frozen)) for s in steps]
  merged = [adapters_api.merge_exact(t) for t in trees_at]
  exact = all(m is not None for m in merged)
  if not exact:  # an input-dependent update (DISeL's gates) is evaluated unmerged
    merged = trees_at
  out = {'steps': steps}
  if exact:
    distance = geometry.params_distance_trajectory(base_params, geometry.stack_snapshots(merged))
    out.update({k: np.asarray(v).tolist() for k, v in distance.items()})
  names = ['residual']
  caps0, mask = prompt_activations(
    ctx.model, base_params, ctx.tokenizer, ctx.general_prompts, names
  )
  layers = range(ctx.model.config.num_layers)
  cka = []
  for params in merged:
    caps1, _ = prompt_activations(ctx.model, params, ctx.tokenizer, ctx.general_prompts, names)
    x0 = jnp.stack([caps0[f'layers_{i}/residual'] for i in layers])
    x1 = jnp.stack([caps1[f'layers_{i}/residual'] for i in layers])
    metrics = programs.activation_program(int(ctx.config.geometry.gram_max_tokens))(
      x0, x1, jnp.asarray(mask), jax.random.key(ctx.config.seed)
    )
    cka.append(np.asarray(metrics['cka']).tolist())
  out['cka_to_base_per_layer'] = cka
  arrays = {}
  module = ctx.config.geometry.module
  if exact and module:
    kernel = lambda p: trees.get_path(p, module)['kernel']
    w0 = jnp.asarray(kernel(base_params))
    weights = jnp.stack([jnp.asarray(kernel(p)) for p in merged])
    spectra = geometry.weight_trajectory(w0, weights)
    out['module'] = module
    out['spectral'] = {k: np.asarray(v).tolist() for k, v in spectra.items() if np.ndim(v) == 1}
    arrays.update({f'trajectory/{module}/{k}': np.asarray(v) for k, v in spectra.items()})
  return out, arrays
