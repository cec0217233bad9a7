"""The GRPO loop: ``train(config, workdir)``, read top to bottom (docs/RLVR.md).

Per step ``s``: take ``prompts_per_step`` prompts of ``config.grpo.task`` (a shuffled,
resumable order), sample ``G`` completions of each with the policy on the mesh (key from
``(seed, s)``), score them with the task's verifiable scorer, normalise the rewards within each
group into advantages, compute the reference's (and, with several updates per batch, the
sampling policy's) log-probs once, and apply ``num_iterations`` optimizer updates of the
clipped objective. Every method trains this way: the reference is the same tree with each
adapted node at its method's base point (``rl.step.reference_params``).

The run directory, resume, config guard, divergence guard, signals and export are the SFT
trainer's (``peft_jax.train``): a killed run rerun with the same command continues from its
newest complete checkpoint and ends bit-identical to an uninterrupted one. Workdir layout::

  config.json        resolved config (+ data_fingerprint of the task files)
  metrics.jsonl      one line per logged step (rollout, update and eval/ metrics)
  checkpoints/<step> orbax checkpoints (state + prompt-order position), keep-N
  export/            PEFT adapter / merged model when configured
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from peft_jax import models
from peft_jax.adapters import api as adapter_api
from peft_jax.evals import scorers
from peft_jax.evals.harness import truncate_at_stop
from peft_jax.evals.tasks import Example, Task, load_task
from peft_jax.parallel import distributed, sharding
from peft_jax.rl import config as rl_config
from peft_jax.rl import objective, rollout
from peft_jax.rl import step as rl_step
from peft_jax.train import checkpoint as ckpt_lib
from peft_jax.train import signals
from peft_jax.train.guard import DivergenceGuard
from peft_jax.train.metrics import MetricWriter
from peft_jax.train.setup import ShardedTraining, setup_training
from peft_jax.train.trainer import (
  adapt,
  build_model,
  export_run,
  host_copy,
  make_method,
  make_tokenizer,
)

PyTree = Any
RewardFn = Callable[[Sequence[str], Sequence[Example]], np.ndarray]


@dataclasses.dataclass
class GRPOResult:
  """What a finished ``train`` call leaves in memory (the workdir holds the rest)."""

  state: Any  # TrainState after the last update
  frozen: PyTree  # the frozen partition
  model: Any  # the linen Decoder
  tree: PyTree  # combine(trainable, frozen): the adapted params tree
  tokenizer: Any
  mesh: Any  # the device mesh the state lives on
  metrics: list  # (step, metrics dict) of every step run by this call (1-based step)
  evals: list  # (step, {'pass@k': ..., 'reward_mean': ...}) of the held-out evaluations
  start_step: int  # step the call resumed from (0: fresh)
  num_compiles: int  # compilations of the update step during this call (one per prompt bucket)


# ------------------------------------------------------------------------------------------------
# Prompts and rewards
# ------------------------------------------------------------------------------------------------


class PromptIterator:
  """``prompts_per_step`` examples per step in a per-epoch permutation from ``(seed, epoch)``;
  state ``{'epoch', 'index', 'seed'}`` like ``data.sft.SFTIterator`` (the checkpoint format)."""

  def __init__(self, examples: Sequence[Example], prompts_per_step: int, seed: int):
    if len(examples) < prompts_per_step:
      raise ValueError(
        f'the task has {len(examples)} examples, fewer than config.grpo.prompts_per_step='
        f'{prompts_per_step}'
      )
    self.examples = list(examples)
    self.per_step = prompts_per_step
    self.batches_per_epoch = len(self.examples) // prompts_per_step
    self.epoch, self.index, self.seed = 0, 0, int(seed)

  def __next__(self) -> list[Example]:
    if self.index >= self.batches_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))
    rows = order[self.index * self.per_step : (self.index + 1) * self.per_step]
    self.index += 1
    return [self.examples[i] for i in rows]

  def get_state(self) -> dict[str, int]:
    return {'epoch': self.epoch, 'index': self.index, 'seed': self.seed}

  def set_state(self, state: Mapping[str, int]) -> None:
    if int(state['seed']) != self.seed:
      raise ValueError(f'checkpointed prompt order has seed {state["seed"]}, config {self.seed}')
    self.epoch, self.index = int(state['epoch']), int(state['index'])


def task_reward(task: Task, metric: str = '') -> RewardFn:
  """``(texts, examples) -> rewards [B] float32``: the task's per-sample score ``metric``
  (default: its 0/1 correctness metric) of each text cut at the task's stop strings."""
  metric = metric or task.scorer.correct_metric

  def reward_fn(texts, examples):
    out = []
    for text, example in zip(texts, examples):
      scores = task.scorer.score(truncate_at_stop(text, task.stop), example)
      if metric not in scores:
        raise KeyError(
          f'config.grpo.reward_metric={metric!r} is not a score of task {task.name!r}; '
          f'it gives {sorted(scores)}'
        )
      out.append(float(scores[metric]))
    return np.asarray(out, np.float32)

  return reward_fn


