"""The PEFT-Arena study end to end: fine-tune with every method, evaluate, analyse, report.

``run_arena(config, workdir)`` runs these stages (``peft_jax.arena.stages.StageRunner``: each
writes its own folder atomically and is skipped when rerun; the stage functions are in
``peft_jax.arena.study``):

``base_eval``          the base model on every target and general task
``train_<m>``          fine-tune the base on the target's SFT split with method m (resumable)
``eval_<m>``           the fine-tuned model on every task (merged, or unmerged without an exact merge)
``geometry_<m>``       weight spectra and CSD of every adapted kernel; activation CKA /
                       Procrustes / Gram per layer
``paths_<m>``          interpolation θ0 + α(θ1 − θ0) and the method's own rewinding path on an
                       α-grid, each grid generated as one batched (vmapped) program
``gates_<m>``          gate activations per module and rank component (methods with gates)
``drift``              the capability-drift matrix over all trained adapters
``report``             ``<workdir>/report/index.html`` + ``index.md`` + PNGs

Every number in the report is read from these stage outputs.
"""

from __future__ import annotations

import os
import shutil
import time

import jax
import ml_collections
from tqdm import tqdm

from peft_jax import report as report_lib
from peft_jax.adapters import api as adapters
from peft_jax.arena import stages as stages_lib
from peft_jax.arena import study
from peft_jax.arena.context import ArenaContext, build_context
from peft_jax.common import files
from peft_jax.report import results as results_lib
from peft_jax.train import config as train_config_lib
from peft_jax.train import trainer


def method_train_config(
  config: ml_collections.ConfigDict, method: str, base_dir: str, data_path: str
) -> ml_collections.ConfigDict:
  """The train config of one method: ``train.default_config()``, then the arena's shared
  ``config.train`` overrides, then ``config.methods[method]``'s, then what the study fixes."""
  defaults = train_config_lib.default_config()
  defaults.adapter.kwargs = {}  # the defaults' LoRA kwargs are no method's: methods give their own
  train = train_config_lib.with_overrides(defaults, config.train, where='config.train')
  train = train_config_lib.with_overrides(
    train, config.methods.get(method, {}), where=f'config.methods.{method}'
  )
  train.seed = config.seed
  train.model.path = str(base_dir)
  train.adapter.method = method
  train.data.update(
    dict(path=data_path, split='train', tokenizer='model', packing=True, shuffle=True)
  )
  train.progress_bar = bool(config.progress_bar)
  train.mesh_shape = tuple(config.mesh_shape)
  return train


def run_arena(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole study in ``workdir``; returns the report's results dict."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  started = time.perf_counter()
  ctx = build_context(config, workdir)
  methods = list(config.method_order)
  gated = [m for m in methods if adapters.METHODS[m].has_gates]
  progress = tqdm(
    total=1 + 4 * len(methods) + len(gated) + 2, desc='arena', disable=not config.progress_bar
  )
  runner = stages_lib.StageRunner(workdir, progress)

  base = runner.run('base_eval', lambda d: study.stage_base_eval(ctx, d))
  per_method, gates = {}, None
  for method in methods:
    per_method[method], method_gates = _method_stages(ctx, runner, method)
    if gates is None and method_gates is not None:
      gates = dict(method_gates, method=method)
  drift_result = runner.run(
    'drift',
    lambda d: study.stage_drift(
      ctx, base['tasks'], {m: r['eval']['tasks'] for m, r in per_method.items()}, d
    ),
  )
  results = results_lib.assemble_results(
    title=config.title,
    target=config.target,
    tasks=ctx.tasks,
    base=base,
    per_method=per_method,
    drift_result=drift_result,
    gates=gates,
    config=config.to_dict(),
    timing={'total_s': time.perf_counter() - started, 'stages': dict(runner.timings)},
  )

  # The report is cheap and reflects every stage: rebuild it on every run.
  shutil.rmtree(runner.path('report'), ignore_errors=True)
  runner.run(
    'report',
    lambda d: {
      'paths': {
        k: str(v)
        for k, v in dict(report_lib.write_report(results, os.path.join(workdir, 'report'))).items()
      }
    },
  )
  progress.close()
  files.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def _method_stages(ctx: ArenaContext, runner: stages_lib.StageRunner, method: str):
  """``train/eval/geometry/paths`` (and ``gates``) of one method: ``(results, gates or None)``."""

  def train_fn(run_dir):
    return trainer.train(
      method_train_config(ctx.config, method, ctx.base_dir, ctx.target_train_path), run_dir
    )

  run_dir = os.path.join(runner.path(f'train_{method}'), 'run')
  train = runner.run(
    f'train_{method}', lambda d: study.stage_train(method, train_fn, run_dir), in_place=True
  )
  cache = {}

  def tree():  # restore the finished run only when a later stage needs it
    if 'tree' not in cache:
      cache['tree'] = jax.device_get(train_fn(run_dir).tree)
    return cache['tree']

  out = {
    'train': train,
    'eval': runner.run(f'eval_{method}', lambda d: study.stage_eval(ctx, tree(), d)),
    'geometry': runner.run(f'geometry_{method}', lambda d: study.stage_geometry(ctx, tree(), d)),
    'paths': runner.run(f'paths_{method}', lambda d: study.stage_paths(ctx, tree(), d)),
  }
  gates = None
  if adapters.METHODS[method].has_gates:
    gates = runner.run(f'gates_{method}', lambda d: study.stage_gates(ctx, tree(), d))
  return out, gates
