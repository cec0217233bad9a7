"""The arena's RLVR phase (``config.rlvr``; off when absent or ``enabled=False``; docs/RLVR.md,
"The arena phase").

Per method ``m`` of ``config.rlvr.methods``:

``rlvr_<m>``       GRPO (``peft_jax.rl.grpo.train``) from the base on the target's training
                   problems (the sweep's validation rows held out, as for SFT), the task's own
                   verifiable scorer as the reward, with method ``m``'s adapter settings and the
                   method's configured learning rate times ``config.rlvr.lr_factor``. The run
                   stops once at the early step (``round(early_fraction * total_steps)``), where
                   the held-out pass@k counts are drawn (``passk_early.json``), and continues to
                   the end (bit for bit the uninterrupted run), where they are drawn again. In
                   place: a killed stage resumes its run and keeps the early counts.
``eval_rlvr_<m>``  the RLVR model on every task, exactly as ``eval_<m>`` evaluates the SFT one
                   (``arena.study.stage_eval``: Target, General, per-example statistics).
``passk``          pass@k counts of the base and of each method's SFT model on the held-out
                   prompts (the first ``passk.num_prompts`` of the target's test split), drawn
                   with the same key as the RLVR ones (common random numbers), and the RLVR
                   early and late counts of the ``rlvr_<m>`` stages, in one result.

A count is the number of the ``passk.num_samples`` completions of a prompt (temperature
``passk.temperature``) that the target's scorer marks correct; ``pass_at_k`` beside it is
``evals.scorers.pass_at_k`` averaged over prompts (float32). The report recomputes every curve
in float64 from the counts (``peft_jax.report.rlvr``).

Fingerprints: ``rlvr_<m>`` reads the world slice, the resolved GRPO config (without the keys
that do not change a run), the training-prompt source, the held-out spec and the pass@k
settings; ``passk`` the world slice, the held-out spec, the pass@k settings and the seed, with
every ``train_<m>`` and ``rlvr_<m>`` as inputs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections

from peft_jax.adapters import api as adapters
from peft_jax.arena import context as context_lib
from peft_jax.arena import real_world, study
from peft_jax.arena import stages as stages_lib
from peft_jax.common import files
from peft_jax.data.suite import layout
from peft_jax.evals import tasks as tasks_lib
from peft_jax.rl import config as rl_config
from peft_jax.rl import grpo
from peft_jax.train import config as train_config_lib
from peft_jax.train import metrics as metrics_lib

PASSK = 'passk'
RUN_DIR = 'run'
EARLY_FILE = 'passk_early.json'
KEYS = ('methods', 'lr_factor', 'early_fraction', 'train_path', 'train', 'passk')
PASSK_KEYS = (
  'num_prompts',
  'num_samples',
  'ks',
  'temperature',
  'top_p',
  'max_new_tokens',
  'prompts_per_batch',
)
PROMPT_BUCKET = 32  # pass@k prompts are left-padded to a multiple of this
_PASSK_STREAM = 0x9A55  # fold_in constant of the pass@k key (the same for every model)


def train_name(method: str) -> str:
  return f'rlvr_{method}'


def eval_name(method: str) -> str:
  return f'eval_rlvr_{method}'


def settings(config: ml_collections.ConfigDict) -> Any:
  return config.get('rlvr') or None


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether the config asks for the phase: ``config.rlvr`` present with ``enabled=True``."""
  found = settings(config)
  return bool(found and found.get('enabled', False))


