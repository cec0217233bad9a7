"""The arena's stages: each a function of the study context (and a trained tree) returning a
JSON-serialisable result; ``peft_jax.arena.pipeline`` runs them through the resumable
``StageRunner``. Behaviour that differs between methods comes from the method objects
(``exact_merge``, ``path_kind``, ``has_gates``, ``scale_update``, ``expected_delta``), never from
their names, so a registered method runs through every stage unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters import api as adapters
from peft_jax.arena.context import ArenaContext
from peft_jax.common import files, trees
from peft_jax.evals import axes, drift
from peft_jax.evals.generation import Generator, prompt_activations
from peft_jax.evals.loglik import LoglikScorer
from peft_jax.geometry import paths as paths_lib
from peft_jax.geometry import programs
from peft_jax.models.capture import masked_tokens
from peft_jax.train import checkpoint as ckpt_lib
from peft_jax.train import metrics as metrics_lib

PyTree = Any


def _loglik_fn(ctx: ArenaContext, params: PyTree, index: int = 0, *, stacked: bool = False):
  """The perplexity tasks' ``loglik_fn`` of ``params`` (grid point ``index`` of a stack)."""
  return LoglikScorer(ctx.model, params, ctx.tokenizer, stacked=stacked).fn(index)


def stage_base_eval(ctx: ArenaContext, out_dir: str) -> dict:
  generator = Generator(ctx.model, ctx.base_params, ctx.tokenizer)
  return axes.evaluate_scores(
    generator.fn(),
    ctx.tasks,
    ctx.config.eval.batch_size,
    out_dir,
    loglik_fn=_loglik_fn(ctx, ctx.base_params),
  )


def train_step_memory_mb(result) -> float:
  """Device memory of the compiled train step (arguments + outputs + temporaries − aliased), MB.

  This is XLA's own accounting of the step program (``memory_analysis``), the same on CPU and
  accelerators, rather than a noisy process RSS.
  """
  stats = result.lower_step().compile().memory_analysis()
  if stats is None:
    return float('nan')
  total = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )
  return total / 2**20


ATTEMPTS_FILE = 'attempts.json'


def timed_attempt(run_dir: str, fn):
  """Runs ``fn()`` and records its wall time in ``<run_dir>/attempts.json``, across resumes.

  Each call appends an attempt ``{'start', 'end'}`` (Unix seconds). An attempt a kill left without
  ``end`` is closed, on the next call, at the last write of ``metrics.jsonl`` (the last step it
  logged) and marked ``estimated``. Returns ``(fn's result, total seconds of every attempt)``.
  """
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, ATTEMPTS_FILE)
  attempts = []
  if os.path.exists(path):
    with open(path) as f:
      attempts = json.load(f)
  metrics_path = os.path.join(run_dir, 'metrics.jsonl')
  for attempt in attempts:
    if attempt.get('end') is None:
      last = os.path.getmtime(metrics_path) if os.path.exists(metrics_path) else attempt['start']
      attempt.update(end=max(attempt['start'], last), estimated=True)
  attempts.append({'start': time.time(), 'end': None})
  files.write_json(path, attempts)
  try:
    result = fn()
  finally:
    attempts[-1]['end'] = time.time()
    files.write_json(path, attempts)
  return result, sum(a['end'] - a['start'] for a in attempts)


def copy_run(source: str, run_dir: str) -> None:
  """Copies a training run folder (checkpoints, metrics, attempts, snapshots) to ``run_dir``
  to continue it there; nothing when ``run_dir`` already holds one (a resumed continuation).
  The copy is made in a sibling folder renamed into place, so ``run_dir`` is whole or absent."""
  if os.path.isdir(os.path.join(run_dir, 'checkpoints')):
    return
  if not os.path.isdir(os.path.join(source, 'checkpoints')):
    raise FileNotFoundError(f'{source} holds no checkpoints to continue')
  tmp = f'{run_dir}.copy-tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(source, tmp, ignore=shutil.ignore_patterns('.lock'))
  shutil.rmtree(run_dir, ignore_errors=True)
  os.replace(tmp, run_dir)


