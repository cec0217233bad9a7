"""The training loop: ``train(config, workdir)``, read top to bottom (big_vision style).

Resume order: the newest complete checkpoint in ``<workdir>/checkpoints`` that reads back
intact (state, optimizer state, step, rng and data-iterator position; an unreadable newer one is
moved to ``checkpoints.corrupt/`` with a warning) -> a fresh start from the configured base model.
Rerunning the same command therefore continues an interrupted run and ends bit-identical to an
uninterrupted one. A workdir whose saved ``config.json`` differs from the new config (outside
``checkpoint.RESUME_SAFE_KEYS``), or whose training data changed (the data fingerprint), is
refused with the list of differing keys. Model, adapters, tokenizer and data are all checked
before anything is written, so a failed start leaves the workdir as it was.

Faults stop the run with an error naming the step and the file: a diverging metric
(``guard.py``), a failed checkpoint save, a metric file that cannot be written (``metrics.py``).
SIGTERM/SIGINT checkpoint the current step and raise ``signals.Interrupted`` (``signals.py``).

Workdir layout::

  config.json        resolved config (+ data_fingerprint: path, size, sha256 of the data read)
  metrics.jsonl      one line per logged step; tensorboard/ the same as TB events
  checkpoints/<step> orbax checkpoints (keep-N)
  checkpoints.corrupt/<step>-<time>  unreadable checkpoints moved aside on resume (never deleted)
  .lock              held by the launcher while it runs (peft_jax.common.lock)
  trajectory/<step>  adapter (trainable) snapshots every `checkpoint.snapshot_every` steps
  export/adapter     PEFT-format adapter, export/merged HF directory (when configured)

Compiled programs across runs: ``train(..., programs=ProgramCache())`` reuses the jitted step
and state initialiser of an earlier call in the same process whose config differed only in keys
that do not change the program (:data:`NON_PROGRAM_KEYS`: the peak learning rate, the seed, the
data, checkpointing and logging). The peak learning rate is a runtime value of the optimizer
state (``peft_jax.train.optimizer``), so a learning-rate sweep compiles its step once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from peft_jax import hub, models
from peft_jax.adapters import api as adapter_api
from peft_jax.data import sft
from peft_jax.parallel import distributed, sharding
from peft_jax.train import checkpoint as ckpt_lib
from peft_jax.train import signals
from peft_jax.train.config import validate_config
from peft_jax.train.guard import DivergenceGuard
from peft_jax.train.loss import make_sft_loss
from peft_jax.train.metrics import MetricWriter
from peft_jax.train.setup import ShardedTraining, TrainingPlan, setup_training

PyTree = Any


@dataclasses.dataclass
class TrainResult:
  """What a finished ``train`` call leaves in memory (the workdir holds the rest)."""

  state: Any  # TrainState after the last step
  frozen: PyTree  # the frozen partition
  model: Any  # the linen Decoder
  tree: PyTree  # combine(trainable, frozen): the adapted params tree
  losses: list  # (step, loss) of the steps run by this call
  num_compiles: int  # compilations of the jitted step during this call (1 expected)
  start_step: int  # step the call resumed from (0: fresh)
  # () -> the step's jax ``Lowered`` on abstract arguments (``.compile().memory_analysis()``
  # gives its device memory; costs one compilation, so it is only done on request).
  lower_step: Optional[Callable[[], Any]] = None


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict):
  """``(model, params, model_config, hf_tokenizer or None)`` from ``config.model``."""
  if config.model.path:
    # Params load in float32; the compute dtype and remat are ModelConfig switches.
    model, params, tokenizer = hub.load_pretrained(config.model.path)
    model_config = dataclasses.replace(
      model.config,
      dtype=config.model.dtype,
      remat=config.model.remat,
      scan_layers=config.model.get('scan_layers', False),
    )
    _log_scan(model_config)
    # The files are read unrolled; a scanning config stacks them (peft_jax.common.stacking).
    return (
      models.Decoder(model_config),
      models.scanned(model_config, params),
      model_config,
      tokenizer,
    )
  fields = {k: v for k, v in config.model.items() if k != 'path'}
  model_config = models.ModelConfig(**fields)
  _log_scan(model_config)
  params = models.init_params(model_config, jax.random.PRNGKey(config.seed))
  return models.Decoder(model_config), params, model_config, None


def _log_scan(model_config) -> None:
  if model_config.scan_layers is not False:
    logging.info('model layers: %s', model_config.scan_plan()[1])


def make_method(config: ml_collections.ConfigDict):
  """The method object of ``config.adapter`` (from the registry, ``peft_jax.adapters.METHODS``;
  full fine-tuning is ``Full`` like every other method)."""
  try:
    return adapter_api.make_method(config.adapter.method, **dict(config.adapter.kwargs))
  except ValueError as error:
    raise ValueError(
      f'config.adapter.kwargs {sorted(config.adapter.kwargs)} do not fit '
      f'config.adapter.method={config.adapter.method!r}: {error}'
    ) from error


def adapt(config: ml_collections.ConfigDict, params: PyTree, method) -> PyTree:
  """``params`` with ``method`` injected on ``config.adapter``'s targets (PEFT semantics; a
  method that adapts every parameter, such as ``Full()``, ignores them)."""
  targets = config.adapter.target_regex or list(config.adapter.targets)
  return adapter_api.inject(params, method, targets, jax.random.PRNGKey(config.seed + 1))


def make_loss_fn(model, method, mesh=None, rules=None) -> Callable:
  """The SFT loss of ``model`` with ``method``'s adapters:
  ``loss_fn(trainable, frozen, batch, rng) -> (loss_sum, num_tokens)`` (dropout rng only when
  the method needs one). With a ``mesh``, the model is traced inside
  ``models.activation_sharding(mesh, rules)``: its activations are constrained by the same rules
  table as the params (``rules`` ``None``: the default table)."""

  def forward(tree, tokens, positions, segment_ids, rng):
    if rng is None:
      return model.apply({'params': tree}, tokens, positions=positions, segment_ids=segment_ids)
    return model.apply(
      {'params': tree},
      tokens,
      positions=positions,
      segment_ids=segment_ids,
      deterministic=False,
      rngs={'dropout': rng},
    )

  def apply_fn(*args):
    if mesh is None:
      return forward(*args)
    with models.activation_sharding(mesh, sharding.normalize_rules(rules)):
      return forward(*args)

  return make_sft_loss(apply_fn, adapter_api.combine, dropout=method.needs_rng)


def optimizer_kwargs(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of ``train.optimizer.make_optimizer`` from ``config.optimizer``."""
  kwargs = dict(config.optimizer)
  kwargs['lr_groups'] = [tuple(g) for g in kwargs['lr_groups']]
  kwargs['param_groups'] = adapter_api.param_groups
  kwargs['total_steps'] = config.total_steps
  return kwargs