def checked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.rlvr``, its keys and values checked; errors name the key."""
  found = settings(config)
  stages_lib.check_keys(found, KEYS, 'config.rlvr')
  passk = found.passk
  stages_lib.check_keys(passk, PASSK_KEYS, 'config.rlvr.passk', also=())
  names = [str(m) for m in found.methods]
  outside = [m for m in names if m not in config.method_order]
  if not names or outside or len(set(names)) != len(names):
    raise ValueError(
      f'config.rlvr.methods={tuple(names)!r}: distinct methods of config.method_order '
      f'{tuple(config.method_order)} needed (not in it: {outside})'
    )
  n = int(passk.num_samples)
  ks = [int(k) for k in passk.ks]
  if not ks or any(not 1 <= k <= n for k in ks) or ks != sorted(set(ks)):
    raise ValueError(
      f'config.rlvr.passk.ks={tuple(passk.ks)!r}: increasing k in [1, num_samples={n}] needed'
    )
  if int(passk.num_prompts) < 1:
    raise ValueError(f'config.rlvr.passk.num_prompts={passk.num_prompts} must be >= 1')
  fraction = float(found.early_fraction)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'config.rlvr.early_fraction={fraction} must be in (0, 1)')
  if float(found.lr_factor) <= 0:
    raise ValueError(f'config.rlvr.lr_factor={found.lr_factor} must be > 0')
  return found


def methods(config: ml_collections.ConfigDict) -> list[str]:
  return [str(m) for m in checked(config).methods] if enabled(config) else []


def prompts_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The GRPO training prompts: ``config.rlvr.train_path`` when set (a file of the target's task
  type), else ``<workdir>/splits/<target>_rlvr_prompts.jsonl``, written by :func:`write_prompts`."""
  given = str(checked(config).train_path or '')
  if given:
    return os.path.abspath(given)
  return os.path.join(workdir, context_lib.SPLITS_DIR, f'{config.target}_rlvr_prompts.jsonl')


def held_out_rows(config: ml_collections.ConfigDict) -> int:
  """Training problems held out of the prompts: the sweep's validation rows (as for SFT)."""
  return int(config.sweep.validation_size) if context_lib.sweep_enabled(config) else 0


def write_prompts(config: ml_collections.ConfigDict, plan, workdir: str) -> str:
  """Writes the suite target's training problems without the validation rows (nothing for a
  given ``train_path``); returns the prompts file."""
  path = prompts_path(config, workdir)
  if checked(config).train_path:
    if not os.path.exists(path):
      raise FileNotFoundError(f'config.rlvr.train_path={path!r} does not exist')
    return path
  if plan.suite_dir is None:
    raise ValueError(
      'config.rlvr in a custom world needs config.rlvr.train_path (a file of the target task '
      'type holding its training problems)'
    )
  with open(layout.split_path(plan.suite_dir, config.target, 'train')) as f:
    rows = [line for line in f if line.strip()]
  held = held_out_rows(config)
  files.write_text(path, ''.join(rows[: len(rows) - held]))
  return path


def target_spec(config: ml_collections.ConfigDict, plan) -> dict:
  found = [s for s in plan.task_specs if (s.get('name') or s['type']) == config.target]
  if not found:
    raise ValueError(f'config.target={config.target!r} is not an evaluated task')
  return dict(found[0])


def held_out_spec(config: ml_collections.ConfigDict, plan) -> dict:
  """The pass@k prompts: the first ``passk.num_prompts`` of the target's test split."""
  passk = checked(config).passk
  spec = dict(target_spec(config, plan), limit=int(passk.num_prompts))
  if int(passk.max_new_tokens):
    spec['max_new_tokens'] = int(passk.max_new_tokens)
  return spec


def grpo_config(
  config: ml_collections.ConfigDict,
  plan,
  workdir: str,
  method: str,
  method_train_config: Callable[..., ml_collections.ConfigDict],
) -> ml_collections.ConfigDict:
  """The GRPO config of method ``method``: ``rl.config.default_config()`` with the method's
  arena model, adapter, seed and mesh (``method_train_config``), its peak learning rate times
  ``lr_factor``, then ``config.rlvr.train``'s overrides, the target as the task (its spec with
  the prompts file as path) and one checkpoint at the end."""
  found = checked(config)
  train = method_train_config(config, method, plan.base_dir, '')
  c = rl_config.default_config()
  c.seed = int(train.seed)
  c.model = ml_collections.ConfigDict(train.model.to_dict())
  c.adapter = ml_collections.ConfigDict(train.adapter.to_dict())
  c.logical_axis_rules = tuple(train.logical_axis_rules)
  c.mesh_shape = tuple(train.mesh_shape)
  c.data.tokenizer = 'model'
  c.optimizer.peak_lr = float(train.optimizer.peak_lr) * float(found.lr_factor)
  c = train_config_lib.with_overrides(c, found.train, where='config.rlvr.train')
  spec = {k: v for k, v in target_spec(config, plan).items() if k != 'limit'}
  c.grpo.task = ml_collections.ConfigDict(dict(spec, path=prompts_path(config, workdir)))
  c.checkpoint.every_steps = int(c.total_steps)
  c.checkpoint.keep = 1
  c.progress_bar = bool(config.progress_bar)
  if int(c.total_steps) < 2:
    raise ValueError(
      f'config.rlvr.train.total_steps={c.total_steps}: the early checkpoint needs >= 2 steps'
    )
  rl_config.validate(c)
  return c