def stage_train(method: str, train_fn, run_dir: str, *, timed: bool = True) -> dict:
  """Trains (resumably) with ``train_fn(run_dir) -> TrainResult``; counts, losses, memory.

  ``train_time_s`` sums the wall time of every attempt (a resumed run counts each), see
  :func:`timed_attempt`; ``attempts`` says how many there were. ``timed=False``: the run is
  already finished (the caller knows its time).
  """
  if timed:
    result, seconds = timed_attempt(run_dir, lambda: train_fn(run_dir))
    with open(os.path.join(run_dir, ATTEMPTS_FILE)) as f:
      attempts = len(json.load(f))
  else:
    result, seconds, attempts = train_fn(run_dir), float('nan'), 0
  counts = adapters.count_params(jax.device_get(result.tree))
  history = metrics_lib.read_metrics(run_dir)
  return {
    'method': method,
    'train_time_s': seconds,
    'attempts': attempts,
    'run_dir': run_dir,
    'num_compiles': result.num_compiles,
    'trainable_params': int(counts['trainable']),
    'total_params': int(counts['total']),
    'peak_memory_mb': train_step_memory_mb(result),
    'train_loss': [float(m['loss']) for m in history],
    'final_loss': float(history[-1]['loss']) if history else float('nan'),
  }


def evaluated_params(tree: PyTree) -> PyTree:
  """What generation runs: the merged weights, or the tree itself when a method's update is
  input dependent (no exact merge)."""
  merged = adapters.merge_exact(tree)
  return tree if merged is None else merged


def stage_eval(ctx: ArenaContext, tree: PyTree, out_dir: str) -> dict:
  params = evaluated_params(tree)
  generator = Generator(ctx.model, params, ctx.tokenizer)
  return axes.evaluate_scores(
    generator.fn(),
    ctx.tasks,
    ctx.config.eval.batch_size,
    out_dir,
    loglik_fn=_loglik_fn(ctx, params),
  )


def adapted_modules(tree: PyTree) -> list[str]:
  """Paths (without ``/kernel``) of the adapted 2-D kernels inside the decoder layers."""
  return [
    p[: -len('/kernel')]
    for p, node in adapters.adapted_nodes(tree).items()
    if p.endswith('/kernel') and p.startswith('layers_') and node.base.ndim == 2
  ]


def stage_geometry(ctx: ArenaContext, tree: PyTree, out_dir: str) -> dict:
  """Spectra + CSD for every adapted kernel, activation metrics per layer."""
  cfg = ctx.config.geometry
  modules = adapted_modules(tree)
  merged = adapters.merge_exact(tree)
  base = ctx.base_params
  gen_caps, gen_mask = prompt_activations(
    ctx.model, base, ctx.tokenizer, ctx.general_prompts, ['residual'] + modules
  )
  tgt_caps, tgt_mask = prompt_activations(
    ctx.model, base, ctx.tokenizer, ctx.target_prompts, modules
  )
  weight_metrics, csd_metrics = programs.weight_programs()
  spectral, csd_rows, arrays = {}, [], {}
  for m in modules:
    node = trees.get_path(tree, m)['kernel']
    w0 = jnp.asarray(trees.get_path(base, m)['kernel'])
    if merged is None:
      # An input-dependent ΔW: its spectra use the expected update over general inputs.
      xs = jnp.asarray(masked_tokens(gen_caps[f'{m}/in'], gen_mask))
      w1 = jnp.asarray(node.base + node.method.expected_delta(node, xs))
    else:
      w1 = jnp.asarray(trees.get_path(merged, m)['kernel'])
    summary, retention, energy = weight_metrics(w0, w1)
    spectral[m] = {k: float(v) for k, v in summary._asdict().items() if np.ndim(v) == 0}
    arrays[f'retention/{m}'] = np.asarray(retention)
    arrays[f'energy/{m}'] = np.asarray(energy)
    comparison = csd_metrics(
      jnp.asarray(gen_caps[f'{m}/in']),
      jnp.asarray(tgt_caps[f'{m}/in']),
      w0,
      w1,
      jnp.asarray(gen_mask),
      jnp.asarray(tgt_mask),
    )
    csd_rows.append({'module': m, **programs.flatten_named(comparison)})
  # Activation geometry on the residual stream, base vs fine-tuned on general prompts: all layers
  # in one vmapped program.
  ft_caps, _ = prompt_activations(
    ctx.model, evaluated_params(tree), ctx.tokenizer, ctx.general_prompts, ['residual']
  )
  layers = list(range(ctx.model.config.num_layers))
  x0 = jnp.stack([gen_caps[f'layers_{i}/residual'] for i in layers])
  x1 = jnp.stack([ft_caps[f'layers_{i}/residual'] for i in layers])
  per_layer = programs.activation_program(int(cfg.gram_max_tokens))(
    x0, x1, jnp.asarray(gen_mask), jax.random.key(ctx.config.seed)
  )
  per_layer = {k: np.asarray(v).tolist() for k, v in per_layer.items()}
  np.savez(f'{out_dir}/profiles.npz', **arrays)
  chosen = cfg.module if cfg.module in modules else modules[0]
  return {
    'modules': modules,
    'spectral': spectral,
    'chosen_module': chosen,
    'retention': arrays[f'retention/{chosen}'].tolist(),
    'energy': arrays[f'energy/{chosen}'].tolist(),
    'activation': {
      'layers': layers,
      'cka': per_layer['cka'],
      'procrustes': per_layer['procrustes'],
      'gram': per_layer['gram'],
      'raw_residual': per_layer['raw'],
    },
    'csd': csd_rows,
    'delta_kind': 'expected_over_general_inputs' if merged is None else 'merged',
  }