def make_tokenizer(config: ml_collections.ConfigDict, model_config, hf_tokenizer):
  name = config.data.tokenizer
  if name == 'byte':
    return sft.ByteTokenizer(vocab_size=model_config.vocab_size)
  if name == 'model':
    if hf_tokenizer is None:
      raise ValueError(f"config.data.tokenizer='model' but {config.model.path!r} has no tokenizer")
    return hf_tokenizer
  try:
    return hub.load_tokenizer(name)
  except (FileNotFoundError, ValueError) as error:
    raise type(error)(f'config.data.tokenizer={name!r}: {error}') from error


def make_iterator(config: ml_collections.ConfigDict, tokenizer) -> tuple[Any, Any]:
  """``(loaded rows, iterator)`` of this process's batches: the whole data read and sliced per
  batch, or with ``config.data.num_shards`` only this process's shards read and tokenised
  (``sft.ShardedSFTIterator``)."""
  build = dict(packing=config.data.packing, drop_truncated=config.data.get('drop_truncated', False))
  num_shards = int(config.data.get('num_shards', 0) or 0)
  if num_shards:
    shards = sft.process_shards(num_shards, jax.process_index(), jax.process_count())
    loaded = sft.read_rows(
      config.data.path, config.data.split, num_shards=num_shards, shards=shards
    )
    missing = sorted(set(shards) - set(loaded.shards))
    if missing:
      raise ValueError(
        f'config.data.path={config.data.path!r}: data shards {missing} of {num_shards} hold no '
        'rows (fewer rows than shards); lower config.data.num_shards'
      )
    arrays = sft.build_shard_arrays(loaded, tokenizer, config.data.seq_len, **build)
    iterator = sft.ShardedSFTIterator(
      arrays, config.batch_size, num_shards, seed=config.seed, shuffle=config.data.shuffle
    )
    return loaded, iterator
  loaded = sft.read_rows(config.data.path, config.data.split)
  arrays = sft.build_sft_arrays(
    loaded.rows, tokenizer, config.data.seq_len, locations=loaded.locations, **build
  )
  iterator = sft.SFTIterator(
    arrays,
    config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    shuffle=config.data.shuffle,
  )
  return loaded, iterator