def _fingerprint(path: str) -> dict:
  """``{'path', 'size', 'sha256'}`` of a task file (or of every file under a directory)."""
  digest, size = hashlib.sha256(), 0
  files = (
    sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
    if os.path.isdir(path)
    else [path]
  )
  for name in files:
    with open(name, 'rb') as f:
      data = f.read()
    size += len(data)
    digest.update(os.path.relpath(name, path).encode() + b'\0' + data)
  return {'path': os.path.abspath(path), 'size': size, 'sha256': digest.hexdigest()}


# ------------------------------------------------------------------------------------------------
# Sampling helpers shared by training and pass@k
# ------------------------------------------------------------------------------------------------


def _eos_ids(model_config, tokenizer) -> tuple[int, ...]:
  ids = model_config.eos_token_ids or (
    () if getattr(tokenizer, 'eos_token_id', None) is None else (tokenizer.eos_token_id,)
  )
  return tuple(sorted({int(i) for i in np.atleast_1d(np.asarray(ids, np.int64)).tolist()}))


def make_sampling(model_config, tokenizer, group_size: int, grpo_config, temperature=None):
  """The :class:`rollout.Sampling` of ``config.grpo`` with ``group_size`` samples a prompt."""
  pad = getattr(tokenizer, 'pad_token_id', None)
  return rollout.Sampling(
    group_size=int(group_size),
    max_new_tokens=int(grpo_config.max_new_tokens),
    temperature=float(grpo_config.temperature if temperature is None else temperature),
    top_k=int(grpo_config.top_k),
    top_p=float(grpo_config.top_p),
    eos_token_ids=_eos_ids(model_config, tokenizer),
    pad_token_id=int(pad if pad is not None else 0),
  )


def _sample_and_score(
  model_config,
  tree,
  tokenizer,
  examples: Sequence[Example],
  *,
  task: Task,
  sampling: rollout.Sampling,
  key: jax.Array,
  reward_fn: RewardFn,
  bucket: int,
  max_prompt_length: int,
  mesh,
):
  tokens, mask = rollout.encode_prompts(
    tokenizer,
    [e.prompt for e in examples],
    chat=task.chat,
    bucket=bucket,
    max_prompt_length=max_prompt_length,
  )
  out = rollout.sample_groups(model_config, tree, tokens, mask, key, sampling, mesh)
  completion_tokens, lengths = host_copy((out.tokens, out.lengths))
  texts = rollout.completion_texts(tokenizer, completion_tokens, lengths, sampling.eos_token_ids)
  repeated = [e for e in examples for _ in range(sampling.group_size)]
  return out, np.asarray(lengths), reward_fn(texts, repeated), texts


@functools.partial(jax.jit, static_argnums=(1, 2))
def _mean_pass_at_ks(counts, num_samples: int, ks: tuple[int, ...]):
  """Mean over prompts of the unbiased pass@k for every k (one program)."""
  return [jnp.mean(scorers.pass_at_k(num_samples, counts, k)) for k in ks]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _advantages_and_stats(rewards, group_size: int, scale_rewards: str, eps: float):
  advantages = objective.group_advantages(rewards, group_size, scale_rewards=scale_rewards, eps=eps)
  return advantages, objective.group_reward_stats(rewards, group_size)