def path_kind(tree: PyTree) -> str:
  kinds = {m.path_kind for m in adapters.methods_of(tree)}
  if len(kinds) != 1:
    raise ValueError(f'the arena studies one method per tree; path kinds {sorted(kinds)}')
  return kinds.pop()


def stage_paths(ctx: ArenaContext, tree: PyTree, out_dir: str) -> dict:
  """Interpolation and the method's own rewinding path, each α-grid one vmapped program."""
  del out_dir
  alphas = np.asarray(ctx.config.paths.alphas, np.float32)
  results = {'alpha': alphas.tolist()}
  kind = path_kind(tree)
  merged = adapters.merge_exact(tree)
  if merged is not None:
    interp = paths_lib.alpha_grid_params(ctx.base_params, merged, jnp.asarray(alphas))
    # OFT: PEFT-Arena scales the Cayley generator as sqrt(α) Q (docs/METRICS.md, "Paths").
    schedule = (
      jnp.sqrt if kind == 'cayley' and ctx.config.paths.oft_generator_schedule == 'sqrt' else None
    )
    rewind = paths_lib.method_path_grid(tree, jnp.asarray(alphas), adapters.path, schedule=schedule)
  else:  # no exact merge: both paths scale the (gated) update, the only exact path there is
    interp = jax.tree.map(
      lambda *xs: jnp.stack(xs), *[adapters.scale_updates(tree, float(a)) for a in alphas]
    )
    rewind = None
  for name, stacked in (('interpolation', interp), ('rewind', rewind)):
    if stacked is None or (name == 'rewind' and programs.same_stack(stacked, interp)):
      # The method's own path is linear interpolation itself (additive methods: W0 + αΔW).
      results[name] = dict(results['interpolation'], kind=kind, same_as_interpolation=True)
      continue
    generator = Generator(ctx.model, stacked, ctx.tokenizer, stacked=True)
    scorer = LoglikScorer(ctx.model, stacked, ctx.tokenizer, stacked=True)  # one vmapped program
    curve = {'target': [], 'general': [], 'tasks': [], 'per_example': []}
    for i in range(len(alphas)):
      scores = axes.evaluate_scores(
        generator.fn(i), ctx.path_tasks, ctx.config.eval.batch_size, loglik_fn=scorer.fn(i)
      )
      curve['target'].append(scores['tasks'][ctx.config.target])
      curve['general'].append(scores[axes.GENERAL_KIND])
      curve['tasks'].append(scores['tasks'])
      curve['per_example'].append(scores['per_example'])  # paired intervals along α (claims)
    curve['kind'] = kind if name == 'rewind' else 'linear'
    best = paths_lib.best_tradeoff(
      jnp.asarray(alphas),
      jnp.asarray(curve['target']),
      jnp.asarray(curve['general']),
      ctx.config.paths.tradeoff_weight,
    )
    curve['best'] = {
      'alpha': float(best[0]),
      'index': int(best[1]),
      'score': float(best[2]),
      'weight': float(ctx.config.paths.tradeoff_weight),
    }
    results[name] = curve
  return results