def early_step(config: ml_collections.ConfigDict, total_steps: int) -> int:
  fraction = float(checked(config).early_fraction)
  return min(max(1, round(fraction * total_steps)), total_steps - 1)


def passk_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(int(seed)), _PASSK_STREAM)


def passk_settings(config: ml_collections.ConfigDict) -> dict:
  return checked(config).passk.to_dict()


def passk_entry(model, params, tokenizer, task, passk: Mapping[str, Any], seed: int) -> dict:
  """Per-prompt correct counts of ``params`` on the held-out ``task`` and their mean pass@k."""
  start = time.perf_counter()
  n = int(passk['num_samples'])
  counts, rewards = grpo.correct_counts(
    model,
    params,
    tokenizer,
    task,
    num_samples=n,
    key=passk_key(seed),
    temperature=float(passk['temperature']),
    top_p=float(passk['top_p']),
    max_new_tokens=int(passk['max_new_tokens']) or None,
    prompts_per_batch=int(passk['prompts_per_batch']),
    bucket=PROMPT_BUCKET,
  )
  return {
    'counts': [int(c) for c in counts],
    'num_samples': n,
    'pass_at_k': grpo.mean_pass_at_ks(counts, n, [int(k) for k in passk['ks']]),
    'mean_reward': float(rewards.mean()),
    'seconds': time.perf_counter() - start,
  }


def stage_rlvr(
  c: ml_collections.ConfigDict,
  method: str,
  heldout: dict,
  passk: Mapping[str, Any],
  early: int,
  write: Callable[[], str],
  cache: dict,
  out_dir: str,
) -> dict:
  """Runs (or resumes) the GRPO run in ``out_dir/run`` with its early and late pass@k counts."""
  write()
  run_dir = os.path.join(out_dir, RUN_DIR)
  task = tasks_lib.load_task(heldout)
  early_path = os.path.join(out_dir, EARLY_FILE)
  if os.path.exists(early_path):
    with open(early_path) as f:
      early_entry = json.load(f)
  else:
    stopped = ml_collections.ConfigDict(c.to_dict())
    stopped.stop_step = int(early)
    result, _ = study.timed_attempt(run_dir, lambda: grpo.train(stopped, run_dir))
    if result.start_step > early:
      raise RuntimeError(
        f'{run_dir} is past step {early} but {early_path} is missing; delete {out_dir} to rerun'
      )
    tree = jax.device_get(result.tree)
    early_entry = dict(
      passk_entry(result.model, tree, result.tokenizer, task, passk, c.seed), step=int(early)
    )
    files.write_json(early_path, early_entry)
  result, seconds = study.timed_attempt(run_dir, lambda: grpo.train(c, run_dir))
  cache['result'] = result
  tree = jax.device_get(result.tree)
  late_entry = dict(
    passk_entry(result.model, tree, result.tokenizer, task, passk, c.seed),
    step=int(c.total_steps),
  )
  history = metrics_lib.read_metrics(run_dir)
  counts = adapters.count_params(tree)
  return {
    'method': method,
    'steps': int(c.total_steps),
    'early_step': int(early),
    'peak_lr': float(c.optimizer.peak_lr),
    'train_time_s': seconds,
    'run_dir': run_dir,
    'trainable_params': int(counts['trainable']),
    'step': [int(m['step']) for m in history],
    'reward_mean': [float(m['reward_mean']) for m in history],
    'zero_variance_fraction': [float(m['zero_variance_fraction']) for m in history],
    'kl': [float(m['kl']) for m in history],
    # 1.0 where grpo.skip_no_signal left the step's update out (every group's rewards equal).
    'skipped': [float(m.get('skipped', 0.0)) for m in history],
    'completion_length': [float(m['completion_length']) for m in history],
    'passk': {'early': early_entry, 'late': late_entry},
  }