def host_copy(tree: PyTree) -> PyTree:
  """All of ``tree`` on the host (gathers across processes when needed)."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def export_run(
  config: ml_collections.ConfigDict, workdir: str, method, tree: PyTree, model_config, hf_tokenizer
) -> None:
  """Writes ``export/adapter`` (PEFT format) and/or ``export/merged`` (HF directory) of ``tree``
  as ``config.export`` asks (process 0 writes; every process takes part in the gather)."""
  if not (config.export.adapter or config.export.merged):
    return
  host_tree = host_copy(tree)
  if jax.process_index() != 0:
    return
  if config.export.adapter:
    if method.peft_type is None:
      raise ValueError(
        f'config.export.adapter: method {method.name!r} has no PEFT file format; use export.merged'
      )
    hub.save_adapter(
      host_tree,
      os.path.join(workdir, 'export', 'adapter'),
      base_model_name_or_path=config.model.path or None,
    )
  if config.export.merged:
    merged = adapter_api.merge(host_tree)
    hub.save_pretrained(
      model_config, merged, os.path.join(workdir, 'export', 'merged'), tokenizer=hf_tokenizer
    )


# ------------------------------------------------------------------------------------------------
# Programs reused across runs
# ------------------------------------------------------------------------------------------------

# Config keys that change no compiled program: runtime values of the state (peak_lr, seed), what
# the data is (its shapes, batch_size and data.seq_len, stay in the key) and the run's
# bookkeeping. Every other key, including ones added later, is part of the program key.
NON_PROGRAM_KEYS = (
  'seed',
  'optimizer.peak_lr',
  'stop_step',
  'model.path',  # replaced by the resolved model config
  'data.path',
  'data.split',
  'data.tokenizer',
  'data.packing',
  'data.num_shards',
  'data.shuffle',
  'data.drop_truncated',
  'data.allow_changed_data',
  'checkpoint',
  'log_every',
  'progress_bar',
  'throttle_s',
  'peak_flops_per_device',
  'guard',
  'metric_timeout_s',
  'export',
)


def program_key(config: ml_collections.ConfigDict, model_config, method) -> str:
  """What the compiled train step depends on: the config without :data:`NON_PROGRAM_KEYS`, the
  resolved model config and the method object."""
  flat = json.loads(json.dumps(config.to_dict(), default=str))
  for key in NON_PROGRAM_KEYS:
    node, parts = flat, key.split('.')
    for part in parts[:-1]:
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(parts[-1], None)
  return json.dumps([flat, repr(model_config), repr(method)], sort_keys=True, default=str)


class ProgramCache:
  """Training programs (``setup.TrainingPlan``) by :func:`program_key`, reused by ``train``.

  Attributes:
    hits / misses: ``train`` calls that reused a plan / built one.
  """

  def __init__(self):
    self._plans: dict[str, TrainingPlan] = {}
    self.hits = 0
    self.misses = 0

  def get(self, key: str) -> Optional[TrainingPlan]:
    plan = self._plans.get(key)
    if plan is None:
      self.misses += 1
    else:
      self.hits += 1
    return plan

  def put(self, key: str, plan: TrainingPlan) -> None:
    self._plans[key] = plan


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  batch_hook: Optional[Callable[[int, dict], dict]] = None,
  programs: Optional[ProgramCache] = None,
) -> TrainResult:
  """Trains (or resumes) the run in ``workdir``; see the module docstring.

  Args:
    config: a config like :func:`peft_jax.train.config.default_config`.
    workdir: the run directory (shared by all processes).
    batch_hook: optional ``(step, local_batch) -> local_batch`` applied to each host batch
      (inspection, augmentation, fault injection in tests).
    programs: reuse (and add to) these compiled programs (see the module docstring).
  Raises:
    FloatingPointError: (``guard.DivergenceError``) the loss, gradient, update or parameter norm
      became non-finite or exceeded its ``config.guard`` bound (names the step, the metric and
      the last good checkpoint, which is left intact).
    ValueError: invalid config, model, tokenizer or data (naming the file), or a workdir holding
      a run with a different config or data.
    signals.Interrupted: SIGTERM/SIGINT; the current step was checkpointed.
    checkpoint.CheckpointSaveError, metrics.MetricWriteError: a file could not be written.
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)

  # ---- Mesh --------------------------------------------------------------------------------
  mesh = sharding.make_mesh(tuple(config.mesh_shape))
  rules = [tuple(r) for r in config.logical_axis_rules] or None

  # ---- Model and adapters ------------------------------------------------------------------
  model, params, model_config, hf_tokenizer = build_model(config)
  method = make_method(config)
  params = adapt(config, params, method)
  partition_fn, combine_fn = adapter_api.partition, adapter_api.combine
  axes = models.param_logical_axes(params, model_config)

  loss_fn = make_loss_fn(model, method, mesh, rules)
  key = None if programs is None else program_key(config, model_config, method)
  training: ShardedTraining = setup_training(
    params,
    axes,
    loss_fn=loss_fn,
    partition_fn=partition_fn,
    mesh=mesh,
    optimizer_kwargs=optimizer_kwargs(config),
    rules=rules,
    seed=config.seed,
    grad_accum_steps=config.grad_accum_steps,
    plan=None if programs is None else programs.get(key),
  )
  if programs is not None:
    programs.put(key, training.plan)
  del params  # the sharded state and frozen partition own the weights now
  num_params = adapter_api.count_params(combine_fn(training.state.params, training.frozen))['total']

  # ---- Input pipeline (each process loads only its rows of every global batch) -------------
  tokenizer = make_tokenizer(config, model_config, hf_tokenizer)
  loaded, iterator = make_iterator(config, tokenizer)
  # Everything is checked: only now write to the workdir.
  ckpt_lib.check_or_write_config(
    workdir,
    dict(config.to_dict(), **{ckpt_lib.FINGERPRINT_KEY: loaded.fingerprint}),
    allow_changed=(
      (ckpt_lib.FINGERPRINT_KEY,) if config.data.get('allow_changed_data', False) else ()
    ),
  )

  # ---- Checkpoints: resume from the workdir when it holds one ------------------------------
  checkpointer = ckpt_lib.StateCheckpointer(
    os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep
  )
  trajectory = (
    ckpt_lib.TrajectoryWriter(os.path.join(workdir, 'trajectory'))
    if config.checkpoint.snapshot_every
    else None
  )
  start_step, state, data_state = checkpointer.restore_latest(training.state)
  if start_step:
    iterator.set_state(data_state)
  elif trajectory is not None:
    trajectory.save(0, state.params)

  # ---- Train loop --------------------------------------------------------------------------
  # (.get: a config read back from an older run's config.json lacks the newer keys)
  writer = MetricWriter(workdir, timeout_s=config.get('metric_timeout_s', 60.0))
  guard = DivergenceGuard(dict(config.get('guard', {})), checkpointer.directory)
  stop = signals.StopOnSignal()  # installed for the loop only
  tokens_per_step = config.batch_size * config.data.seq_len
  flops_per_step = 6.0 * num_params * tokens_per_step
  peak_flops = config.peak_flops_per_device * jax.device_count()
  compiles_before = training.train_step._cache_size()  # pylint: disable=protected-access
  losses = []
  # stop_step: end this call after that step, on the schedule of total_steps (a later call with
  # stop_step 0 continues the same run to the end, bit for bit).
  last = int(config.get('stop_step', 0) or 0) or config.total_steps
  progress = range(start_step, last)
  if config.progress_bar and jax.process_index() == 0:
    progress = tqdm(progress, initial=start_step, total=last, desc='train')
  try:
    stop.install()
    for step in progress:
      local = next(iterator)
      if batch_hook is not None:
        local = batch_hook(step, local)
      # A float mask keeps one dtype whatever the hook does (no recompilation).
      local = dict(local, loss_mask=np.asarray(local['loss_mask'], np.float32))
      batch = distributed.global_batch(local, mesh, config.batch_size, rules)
      start = time.perf_counter()
      state, metrics = training.train_step(state, training.frozen, batch)
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - start
      checkpointer.check()  # a failed background save stops the run here
      if guard.problem(metrics):
        guard.check(step, metrics, checkpointer.latest_complete_step())
      losses.append((step, float(metrics['loss'])))
      if (step + 1) % config.log_every == 0 or step + 1 == last:
        scalars = dict(
          metrics,
          step_seconds=seconds,
          tokens_per_second=tokens_per_step / seconds,
          mfu=flops_per_step / seconds / peak_flops,
        )
        writer.write(step + 1, scalars)
      if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == last:
        checkpointer.save(step + 1, state, iterator.get_state())
      if trajectory is not None and (step + 1) % config.checkpoint.snapshot_every == 0:
        trajectory.save(step + 1, state.params)
      if config.throttle_s:
        time.sleep(config.throttle_s)
      signum = stop.requested()
      if signum:
        checkpointer.save_now(step + 1, state, iterator.get_state())
        raise stop.interrupted(signum, step + 1, checkpointer.directory)
  finally:
    stop.uninstall()
    try:
      checkpointer.close()
    finally:  # close the other writers even when the last checkpoint save failed
      if trajectory is not None:
        trajectory.close()
      writer.close()

  # ---- Export ------------------------------------------------------------------------------
  tree = combine_fn(state.params, training.frozen)
  export_run(config, workdir, method, tree, model_config, hf_tokenizer)
  compiles = training.train_step._cache_size() - compiles_before  # pylint: disable=protected-access

  def lower_step():
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    batch_spec = {
      key: jax.ShapeDtypeStruct(
        (config.batch_size, config.data.seq_len),
        np.float32 if key == 'loss_mask' else np.int32,
        sharding=sharding_,
      )
      for key, sharding_ in training.batch_shardings.items()
    }
    return training.train_step.lower(
      jax.tree.map(abstract, state), jax.tree.map(abstract, training.frozen), batch_spec
    )

  return TrainResult(
    state=state,
    frozen=training.frozen,
    model=model,
    tree=tree,
    losses=losses,
    num_compiles=compiles,
    start_step=start_step,
    lower_step=lower_step,
  )
