"""The PEFT-Arena study end to end: fine-tune with every method, evaluate, analyse, report.

``run_arena(config, workdir)`` runs these stages (``peft_jax.arena.stages``: each writes its own
folder atomically and records what it was computed from; the stage functions are in
``peft_jax.arena.study``):

``base_eval``          the base model on every target and general task
``sweep_<m>``          method m at each learning rate of a small grid, scored on the target's
                       validation split (``config.sweep``; the best rate is kept)
``train_<m>``          fine-tune the base on the target's SFT split with method m at the kept rate
                       (resumable; with ``config.sweep.steps == 0`` it is the sweep's kept run)
``eval_<m>``           the fine-tuned model on every task (merged, or unmerged without an exact merge)
``geometry_<m>``       weight spectra and CSD of every adapted kernel; activation CKA /
                       Procrustes / Gram per layer
``paths_<m>``          interpolation θ0 + α(θ1 − θ0) and the method's own rewinding path on an
                       α-grid, each grid generated as one batched (vmapped) program
``trajectory_<m>``     distance, CKA, Target and General along the saved snapshots
                       (``config.trajectory``)
``gates_<m>``          gate activations per module and rank component (methods with gates)
``drift``              the capability-drift matrix over all trained adapters
``*_drift_*``          real world with ``config.drift_study``: labelled adapters trained on
                       their own SFT data at several configurations, evaluated, and their drift
                       matrix (``peft_jax.arena.drift_study``)
``sae``                with ``config.sae.enabled``: the delta-activation SAE study (LoRA at
                       several ranks, SAEs on base and delta activations, comparisons;
                       ``peft_jax.arena.sae_stage``)
``rlvr_<m>``           with ``config.rlvr.enabled``, per method of ``config.rlvr.methods``: GRPO
                       from the base on the target's training prompts, the target's scorer as
                       reward, with held-out pass@k counts early and late
                       (``peft_jax.arena.rlvr_stage``)
``eval_rlvr_<m>``      the RLVR model on every task, as ``eval_<m>``
``passk``              held-out pass@k counts of the base, SFT and RLVR (early, late) models
``report``             ``<workdir>/report/index.html`` + ``index.md`` + PNGs (rebuilt every run)

Every stage declares the config slice it reads and its input stages; a rerun recomputes exactly
the stages whose slice or inputs changed, and everything downstream of them, and prints which and
why (``plan_arena`` / ``launch.arena --dry_run`` print it without running). The workdir's
``config.json`` is versioned: a changed config is kept as ``config.<n>.json`` beside it.
Every number in the report is read from the stage outputs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
from tqdm import tqdm

from peft_jax import hub
from peft_jax import report as report_lib
from peft_jax.adapters import api as adapters
from peft_jax.arena import drift_study, real_world, rlvr_stage, sae_stage, study
from peft_jax.arena import progress as progress_lib
from peft_jax.arena import stages as stages_lib
from peft_jax.arena.context import (
  ArenaContext,
  StudyPlan,
  build_context,
  resolve_study,
  sweep_enabled,
)
from peft_jax.common import compile_cache, files
from peft_jax.data import sft
from peft_jax.evals import tasks as tasks_lib
from peft_jax.report import results as results_lib
from peft_jax.report import rlvr as report_rlvr
from peft_jax.report import sae as report_sae
from peft_jax.train import checkpoint as ckpt_lib
from peft_jax.train import config as train_config_lib
from peft_jax.train import trainer

CONFIG_FILE = 'config.json'


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
  if _wants_trajectory(config, method):
    train.checkpoint.snapshot_every = int(config.trajectory.every)
  return train


def _wants_trajectory(config: ml_collections.ConfigDict, method: str) -> bool:
  traj = config.get('trajectory')
  if not traj or int(traj.get('every', 0)) <= 0:
    return False
  chosen = traj.get('methods')
  return not chosen or method in chosen


def _sweep_methods(config: ml_collections.ConfigDict, plan: StudyPlan) -> list:
  if not sweep_enabled(config) or not plan.validation_specs:
    return []
  chosen = config.sweep.get('methods')
  return [m for m in config.method_order if not chosen or m in chosen]


def sweep_grid(config: ml_collections.ConfigDict, method: str) -> tuple[list, int]:
  """(learning rates, index of the centre) of a method's sweep: the centre (the method's
  configured ``optimizer.peak_lr``) times each of ``config.sweep.factors``."""
  centre_lr = float(method_train_config(config, method, '', '').optimizer.peak_lr)
  factors = [float(f) for f in config.sweep.factors]
  centre = min(range(len(factors)), key=lambda i: abs(math.log(factors[i])))
  return [centre_lr * f for f in factors], centre


def sweep_select_at(config: ml_collections.ConfigDict, total_steps: int) -> int:
  """The step at which sweep candidates are scored, from ``config.sweep.select_fraction``
  (0: off): candidates are trained on the full schedule, stopped and scored after
  ``round(fraction * total_steps)`` steps (at least 1), and the kept one continues to
  ``total_steps`` as the final run."""
  fraction = float(config.sweep.get('select_fraction', 0.0) or 0.0)
  if not fraction:
    return 0
  where = f'config.sweep.select_fraction={fraction}'
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'{where} must be in (0, 1) (0: off)')
  if int(config.sweep.get('steps', 0) or 0):
    raise ValueError(
      f'{where} and config.sweep.steps={config.sweep.steps} exclude each other (candidates as '
      'prefixes of the full run, or separate short runs); set one to 0'
    )
  if total_steps < 2:
    raise ValueError(f'{where} needs config.train.total_steps >= 2, got {total_steps}')
  return min(max(1, round(fraction * total_steps)), total_steps - 1)


def _without_resume_safe(train: ml_collections.ConfigDict) -> dict:
  """A train config as a stage slice: without the keys that do not change the run."""
  flat = dict(train.to_dict())
  for key in ckpt_lib.RESUME_SAFE_KEYS:
    node, parts = flat, key.split('.')
    for part in parts[:-1]:
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(parts[-1], None)
  for key, default in ckpt_lib.SLICE_NEUTRAL_DEFAULTS.items():
    node, parts = flat, key.split('.')
    for part in parts[:-1]:
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict) and parts[-1] in node and node[parts[-1]] == default:
      if type(node[parts[-1]]) is type(default):  # False, not 0; 0, not False
        node.pop(parts[-1])
  return flat


# ---- budgets derived from the data (custom preset) ------------------------------------------

DERIVE = 0  # config.train.total_steps / batch_size = 0: derived from the data
DERIVE_WARMUP = -1  # config.train.optimizer.warmup_steps = -1: derived from the step count


def needs_budget(config: ml_collections.ConfigDict) -> bool:
  train = config.train
  return (
    int(train.get('total_steps', 1)) == DERIVE
    or int(train.get('batch_size', 1)) == DERIVE
    or int(train.get('optimizer', {}).get('warmup_steps', 0)) == DERIVE_WARMUP
  )


def derive_budget(
  config: ml_collections.ConfigDict, num_sequences: int, num_devices: int
) -> tuple[ml_collections.ConfigDict, str]:
  """The arena config with ``config.train``'s derived values filled in, and why.

  ``batch_size = 0``: the largest power of two <= min(``config.budget.max_batch``, sequences),
  rounded down to a multiple of the devices (data parallel); ``total_steps = 0``:
  ``ceil(config.budget.epochs * sequences / batch)``; ``warmup_steps = -1``: a tenth of the steps
  (at most ``config.budget.max_warmup``). ``num_sequences`` is the number of packed training
  sequences of ``config.train.data.seq_len`` tokens.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  budget = config.get('budget') or ml_collections.ConfigDict(
    dict(epochs=3, max_batch=16, max_warmup=10)
  )
  train = config.train
  why = [f'{num_sequences} packed training sequences of {train.data.seq_len} tokens']
  if num_sequences < num_devices:
    raise ValueError(
      f'{num_sequences} packed sequences of {train.data.seq_len} tokens cannot fill one batch '
      f'over {num_devices} devices; lower config.train.data.seq_len or add data'
    )
  if int(train.batch_size) == DERIVE:
    batch = 1 << int(math.log2(max(1, min(int(budget.max_batch), num_sequences))))
    batch = max(num_devices, batch // num_devices * num_devices)
    train.batch_size = batch
    why.append(f'batch {batch} (<= {budget.max_batch}, <= the sequences, x{num_devices} devices)')
  if int(train.batch_size) > num_sequences:
    raise ValueError(
      f'config.train.batch_size={train.batch_size} exceeds the {num_sequences} packed training '
      'sequences; lower it or set 0 to derive it'
    )
  if int(train.total_steps) == DERIVE:
    steps = max(1, math.ceil(float(budget.epochs) * num_sequences / int(train.batch_size)))
    train.total_steps = steps
    why.append(f'{steps} steps ({budget.epochs} epochs)')
  if int(train.optimizer.warmup_steps) == DERIVE_WARMUP:
    warmup = min(int(budget.max_warmup), int(train.total_steps) // 10)
    train.optimizer.warmup_steps = warmup
    why.append(f'warmup {warmup} (a tenth of the steps, <= {budget.max_warmup})')
  every = int(train.get('checkpoint', {}).get('every_steps', 0) or 0)
  if every > int(train.total_steps) or every <= 0:
    train.checkpoint.every_steps = int(train.total_steps)
  return config, 'budget from the data: ' + ', '.join(why)


def count_sequences(data_path: str, tokenizer, seq_len: int) -> int:
  """Packed training sequences of ``seq_len`` tokens in an SFT file (as the trainer packs it)."""
  loaded = sft.read_rows(data_path, 'train')
  arrays = sft.build_sft_arrays(
    loaded.rows, tokenizer, seq_len, packing=True, locations=loaded.locations
  )
  return int(arrays['tokens'].shape[0])


# ---- the stage graph ------------------------------------------------------------------------


class _Graph:
  """The study's stages in order, each a ``StageSpec`` and the function that computes it."""

  def __init__(self):
    self.specs: list[stages_lib.StageSpec] = []
    self.fns: dict[str, Callable[[str], dict]] = {}
    self.trees: dict[str, Callable[[], Any]] = {}  # method -> its (restored) SFT tree
    # method -> its in-memory cache ('result': the TrainResult with state and frozen weights,
    # 'tree': a host copy); at most one method's is filled at a time (``hold``).
    self.resident: dict[str, dict] = {}

  def hold(self, method: str) -> None:
    """Frees every other method's restored run before ``method``'s is loaded. A method's stages
    run one after another, and a later stage that needs an earlier method's tree (pass@k)
    restores it again from its checkpoint: keeping all of them cost 1-3 GB per method on a
    135 M model, and the real preset's process reached the machine's 24 GiB at the eighth."""
    for other, cache in self.resident.items():
      if other != method:
        cache.pop('result', None)
        cache.pop('tree', None)

  def add(self, name, config, inputs=(), fn=None, in_place=False, always=False, holds=None):
    """``holds``: the run (a ``resident`` key; '' = none) whose weights the stage loads or
    trains; every other run's are freed before ``fn`` runs."""
    self.specs.append(stages_lib.StageSpec(name, config, tuple(inputs), in_place, always))
    if holds is not None and fn is not None:
      fn = functools.partial(self._holding, holds, fn)
    self.fns[name] = fn

  def _holding(self, run: str, fn: Callable[[str], dict], work: str) -> dict:
    self.hold(run)
    return fn(work)


def _slices(config: ml_collections.ConfigDict, plan: StudyPlan) -> dict:
  """The config every stage family reads (its fingerprint's config part)."""
  world = {'base': plan.identity, 'world': config.world, 'target': config.target}
  evaluation = {'tasks': plan.task_specs, 'batch_size': config.eval.batch_size}
  probes = {
    'tasks': plan.task_specs,
    'seed': config.seed,
    'num_prompts': config.geometry.num_prompts,
  }
  return {
    'world': world,
    'eval': dict(world, **evaluation),
    'geometry': dict(world, probes=probes, geometry=config.geometry.to_dict()),
    'paths': dict(
      world,
      tasks=plan.path_specs,
      batch_size=config.eval.batch_size,
      paths={k: v for k, v in config.paths.to_dict().items() if k != 'limits'},
    ),
    'trajectory': dict(
      world,
      tasks=plan.path_specs,
      probes=probes,
      gram_max_tokens=config.geometry.gram_max_tokens,
      batch_size=config.eval.batch_size,
    ),
    'gates': dict(world, probes=probes),
    'drift': dict(world, seed=config.seed),
  }


def _graph(config: ml_collections.ConfigDict, plan: StudyPlan, get_ctx, workdir: str) -> _Graph:
  """Declares every stage; ``get_ctx()`` loads the context when a stage first needs it."""
  slices = _slices(config, plan)
  graph = _Graph()
  if real_world.is_real(config):  # the real world's base_eval also selects the evaluated tasks
    base_fn = lambda d: real_world.stage_base_eval(get_ctx(), d, graph.runner.path('base_eval'))
  else:
    base_fn = lambda d: study.stage_base_eval(get_ctx(), d)
  graph.add('base_eval', slices['eval'], fn=base_fn)
  swept = _sweep_methods(config, plan)
  evals = []
  for method in config.method_order:
    evals.append(f'eval_{method}')
    _method_graph(graph, config, plan, slices, method, method in swept, get_ctx)
  graph.add(
    'drift',
    slices['drift'],
    inputs=['base_eval'] + evals,
    fn=lambda d: study.stage_drift(
      get_ctx(),
      graph.runner.result('base_eval')['tasks'],
      {m: graph.runner.result(f'eval_{m}')['tasks'] for m in config.method_order},
      d,
    ),
  )
  drift_study.add_stages(  # real world with config.drift_study: labelled adapters, their matrix
    graph,
    config,
    plan,
    slices,
    get_ctx,
    method_train_config=method_train_config,
    train_slice=_without_resume_safe,
  )
  # config.sae: the delta-activation SAE study on the arena's base and target data.
  sae_stage.add_stage(graph, config, plan, slices)
  # config.rlvr: GRPO per method from the base, its evaluation, and pass@k of every model.
  rlvr_stage.add_stages(
    graph,
    config,
    plan,
    slices,
    get_ctx,
    workdir,
    method_train_config=method_train_config,
    train_slice=_without_resume_safe,
  )
  graph.add('report', {}, always=True)
  return graph


def _method_graph(graph, config, plan, slices, method, swept, get_ctx):
  train_name, cache = f'train_{method}', {}
  graph.resident[method] = cache
  # One compiled train step for the method's sweep rates, its final run and its restores (the
  # peak learning rate is a runtime value of the optimizer state).
  programs = trainer.ProgramCache()
  train_config = method_train_config(config, method, plan.base_dir, plan.target_train_path)
  # (optimizer_state: the peak learning rate lives in the optimizer state; checkpoints written
  # before it do not restore, so their stages are recomputed.)
  train_slice = dict(
    slices['world'], train=_without_resume_safe(train_config), optimizer_state='peak_lr'
  )
  train_inputs, reuse, continued = [], False, False
  if swept:
    lrs, centre = sweep_grid(config, method)
    seeds = [int(s) for s in (config.sweep.get('seeds') or [config.seed])]
    select_at = sweep_select_at(config, int(train_config.total_steps))
    steps = select_at or int(config.sweep.steps) or int(train_config.total_steps)
    sweep_slice = dict(
      train_slice,
      lrs=lrs,
      seeds=seeds,
      steps=steps,
      validation=plan.validation_specs,
      batch_size=config.eval.batch_size,
    )
    if select_at:
      sweep_slice['select_at'] = select_at
    sweep_name = f'sweep_{method}'

    def sweep_config(lr, seed, stop=True):
      c = method_train_config(config, method, plan.base_dir, plan.target_train_path)
      c.optimizer.peak_lr = float(lr)
      c.seed = int(seed)
      if select_at:  # the full schedule, stopped at select_at (stop=False: run to the end)
        c.stop_step = select_at if stop else 0
      else:
        c.total_steps = steps
        c.optimizer.warmup_steps = min(int(c.optimizer.warmup_steps), max(steps - 1, 0))
      return c

    graph.add(
      sweep_name,
      sweep_slice,
      fn=lambda d: study.stage_sweep(
        get_ctx(),
        method,
        lrs,
        seeds,
        lambda lr, seed, run_dir: trainer.train(sweep_config(lr, seed), run_dir, programs=programs),
        d,
        steps=steps,
        centre=centre,
      ),
      in_place=True,
      holds=method,
    )
    train_inputs = [sweep_name]
    reuse = not select_at and int(config.sweep.steps) == 0 and int(config.seed) in seeds
    continued = bool(select_at) and int(config.seed) in seeds
    train_slice = dict(train_slice, sweep_reuse=reuse)
    if continued:
      train_slice['sweep_continue'] = select_at

  def run_config():
    """(train config, run dir) of the final run: the sweep's kept rate when swept."""
    if 'run' not in cache:
      run_dir = os.path.join(graph.runner.path(train_name), 'run')
      c = method_train_config(config, method, plan.base_dir, plan.target_train_path)
      if swept:
        sweep = graph.runner.result(f'sweep_{method}')
        c.optimizer.peak_lr = float(sweep['chosen_lr'])
        if continued:  # the kept candidate, copied into this stage and trained to the end
          c = sweep_config(sweep['chosen_lr'], config.seed, stop=False)
        if reuse:
          c = sweep_config(sweep['chosen_lr'], config.seed)
          run_dir = study.sweep_run_dir(
            graph.runner.path(f'sweep_{method}'), sweep['chosen_index'], int(config.seed)
          )
      cache['run'] = (c, run_dir)
    return cache['run']

  def train_result():
    if 'result' not in cache:
      graph.hold(method)
      c, run_dir = run_config()
      # a finished run restores; runs no step
      cache['result'] = trainer.train(c, run_dir, programs=programs)
    return cache['result']

  def tree():  # restore the finished run only when a later stage needs it
    if 'tree' not in cache:
      graph.hold(method)
      cache['tree'] = jax.device_get(train_result().tree)
    return cache['tree']

  graph.trees[method] = tree

  def train_fn(d):
    del d
    c, run_dir = run_config()
    if not swept:
      out = study.stage_train(method, lambda r: trainer.train(c, r, programs=programs), run_dir)
      return dict(out, peak_lr=float(c.optimizer.peak_lr))
    sweep = graph.runner.result(f'sweep_{method}')
    if continued:  # the kept candidate continues from select_at to the end (one run, resumed)
      source = study.sweep_run_dir(
        graph.runner.path(f'sweep_{method}'), sweep['chosen_index'], int(config.seed)
      )
      study.copy_run(source, run_dir)
      out = study.stage_train(method, lambda r: train_result(), run_dir)
      out.update(continued_sweep_run=os.path.relpath(source, graph.runner.root))
      out.update(selected_at_step=int(sweep['steps']))
    elif reuse:  # the kept sweep run is the final run: its own training time, no second run
      out = study.stage_train(method, lambda r: train_result(), run_dir, timed=False)
      row = next(
        r for r in sweep['runs'] if r['lr'] == sweep['chosen_lr'] and r['seed'] == config.seed
      )
      out.update(
        train_time_s=row['train_time_s'], num_compiles=row['num_compiles'], reused_sweep_run=True
      )
    else:
      out = study.stage_train(method, lambda r: trainer.train(c, r, programs=programs), run_dir)
    return dict(out, peak_lr=float(sweep['chosen_lr']))

  graph.add(train_name, train_slice, train_inputs, fn=train_fn, in_place=True, holds=method)
  after = [train_name]
  evaluated = after + real_world.extra_eval_inputs(config)  # real world: the base's selection
  graph.add(
    f'eval_{method}', slices['eval'], evaluated, lambda d: study.stage_eval(get_ctx(), tree(), d)
  )
  graph.add(
    f'geometry_{method}',
    slices['geometry'],
    after,
    lambda d: study.stage_geometry(get_ctx(), tree(), d),
  )
  graph.add(
    f'paths_{method}',
    slices['paths'],
    evaluated,
    lambda d: study.stage_paths(get_ctx(), tree(), d),
  )
  if _wants_trajectory(config, method):
    graph.add(
      f'trajectory_{method}',
      dict(slices['trajectory'], every=int(config.trajectory.every)),
      evaluated,
      lambda d: study.stage_trajectory(get_ctx(), train_result(), run_config()[1], d),
    )
  if adapters.METHODS[method].has_gates:
    graph.add(
      f'gates_{method}', slices['gates'], after, lambda d: study.stage_gates(get_ctx(), tree(), d)
    )


# ---- the workdir's config -------------------------------------------------------------------


def record_config(workdir: str, config_dict: dict) -> Optional[str]:
  """Writes ``<workdir>/config.json``; an existing different one is kept as ``config.<n>.json``
  first (returned), so the workdir keeps every config it was run with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    new = stages_lib.canonical_json(config_dict)
    try:
      same = stages_lib.canonical_json(json.loads(old)) == new
    except ValueError:
      same = False
    if same:
      return None
    n = 1
    while os.path.exists(os.path.join(workdir, f'config.{n}.json')):
      n += 1
    kept = os.path.join(workdir, f'config.{n}.json')
    files.write_text(kept, old)
    files.write_json(path, config_dict)
    return kept
  files.write_json(path, config_dict)
  return None


def normalized(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with ``method_order`` as a tuple of registered method names.

  ``--config.method_order=lora,full`` reaches the config as the one-element tuple
  ``('lora,full',)`` (ml_collections parses a bare string that way); commas are split here. An
  unknown name is an error naming the valid ones.
  """
  names = [n.strip() for item in config.method_order for n in str(item).split(',') if n.strip()]
  unknown = [n for n in names if n not in adapters.METHODS]
  if unknown or not names:
    raise ValueError(
      f'config.method_order={tuple(config.method_order)!r}: unknown methods {unknown}; '
      f'valid: {sorted(adapters.METHODS)}'
    )
  if len(set(names)) != len(names):
    raise ValueError(f'config.method_order={tuple(names)!r} names a method twice')
  if tuple(names) == tuple(config.method_order):
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.method_order = tuple(names)
  return config


# ---- running --------------------------------------------------------------------------------


def _resolve(config: ml_collections.ConfigDict, workdir: str, write: bool = True) -> StudyPlan:
  if real_world.is_real(config):
    return real_world.resolve_real(config, workdir, write=write)
  return resolve_study(config, workdir, write=write)


def plan_arena(config: ml_collections.ConfigDict, workdir: str) -> list[stages_lib.Decision]:
  """What ``run_arena`` would do, stage by stage, without running (or writing) anything."""
  workdir = os.path.abspath(workdir)
  config = normalized(config)
  plan = _resolve(config, workdir, write=False)
  if needs_budget(config):
    tokenizer = hub.load_pretrained(plan.base_dir)[2]
    sequences = count_sequences(plan.target_train_path, tokenizer, int(config.train.data.seq_len))
    config, _ = derive_budget(config, sequences, jax.device_count())
  graph = _graph(config, plan, get_ctx=None, workdir=workdir)
  return stages_lib.plan(stages_lib.StageRunner(workdir, readonly=True), graph.specs)


def run_arena(
  config: ml_collections.ConfigDict, workdir: str, log: Optional[Callable[[str], None]] = print
) -> dict:
  """Runs (or resumes) the whole study in ``workdir``; returns the report's results dict.

  Compiled programs are cached on disk in ``config.compile_cache`` (a folder, relative to the
  workdir; '' = off; ``peft_jax.common.compile_cache``) for the run, so a rerun or resumed run
  and identical programs of later stages load instead of compiling.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  folder = str(config.get('compile_cache', '') or '')
  with compile_cache.persistent_cache(os.path.join(workdir, folder) if folder else None):
    return _run_arena(config, workdir, log)


def _run_arena(config: ml_collections.ConfigDict, workdir: str, log) -> dict:
  log = log or (lambda line: None)
  started = time.perf_counter()
  config = normalized(config)
  plan = _resolve(config, workdir)
  kept = record_config(workdir, config.to_dict())
  if kept:
    log(f'config changed since the last run: the previous one is kept as {kept}')
  for note in plan.notes:
    log(note)
  contexts: list[ArenaContext] = []
  runners: list[stages_lib.StageRunner] = []

  def get_ctx() -> ArenaContext:
    if not contexts:
      contexts.append(build_context(config, workdir, plan))
    if runners and runners[0].done('base_eval'):  # real world: the tasks the base selected
      real_world.apply_base_eval(contexts[0], runners[0].result('base_eval'))
    return contexts[0]

  if needs_budget(config):
    sequences = count_sequences(
      plan.target_train_path, get_ctx().tokenizer, int(config.train.data.seq_len)
    )
    config, why = derive_budget(config, sequences, jax.device_count())
    log(why)
  graph = _graph(config, plan, get_ctx, workdir)
  progress = tqdm(total=len(graph.specs), desc='arena', disable=not config.progress_bar)
  runner = stages_lib.StageRunner(workdir, progress, log=log)
  graph.runner = runner
  runners.append(runner)
  if runner.removed_orphans:
    log(f'removed temporary folders of an interrupted run: {runner.removed_orphans}')
  eta = progress_lib.Eta(stages_lib.plan(runner, graph.specs), log)
  for spec in graph.specs:
    if spec.always:
      continue
    runner.run(
      spec.name,
      graph.fns[spec.name],
      config=spec.config,
      inputs=spec.inputs,
      in_place=spec.in_place,
    )
    eta.done(spec.name, runner)
    if spec.name == 'base_eval':
      for note in real_world.notes(runner.result('base_eval')):
        log(note)
  reused = len(runner.skipped)
  log(f'stages: {len(runner.ran)} run, {reused} reused')

  per_method, gates = {}, None
  for method in config.method_order:
    entry = {
      kind: runner.result(f'{kind}_{method}') for kind in ('train', 'eval', 'geometry', 'paths')
    }
    for kind in ('sweep', 'trajectory'):
      if runner.done(f'{kind}_{method}') and any(s.name == f'{kind}_{method}' for s in graph.specs):
        entry[kind] = runner.result(f'{kind}_{method}')
    per_method[method] = entry
    if gates is None and adapters.METHODS[method].has_gates:
      gates = dict(runner.result(f'gates_{method}'), method=method)
  results = results_lib.assemble_results(
    title=config.title,
    target=config.target,
    tasks=get_ctx().tasks
    if contexts
    else [
      tasks_lib.load_task(s)
      for s in real_world.evaluated_specs(plan, runner.result('base_eval'))[0]
    ],
    base=runner.result('base_eval'),
    per_method=per_method,
    drift_result=runner.result('drift'),
    gates=gates,
    config=config.to_dict(),
    timing={
      'total_s': time.perf_counter() - started,
      'stages': dict(runner.timings),
      'ran': list(runner.ran),
      'reused': list(runner.skipped),
    },
  )
  results['plan'] = [d.line() for d in runner.decisions]
  results['notes'] = list(plan.notes) + real_world.notes(runner.result('base_eval'))
  if any(spec.name == drift_study.STAGE for spec in graph.specs):
    results['drift_study'] = drift_study.results_entry(runner.result(drift_study.STAGE))
  if any(spec.name == sae_stage.STAGE for spec in graph.specs):
    settings = runner.result('base_eval').get('bootstrap') or {}
    results['sae'] = report_sae.results_entry(
      runner.result(sae_stage.STAGE),
      **{k: int(settings[k]) for k in ('resamples', 'seed') if k in settings},
    )

  if rlvr_stage.enabled(config):
    settings = runner.result('base_eval').get('bootstrap') or {}
    chosen = rlvr_stage.methods(config)
    results['rlvr'] = report_rlvr.results_entry(
      base=runner.result('base_eval'),
      sft={m: runner.result(f'eval_{m}') for m in chosen},
      rlvr={m: runner.result(rlvr_stage.eval_name(m)) for m in chosen},
      runs={m: runner.result(rlvr_stage.train_name(m)) for m in chosen},
      passk=runner.result(rlvr_stage.PASSK),
      target=config.target,
      general_tasks=results['general_tasks'],
      **{k: int(settings[k]) for k in ('resamples', 'seed') if k in settings},
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
    config={},
  )
  progress.close()
  files.write_json(os.path.join(workdir, 'results.json'), results)
  return results
