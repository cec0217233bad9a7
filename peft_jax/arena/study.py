"""The arena's stages: each a function of the study context (and a trained tree) returning a
JSON-serialisable result; ``peft_jax.arena.pipeline`` runs them through the resumable
``StageRunner``. Behaviour that differs between methods comes from the method objects
(``exact_merge``, ``path_kind``, ``has_gates``, ``scale_update``, ``expected_delta``), never from
their names, so a registered method runs through every stage unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters import api as adapters
from peft_jax.arena.context import ArenaContext
from peft_jax.common import trees
from peft_jax.evals import axes, drift
from peft_jax.evals.generation import Generator, prompt_activations
from peft_jax.geometry import paths as paths_lib
from peft_jax.geometry import programs
from peft_jax.models.capture import masked_tokens
from peft_jax.train import metrics as metrics_lib

PyTree = Any


def stage_base_eval(ctx: ArenaContext, out_dir: str) -> dict:
  generator = Generator(ctx.model, ctx.base_params, ctx.tokenizer)
  return axes.evaluate_scores(generator.fn(), ctx.tasks, ctx.config.eval.batch_size, out_dir)


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


def stage_train(method: str, train_fn, run_dir: str) -> dict:
  """Trains (resumably) with ``train_fn(run_dir) -> TrainResult``; counts, losses, memory."""
  start = time.perf_counter()
  result = train_fn(run_dir)
  seconds = time.perf_counter() - start
  counts = adapters.count_params(jax.device_get(result.tree))
  history = metrics_lib.read_metrics(run_dir)
  return {
    'method': method,
    'train_time_s': seconds,
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
  generator = Generator(ctx.model, evaluated_params(tree), ctx.tokenizer)
  return axes.evaluate_scores(generator.fn(), ctx.tasks, ctx.config.eval.batch_size, out_dir)


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
    curve = {'target': [], 'general': [], 'tasks': []}
    for i in range(len(alphas)):
      scores = axes.evaluate_scores(generator.fn(i), ctx.path_tasks, ctx.config.eval.batch_size)
      curve['target'].append(scores['tasks'][ctx.config.target])
      curve['general'].append(scores[axes.GENERAL_KIND])
      curve['tasks'].append(scores['tasks'])
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