def correct_counts(
  model: Any,
  params: PyTree,
  tokenizer: Any,
  task: Task,
  *,
  num_samples: int,
  key: jax.Array,
  temperature: float = 1.0,
  top_p: float = 1.0,
  top_k: int = 0,
  max_new_tokens: Optional[int] = None,
  prompts_per_batch: int = 8,
  bucket: int = 32,
  reward_fn: Optional[RewardFn] = None,
  mesh=None,
) -> tuple[np.ndarray, np.ndarray]:
  """``(counts [prompts] int32, rewards [prompts, num_samples] float32)`` of ``params`` on
  ``task``: ``num_samples`` completions of every example drawn with the group sampler (prompts
  in batches of ``prompts_per_batch``; the last batch is filled by repeating its last prompt so
  each bucket compiles once), each scored by ``reward_fn`` (default: the task's correctness
  metric); a count is the number of samples whose reward is above 0.5. Batch ``b`` samples
  with ``fold_in(key, b)``, so the same key gives every model the same random numbers."""
  reward_fn = reward_fn or task_reward(task)
  settings = ml_collections.ConfigDict(
    dict(
      max_new_tokens=max_new_tokens or task.max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
    )
  )
  sampling = make_sampling(model.config, tokenizer, num_samples, settings)
  examples = list(task.examples)
  rewards = []
  for batch_index, start in enumerate(range(0, len(examples), prompts_per_batch)):
    chunk = examples[start : start + prompts_per_batch]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (prompts_per_batch - real)
    _, _, reward, _ = _sample_and_score(
      model.config,
      params,
      tokenizer,
      chunk,
      task=task,
      sampling=sampling,
      key=jax.random.fold_in(key, batch_index),
      reward_fn=reward_fn,
      bucket=bucket,
      max_prompt_length=0,
      mesh=mesh,
    )
    rewards.append(reward.reshape(prompts_per_batch, num_samples)[:real])
  rewards = np.concatenate(rewards)
  return np.sum(rewards > 0.5, axis=1).astype(np.int32), rewards


def mean_pass_at_ks(counts: np.ndarray, num_samples: int, ks: Sequence[int]) -> dict[str, float]:
  """``{'pass@k': mean over prompts of the unbiased pass@k}`` (``evals.scorers.pass_at_k``,
  float32, one program) of per-prompt correct counts out of ``num_samples``."""
  bad = [k for k in ks if not 1 <= int(k) <= num_samples]
  if bad:
    raise ValueError(f'pass@k needs 1 <= k <= num_samples={num_samples}; got {bad}')
  counts = np.asarray(counts, np.int32)
  estimates = _mean_pass_at_ks(counts, int(num_samples), tuple(int(k) for k in ks))
  return {f'pass@{int(k)}': float(v) for k, v in zip(ks, jax.device_get(estimates))}


def pass_at_k_curve(
  model: Any,
  params: PyTree,
  tokenizer: Any,
  task: Task,
  *,
  num_samples: int,
  ks: Sequence[int],
  key: jax.Array,
  temperature: float = 1.0,
  top_p: float = 1.0,
  top_k: int = 0,
  max_new_tokens: Optional[int] = None,
  prompts_per_batch: int = 8,
  bucket: int = 32,
  reward_fn: Optional[RewardFn] = None,
  mesh=None,
) -> dict[str, float]:
  """Unbiased pass@k (``evals.scorers.pass_at_k``) of ``params`` on ``task``.

  Counts the correct samples of every example (:func:`correct_counts`, the same arguments)
  and averages ``1 - C(n - c, k) / C(n, k)`` over examples.

  Returns:
    ``{'pass@k': value for k in ks}`` plus ``'mean_reward'`` (avg@n of the reward) and
    ``'num_examples'``.
  """
  bad = [k for k in ks if not 1 <= int(k) <= num_samples]
  if bad:
    raise ValueError(f'pass@k needs 1 <= k <= num_samples={num_samples}; got {bad}')
  counts, rewards = correct_counts(
    model,
    params,
    tokenizer,
    task,
    num_samples=num_samples,
    key=key,
    temperature=temperature,
    top_p=top_p,
    top_k=top_k,
    max_new_tokens=max_new_tokens,
    prompts_per_batch=prompts_per_batch,
    bucket=bucket,
    reward_fn=reward_fn,
    mesh=mesh,
  )
  out = mean_pass_at_ks(counts, num_samples, ks)
  out['mean_reward'] = float(np.mean(rewards))
  out['num_examples'] = float(len(task.examples))
  return out


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

# fold_in constant of the held-out evaluation's key (the same key at every evaluation, so the
# pass@k curves of different steps use common random numbers).
_EVAL_STREAM = 0xE7A1