def stage_gates(ctx: ArenaContext, tree: PyTree, out_dir: str) -> dict:
  """Mean gate value per adapted module and rank component, general vs target prompts
  (methods with ``has_gates``)."""
  del out_dir
  modules = adapted_modules(tree)
  out = {'layers': modules, 'general': [], 'target': []}
  for kind, prompts in (('general', ctx.general_prompts), ('target', ctx.target_prompts)):
    caps, mask = prompt_activations(ctx.model, tree, ctx.tokenizer, prompts, modules)
    for m in modules:
      node = trees.get_path(tree, m)['kernel']
      xs = jnp.asarray(masked_tokens(caps[f'{m}/in'], mask))
      out[kind].append(np.asarray(node.method.gate_values(node, xs)).mean(axis=0).tolist())
  return out


def stage_drift(
  ctx: ArenaContext,
  base_scores: Mapping[str, float],
  method_scores: Mapping[str, Mapping[str, float]],
  out_dir: str,
) -> dict:
  adapters_scores = [
    drift.AdapterScores(
      name=m,
      label=ctx.config.target,
      nominal_task=ctx.config.target,
      scores=s,
      config_id=f'seed{ctx.config.seed}',
    )
    for m, s in method_scores.items()
  ]
  report = drift.drift_report(base_scores, adapters_scores)
  drift.write_drift_outputs(report, out_dir)
  return report


def sweep_run_dir(out_dir: str, lr_index: int, seed: int) -> str:
  return os.path.join(out_dir, f'lr{lr_index}_seed{seed}', 'run')


def choose_learning_rate(
  lrs: Sequence[float], target: np.ndarray, general: np.ndarray, centre: int
) -> int:
  """Index of the kept rate: the best mean validation target score; ties go to the better mean
  validation general score (when measured), then to the rate nearest the centre."""
  target = np.asarray(target, np.float64).mean(axis=-1)
  general = np.asarray(general, np.float64).mean(axis=-1)
  general = np.where(np.isnan(general), 0.0, general)
  order = sorted(
    range(len(lrs)), key=lambda i: (-round(target[i], 12), -round(general[i], 12), abs(i - centre))
  )
  return order[0]


def stage_sweep(
  ctx: ArenaContext,
  method: str,
  lrs: Sequence[float],
  seeds: Sequence[int],
  train_fn: Callable[[float, int, str], Any],
  out_dir: str,
  *,
  steps: int,
  centre: int,
) -> dict:
  """Trains ``method`` at every rate (and seed) and scores each on the validation split.

  Every run resumes by itself and each candidate's scores are kept in its folder
  (``validation.json``), so a killed sweep continues where it stopped. The result holds the grid
  (``target`` / ``general``: the mean over seeds per rate; ``*_by_seed``: ``[seed][lr]``), the kept
  rate and the rule that kept it.
  """
  if not ctx.validation_tasks:
    raise ValueError('the learning-rate sweep needs a validation split of the target')
  target = np.full((len(lrs), len(seeds)), np.nan)
  general = np.full((len(lrs), len(seeds)), np.nan)
  rows = []
  for i, lr in enumerate(lrs):
    for j, seed in enumerate(seeds):
      run_dir = sweep_run_dir(out_dir, i, seed)
      scores_path = os.path.join(os.path.dirname(run_dir), 'validation.json')
      if os.path.exists(scores_path):
        with open(scores_path) as f:
          row = json.load(f)
      else:
        result, seconds = timed_attempt(run_dir, lambda: train_fn(lr, seed, run_dir))
        tree = jax.device_get(result.tree)
        params = evaluated_params(tree)
        generator = Generator(ctx.model, params, ctx.tokenizer)
        scores = axes.evaluate_scores(
          generator.fn(),
          ctx.validation_tasks,
          ctx.config.eval.batch_size,
          loglik_fn=_loglik_fn(ctx, params),
        )
        history = metrics_lib.read_metrics(run_dir)
        row = {
          'lr': float(lr),
          'seed': int(seed),
          'scores': scores,
          'train_time_s': seconds,
          'num_compiles': int(result.num_compiles),
          'final_loss': float(history[-1]['loss']) if history else float('nan'),
        }
        files.write_json(scores_path, row)
      target[i, j] = row['scores'][axes.TARGET_KIND]
      general[i, j] = row['scores'][axes.GENERAL_KIND]
      rows.append(row)
  chosen = choose_learning_rate(lrs, target, general, centre)
  return {
    'method': method,
    'lr': [float(x) for x in lrs],
    'seeds': [int(s) for s in seeds],
    'target': target.mean(axis=1).tolist(),
    'general': general.mean(axis=1).tolist(),
    'target_by_seed': target.T.tolist(),  # [seed][lr]
    'general_by_seed': general.T.tolist(),
    'chosen_index': int(chosen),
    'chosen_lr': float(lrs[chosen]),
    'split': 'validation',
    'validation_tasks': {t.name: len(t.examples) for t in ctx.validation_tasks},
    'steps': int(steps),
    'rule': 'best mean validation target; ties: better validation general, then nearer the centre',
    'runs': rows,
    'train_time_s': float(sum(r['train_time_s'] for r in rows)),
  }