def add_stages(
  graph,
  config: ml_collections.ConfigDict,
  plan,
  slices: Mapping[str, dict],
  get_ctx: Callable,
  workdir: str,
  *,
  method_train_config: Callable[..., ml_collections.ConfigDict],
  train_slice: Callable[[ml_collections.ConfigDict], dict],
) -> list[str]:
  """Declares the phase's stages on ``graph`` (``graph.trees[m]()``: method m's SFT tree);
  returns their names (none when ``config.rlvr`` is off)."""
  if not enabled(config):
    return []
  chosen = methods(config)
  heldout = held_out_spec(config, plan)
  passk = passk_settings(config)
  source = (
    {'train_path': context_lib.path_identity(prompts_path(config, workdir))}
    if checked(config).train_path
    else {'suite_train_split': config.target, 'held_out_rows': held_out_rows(config)}
  )
  common = dict(slices['world'], heldout=heldout, passk=passk)
  names = []
  for method in chosen:
    c = grpo_config(config, plan, workdir, method, method_train_config)
    early = early_step(config, int(c.total_steps))
    cache: dict = {}
    graph.resident[train_name(method)] = cache  # one run in memory at a time (_Graph.hold)

    def result(c=c, cache=cache, method=method):
      if 'result' not in cache:  # a finished run restores; runs no step
        graph.hold(train_name(method))
        cache['result'] = grpo.train(
          c, os.path.join(graph.runner.path(train_name(method)), RUN_DIR)
        )
      return cache['result']

    def tree(cache=cache, result=result, method=method):
      if 'tree' not in cache:
        graph.hold(train_name(method))
        cache['tree'] = jax.device_get(result().tree)
        cache.pop('result')
      return cache['tree']

    graph.add(
      train_name(method),
      dict(common, grpo=train_slice(c), prompts=source, early_step=early),
      fn=lambda d, c=c, method=method, early=early, cache=cache: stage_rlvr(
        c,
        method,
        heldout,
        passk,
        early,
        lambda: write_prompts(config, plan, workdir),
        cache,
        d,
      ),
      in_place=True,
      holds=train_name(method),  # the previous run's weights go before this one trains
    )
    graph.add(
      eval_name(method),
      slices['eval'],
      [train_name(method)] + real_world.extra_eval_inputs(config),
      lambda d, tree=tree: study.stage_eval(get_ctx(), tree(), d),
    )
    names += [train_name(method), eval_name(method)]

  def passk_fn(d):
    del d
    ctx = get_ctx()
    task = tasks_lib.load_task(heldout)
    seed = int(config.seed)
    out = {
      'task': config.target,
      'num_prompts': len(task.examples),
      'num_samples': int(passk['num_samples']),
      'ks': [int(k) for k in passk['ks']],
      'base': passk_entry(ctx.model, ctx.base_params, ctx.tokenizer, task, passk, seed),
      'methods': {},
    }
    for method in chosen:
      rl = graph.runner.result(train_name(method))['passk']
      out['methods'][method] = {
        'sft': passk_entry(ctx.model, graph.trees[method](), ctx.tokenizer, task, passk, seed),
        'early': rl['early'],
        'late': rl['late'],
      }
    return out

  graph.add(
    PASSK,
    dict(common, seed=int(config.seed), methods=chosen),
    [f'train_{m}' for m in chosen] + [train_name(m) for m in chosen],
    fn=passk_fn,
  )
  return names + [PASSK]