def _mean_metrics(updates: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  return {k: float(np.mean([float(u[k]) for u in updates])) for k in updates[0]}


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  reward_fn: Optional[RewardFn] = None,
) -> GRPOResult:
  """Trains (or resumes) the GRPO run in ``workdir``; see the module docstring.

  Args:
    config: a config like :func:`peft_jax.rl.config.default_config`.
    workdir: the run directory (shared by all processes).
    reward_fn: ``(texts, examples) -> rewards [B]`` replacing the task's scorer (each text is
      a completion, each example its prompt's :class:`~peft_jax.evals.tasks.Example`).
  Raises:
    ValueError: invalid config, model, tokenizer or task file, or a workdir holding a run with
      another config or task data.
    FloatingPointError: (``guard.DivergenceError``) a non-finite or exploding loss, gradient,
      update or parameter norm.
    signals.Interrupted: SIGTERM/SIGINT; the current step was checkpointed.
    checkpoint.CheckpointSaveError, metrics.MetricWriteError: a file could not be written.
  """
  rl_config.validate(config)
  grpo = config.grpo
  workdir = os.path.abspath(workdir)

  # ---- Mesh, model, adapters, tokenizer, tasks ----------------------------------------------
  mesh = sharding.make_mesh(tuple(config.mesh_shape))
  rules = [tuple(r) for r in config.logical_axis_rules] or None
  model, params, model_config, hf_tokenizer = build_model(config)
  method = make_method(config)
  params = adapt(config, params, method)
  axes = models.param_logical_axes(params, model_config)
  tokenizer = make_tokenizer(config, model_config, hf_tokenizer)
  task = load_task(rl_config.task_spec(grpo.task, 'grpo.task'))
  eval_task = (
    load_task(rl_config.task_spec(grpo.eval_task, 'grpo.eval_task'))
    if grpo.eval_task.path
    else None
  )
  reward_fn = reward_fn or task_reward(task, grpo.reward_metric)
  prompts = PromptIterator(task.examples, grpo.prompts_per_step, config.seed)
  batch_rows = grpo.prompts_per_step * grpo.group_size
  data_parallel = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_rows % data_parallel or batch_rows % jax.process_count():
    raise ValueError(
      f'config.grpo.prompts_per_step * group_size = {batch_rows} completions must divide over '
      f'the mesh data x fsdp = {data_parallel} devices and {jax.process_count()} processes'
    )

  # ---- Sharded state, optimizer and the jitted programs ---------------------------------------
  optimizer_kwargs = dict(config.optimizer)
  optimizer_kwargs['lr_groups'] = [tuple(g) for g in optimizer_kwargs['lr_groups']]
  optimizer_kwargs['param_groups'] = adapter_api.param_groups
  reuse = grpo.num_iterations > 1
  training: ShardedTraining = setup_training(
    params,
    axes,
    loss_fn=None,
    partition_fn=adapter_api.partition,
    mesh=mesh,
    optimizer_kwargs=dict(optimizer_kwargs, total_steps=config.total_steps * grpo.num_iterations),
    rules=rules,
    seed=config.seed,
    batch_keys=rl_step.BATCH_KEYS,
    step_builder=rl_step.make_grpo_step(
      model,
      objective.loss_kwargs(grpo),
      temperature=grpo.temperature,
      reuse_batch=reuse,
      dropout=method.needs_rng,
      skip_no_signal=bool(grpo.get('skip_no_signal', False)),
    ),
  )
  del params
  prepare = jax.jit(rl_step.make_prepare(model, grpo.temperature)) if reuse else None
  sampling = make_sampling(model_config, tokenizer, grpo.group_size, grpo)

  # ---- Everything is checked: only now write to the workdir ---------------------------------
  fingerprint = {'task': _fingerprint(grpo.task.path)}
  if eval_task is not None:
    fingerprint['eval_task'] = _fingerprint(grpo.eval_task.path)
  ckpt_lib.check_or_write_config(
    workdir,
    dict(config.to_dict(), **{ckpt_lib.FINGERPRINT_KEY: fingerprint}),
    allow_changed=(
      (ckpt_lib.FINGERPRINT_KEY,) if config.data.get('allow_changed_data', False) else ()
    ),
  )
  checkpointer = ckpt_lib.StateCheckpointer(
    os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep
  )
  start_step, state, data_state = checkpointer.restore_latest(training.state)
  if start_step:
    prompts.set_state(data_state)

  writer = MetricWriter(workdir, timeout_s=config.get('metric_timeout_s', 60.0))
  guard = DivergenceGuard(dict(config.get('guard', {})), checkpointer.directory)
  stop = signals.StopOnSignal()
  eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _EVAL_STREAM)
  evaluate = functools.partial(
    pass_at_k_curve,
    model,
    tokenizer=tokenizer,
    task=eval_task,
    num_samples=grpo.eval_samples,
    ks=tuple(int(k) for k in grpo.eval_k),
    key=eval_key,
    temperature=grpo.eval_temperature,
    top_p=grpo.top_p,
    top_k=grpo.top_k,
    max_new_tokens=grpo.max_new_tokens,
    prompts_per_batch=grpo.eval_prompts_per_batch,
    bucket=grpo.prompt_bucket,
    mesh=mesh,
  )
  evals, history = [], []
  if eval_task is not None and start_step == 0:
    result = evaluate(params=adapter_api.combine(state.params, training.frozen))
    evals.append((0, result))
    writer.write(0, {f'eval/{k}': v for k, v in result.items()})

  compiles_before = training.train_step._cache_size()  # pylint: disable=protected-access
  # stop_step: end this call after that step, on the schedule of total_steps (a later call with
  # stop_step 0 continues the same run to the end, bit for bit), as the SFT trainer.
  last = int(config.get('stop_step', 0) or 0) or config.total_steps
  progress = range(start_step, last)
  if config.progress_bar and jax.process_index() == 0:
    progress = tqdm(progress, initial=start_step, total=last, desc='grpo')
  try:
    stop.install()
    for step in progress:
      examples = next(prompts)
      start = time.perf_counter()
      tree = adapter_api.combine(state.params, training.frozen)
      out, lengths, rewards, _ = _sample_and_score(
        model_config,
        tree,
        tokenizer,
        examples,
        task=task,
        sampling=sampling,
        key=rollout.sampling_key(config.seed, step),
        reward_fn=reward_fn,
        bucket=grpo.prompt_bucket,
        max_prompt_length=grpo.max_prompt_length,
        mesh=mesh,
      )
      generation_seconds = time.perf_counter() - start
      advantages, reward_stats = jax.device_get(
        _advantages_and_stats(
          rewards, grpo.group_size, grpo.scale_rewards, float(grpo.advantage_eps)
        )
      )
      placed = distributed.global_batch(
        {'advantages': rollout.local_rows(advantages[:, None])}, mesh, batch_rows
      )
      batch = {
        'prompt_tokens': out.prompt_tokens,
        'prompt_mask': out.prompt_mask,
        'tokens': out.tokens,
        'mask': out.mask,
        'advantages': placed['advantages'],
      }
      batch['old_log_probs'] = (
        prepare(state.params, training.frozen, batch)
        if reuse
        else np.zeros(out.tokens.shape, np.float32)
      )
      batch = {k: jax.device_put(v, training.batch_shardings[k]) for k, v in batch.items()}
      updates = []
      for _ in range(grpo.num_iterations):
        state, metrics = training.train_step(state, training.frozen, batch)
        metrics = jax.device_get(metrics)
        checkpointer.check()
        if guard.problem(metrics):
          guard.check(step, metrics, checkpointer.latest_complete_step())
        updates.append(metrics)
      seconds = time.perf_counter() - start
      scalars = _mean_metrics(updates)
      scalars.update({k: float(v) for k, v in reward_stats.items()})
      generated = float(np.sum(lengths))
      scalars.update(
        completion_length=float(np.mean(lengths)),
        step_seconds=seconds,
        generation_seconds=generation_seconds,
        generation_tokens_per_second=generated / max(generation_seconds, 1e-9),
      )
      if eval_task is not None and (
        (grpo.eval_every and (step + 1) % grpo.eval_every == 0) or step + 1 == config.total_steps
      ):
        result = evaluate(params=adapter_api.combine(state.params, training.frozen))
        evals.append((step + 1, result))
        scalars.update({f'eval/{k}': v for k, v in result.items()})
      history.append((step + 1, scalars))
      if (step + 1) % config.log_every == 0 or step + 1 in (last, config.total_steps):
        writer.write(step + 1, scalars)
      if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 in (last, config.total_steps):
        checkpointer.save(step + 1, state, prompts.get_state())
      if config.throttle_s:
        time.sleep(config.throttle_s)
      signum = stop.requested()
      if signum:
        checkpointer.save_now(step + 1, state, prompts.get_state())
        raise stop.interrupted(signum, step + 1, checkpointer.directory)
  finally:
    stop.uninstall()
    try:
      checkpointer.close()
    finally:
      writer.close()

  tree = adapter_api.combine(state.params, training.frozen)
  if last == config.total_steps:  # a call stopped early (stop_step) exports nothing yet
    export_run(config, workdir, method, tree, model_config, hf_tokenizer)
  compiles = training.train_step._cache_size() - compiles_before  # pylint: disable=protected-access
  return GRPOResult(
    state=state,
    frozen=training.frozen,
    model=model,
    tree=tree,
    tokenizer=tokenizer,
    mesh=mesh,
    metrics=history,
    evals=evals,
    start_step=start_step,
    num_compiles=compiles,
  )