def stage_trajectory(ctx: ArenaContext, train_result, run_dir: str, out_dir: str) -> dict:
  """Along the run's saved snapshots: relative distance from the base, mean residual CKA to the
  base, and Target / General on the α-grid's task subsets."""
  del out_dir
  snapshots_dir = os.path.join(run_dir, 'trajectory')
  if not os.path.isdir(snapshots_dir):
    raise FileNotFoundError(
      f'{snapshots_dir} holds no snapshots; set config.train.checkpoint.snapshot_every'
    )
  snapshots = ckpt_lib.load_trajectory(snapshots_dir, train_result.state.params)
  steps = sorted(snapshots)
  out = {'step': steps, 'distance': [], 'cka': [], 'target': [], 'general': []}
  caps0, mask = prompt_activations(
    ctx.model, ctx.base_params, ctx.tokenizer, ctx.general_prompts, ['residual']
  )
  layers = range(ctx.model.config.num_layers)
  x0 = jnp.stack([caps0[f'layers_{i}/residual'] for i in layers])
  program = programs.activation_program(int(ctx.config.geometry.gram_max_tokens))
  base_norm = float(np.sqrt(sum(float(jnp.vdot(x, x)) for x in jax.tree.leaves(ctx.base_params))))
  for step in steps:
    tree = jax.device_get(adapters.combine(snapshots[step], train_result.frozen))
    params = evaluated_params(tree)
    merged = adapters.merge_exact(tree)
    if merged is not None:
      diff = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.float32) - b, merged, ctx.base_params)
      norm = np.sqrt(sum(float(jnp.vdot(d, d)) for d in jax.tree.leaves(diff)))
      out['distance'].append(norm / base_norm)
    else:  # an input-dependent update has no single weight to measure
      out['distance'].append(float('nan'))
    caps1, _ = prompt_activations(
      ctx.model, params, ctx.tokenizer, ctx.general_prompts, ['residual']
    )
    x1 = jnp.stack([caps1[f'layers_{i}/residual'] for i in layers])
    metrics = program(x0, x1, jnp.asarray(mask), jax.random.key(ctx.config.seed))
    out['cka'].append(float(np.mean(np.asarray(metrics['cka']))))
    generator = Generator(ctx.model, params, ctx.tokenizer)
    scores = axes.evaluate_scores(
      generator.fn(), ctx.path_tasks, ctx.config.eval.batch_size, loglik_fn=_loglik_fn(ctx, params)
    )
    out['target'].append(scores['tasks'][ctx.config.target])
    out['general'].append(scores[axes.GENERAL_KIND])
  out['distance_kind'] = 'relative Frobenius distance of all parameters from the base'
  return out
