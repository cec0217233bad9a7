"""The PEFT-Arena study end to end: fine-tune with every method, evaluate, analyse, report.

``run_arena(config, workdir)`` runs these stages (``peft_jax.arena.stages``: each writes its own
folder atomically and is skipped when rerun):

``base_eval``          the base model on every target and general task
``train_<m>``          fine-tune the base on the target's SFT split with method m (resumable)
``eval_<m>``           the fine-tuned model on every task (adapters merged, DISeL unmerged)
``geometry_<m>``       weight spectra of every adapted kernel; activation CKA / Procrustes / Gram
                       per layer; CSD of every adapted kernel on general vs target inputs
``paths_<m>``          interpolation θ0 + α(θ1 − θ0) and the method's own rewinding path on an
                       α-grid, each grid generated as one batched (vmapped) program
``disel_gates``        DISeL gate activations per module and rank component, general vs target
``drift``              the capability-drift matrix over all trained adapters
``report``             ``<workdir>/report/index.html`` + ``index.md`` + PNGs

Every number in the report is read from these stage outputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from peft_jax.arena import stages as stages_lib

PyTree = Any
GENERAL_KIND, TARGET_KIND = 'general', 'target'


# ------------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------------

def suite_task_specs(suite_dir: str, limits: Mapping[str, int],
                     max_new_tokens: Mapping[str, int]) -> list[dict]:
  """Evaluation task specs over the offline suite's test splits.

  The suite writes its SFT prompts with the evaluation's default templates and chat settings
  (IFEval and NQ chat-formatted, BBH and the targets plain), so the specs keep those defaults.
  """
  from peft_jax.data import suite as suite_lib  # pylint: disable=g-import-not-at-top
  specs = [
      dict(type='ifeval', name='ifeval', path=os.path.join(suite_dir, 'general',
                                                           'ifeval_test.jsonl')),
      dict(type='nq_open', name='nq', path=os.path.join(suite_dir, 'general', 'nq_test.jsonl')),
      dict(type='bbh', name='bbh', path=os.path.join(suite_dir, 'general', 'bbh', 'test')),
  ]
  for target in suite_lib.TARGET_TASKS:
    specs.append(dict(type='gsm8k', name=target, kind=TARGET_KIND,
                      path=os.path.join(suite_dir, 'targets', f'{target}_test.jsonl')))
  for spec in specs:
    spec['limit'] = int(limits[spec['name']])
    spec['max_new_tokens'] = int(max_new_tokens[spec['name']])
  return specs


def custom_task_specs(config: ml_collections.ConfigDict) -> list[dict]:
  """Task specs given explicitly in ``config.tasks`` (the 'custom' preset)."""
  return [dict(spec) for spec in config.tasks]


def load_tasks(specs: Sequence[Mapping[str, Any]]):
  from peft_jax.evals import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  return [tasks_lib.load_task(spec) for spec in specs]


def axes_from_scores(tasks, scores: Mapping[str, float]) -> dict[str, float]:
  """PEFT-Arena's axes on a 0-1 scale: mean target and mean general task score."""
  out = {}
  for kind in (TARGET_KIND, GENERAL_KIND):
    values = [scores[t.name] for t in tasks if t.kind == kind]
    out[kind] = float(np.mean(values)) if values else float('nan')
  return out


# ------------------------------------------------------------------------------------------------
# Generation for one model or a stack of models (the α-grid)
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Generator:
  """Greedy batched generation for one params tree or a stack of them.

  With ``stacked=True`` the leaves of ``params`` carry a leading grid axis ``[A, ...]`` and every
  call generates for all A models in one vmapped program; :meth:`fn` gives the harness's
  ``generate_fn`` of grid point ``i``, served from a cache so each prompt batch runs once.
  """

  model: Any
  params: PyTree
  tokenizer: Any
  stacked: bool = False
  length_bucket: int = 32

  def __post_init__(self):
    self._cache: dict[tuple, list[list[str]]] = {}

  def _run(self, prompts: Sequence[str], max_new_tokens: int, chat: bool) -> list[list[str]]:
    from peft_jax.hub import tokenizer as hub_tokenizer  # pylint: disable=g-import-not-at-top
    key = (tuple(prompts), int(max_new_tokens), bool(chat))
    if key in self._cache:
      return self._cache[key]
    tokens, mask = hub_tokenizer.encode_prompts(self.tokenizer, list(prompts), chat=chat,
                                                pad_to_multiple_of=self.length_bucket)
    config = self.model.config
    eos = tuple(int(e) for e in (config.eos_token_ids or (self.tokenizer.eos_token_id,)))
    pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
    run = _generate_program(config, int(max_new_tokens), eos, int(pad), self.stacked)
    out = run(self.params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32),
              jax.random.key(0))
    out_tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    if not self.stacked:
      out_tokens, lengths = out_tokens[None], lengths[None]
    eos_set = set(eos)
    texts = [[self.tokenizer.decode([int(t) for t in row[:n] if int(t) not in eos_set],
                                    skip_special_tokens=True)
              for row, n in zip(grid_tokens, grid_lengths)]
             for grid_tokens, grid_lengths in zip(out_tokens, lengths)]
    self._cache[key] = texts
    return texts

  def fn(self, index: int = 0):
    """``generate_fn(prompts, *, max_new_tokens, chat, temperature, key) -> list[str]``."""
    def generate_fn(prompts, *, max_new_tokens, chat, temperature, key):
      del key
      if temperature:
        raise ValueError('the arena decodes greedily (temperature 0)')
      return self._run(prompts, max_new_tokens, chat)[index]
    return generate_fn


@functools.lru_cache(maxsize=None)
def _generate_program(config, max_new_tokens: int, eos: tuple[int, ...], pad: int, stacked: bool):
  """Greedy decoding ``(params, tokens, mask, key) -> GenerationOutput``, compiled once per
  setting and shape; ``stacked``: vmapped over the params' leading (grid) axis, one program."""
  # The package re-exports a function named `generate`: import the module's jitted core by path.
  from peft_jax.models.generate import _generate  # pylint: disable=g-import-not-at-top
  run = functools.partial(_generate, config=config, max_new_tokens=max_new_tokens,
                          temperature=0.0, top_k=0, top_p=1.0, eos_token_ids=eos,
                          pad_token_id=pad)
  return jax.jit(jax.vmap(run, in_axes=(0, None, None, None))) if stacked else run


def evaluate_scores(generate_fn, tasks, batch_size: int, out_dir: Optional[str] = None
                    ) -> dict[str, Any]:
  from peft_jax.evals import harness  # pylint: disable=g-import-not-at-top
  summary = harness.evaluate(None, None, None, tasks, key=jax.random.key(0),
                             batch_size=batch_size, out_dir=out_dir, generate_fn=generate_fn)
  scores = {name: float(r['score']) for name, r in summary['tasks'].items()}
  return {'tasks': scores, **axes_from_scores(tasks, scores)}


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------

def method_train_config(config: ml_collections.ConfigDict, method: str, base_dir: str,
                        data_path: str) -> ml_collections.ConfigDict:
  """The training config of one method (``peft_jax.train`` defaults + the arena's settings)."""
  from peft_jax.train.config import default_config  # pylint: disable=g-import-not-at-top
  settings = config.methods[method]
  train = default_config()
  train.seed = config.seed
  train.model.path = str(base_dir)
  train.adapter.method = method
  train.adapter.kwargs = dict(settings.get('kwargs', {}))
  if isinstance(config.adapter_targets, str):  # a regex or 'all-linear'
    train.adapter.target_regex = config.adapter_targets
  else:
    train.adapter.targets = tuple(config.adapter_targets)
  train.data = ml_collections.ConfigDict(dict(
      path=data_path, split='train', tokenizer='model', seq_len=config.train.seq_len,
      packing=True, shuffle=True))
  train.batch_size = config.train.batch_size
  train.total_steps = int(settings.get('steps', config.train.steps))
  train.optimizer.peak_lr = float(settings.lr)
  train.optimizer.warmup_steps = int(config.train.warmup_steps)
  train.optimizer.weight_decay = float(config.train.weight_decay)
  if method == 'disel':
    from peft_jax.adapters.disel import DISeL  # pylint: disable=g-import-not-at-top
    train.optimizer.lr_groups = ((DISeL.gate_param_regex, float(settings.get('gate_lr_mult', 1.0))),)
  train.checkpoint.every_steps = int(config.train.checkpoint_every)
  train.checkpoint.keep = 1
  train.checkpoint.snapshot_every = int(config.train.snapshot_every)
  train.log_every = 1
  train.progress_bar = bool(config.progress_bar)
  train.mesh_shape = tuple(config.mesh_shape)
  return train


def _host(tree):
  return jax.device_get(tree)


def plain_params(tree, method: str):
  """The plain (merged) params of a trained tree; ``None`` when the method can't merge exactly."""
  from peft_jax.adapters import api  # pylint: disable=g-import-not-at-top
  if method == 'full':
    return tree
  if method == 'disel':  # input-dependent gates: no exact merged weight
    return None
  return api.merge(tree)


def _scaled_disel(tree, t: float):
  """DISeL's own path: the gated update scaled by t (B -> t B), evaluated unmerged."""
  from peft_jax.adapters import core  # pylint: disable=g-import-not-at-top

  def scale(node):
    if not isinstance(node, core.Adapted):
      return node
    params = dict(node.params, lora_b=node.params['lora_b'] * t)
    return core.Adapted(node.base, params, node.frozen, node.method)

  return jax.tree.map(scale, tree, is_leaf=lambda x: isinstance(x, core.Adapted))


def _stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------

def capture_activations(model, params, tokenizer, prompts: Sequence[str], names: Sequence[str],
                        length_bucket: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Captured activations of ``prompts`` (chat-rendered): ``({name: [B, T, d]}, mask [B, T])``."""
  from peft_jax.hub import tokenizer as hub_tokenizer  # pylint: disable=g-import-not-at-top
  tokens, mask = hub_tokenizer.encode_prompts(tokenizer, list(prompts), chat=True,
                                              pad_to_multiple_of=length_bucket)

  forward = _capture_program(model.config, tuple(names))
  captures = forward(params, jnp.asarray(tokens), jnp.asarray(mask))
  return {k: np.asarray(v, np.float32) for k, v in captures.items()}, np.asarray(mask)


@functools.lru_cache(maxsize=None)
def _capture_program(config, names: tuple[str, ...]):
  """Jitted forward returning the captured activations (one compile per config/names/shape)."""
  from peft_jax.models import Decoder  # pylint: disable=g-import-not-at-top
  model = Decoder(config)

  @jax.jit
  def forward(params, tokens, mask):
    _, captures = model.apply({'params': params}, tokens, attention_mask=mask, capture=names)
    return captures

  return forward


def _flat_tokens(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  return x.reshape(-1, x.shape[-1])[mask.reshape(-1).astype(bool)]


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ArenaContext:
  config: ml_collections.ConfigDict
  workdir: str
  base_dir: str
  suite_dir: Optional[str]
  model: Any
  base_params: PyTree
  tokenizer: Any
  tasks: list
  path_tasks: list
  target_train_path: str
  general_prompts: list
  target_prompts: list


def _resolve_world(config, workdir) -> tuple[str, Optional[str]]:
  """(base model dir, suite dir or None) for the configured world."""
  from peft_jax import hub  # pylint: disable=g-import-not-at-top
  from peft_jax.arena import world  # pylint: disable=g-import-not-at-top
  base_dir = str(hub.resolve_path(config.base))
  if config.world == 'bundled':
    meta_path = os.path.join(base_dir, 'suite.json')
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f'{base_dir} has no suite.json (the seed and sizes of the suite it '
                              'was pretrained on); the bundled world needs it')
    with open(meta_path) as f:
      meta = json.load(f)
    suite_dir = os.path.join(workdir, 'suite')
    world.ensure_suite(suite_dir, int(meta['seed']), meta.get('sizes') or {})
    return base_dir, suite_dir
  if config.world == 'custom':
    return base_dir, None
  raise ValueError(f"config.world={config.world!r}; valid: 'bundled', 'custom'")


def build_context(config, workdir) -> ArenaContext:
  from peft_jax import hub  # pylint: disable=g-import-not-at-top
  base_dir, suite_dir = _resolve_world(config, workdir)
  model, params, tokenizer = hub.load_pretrained(base_dir)
  if tokenizer is None:
    raise FileNotFoundError(f'{base_dir} has no tokenizer files; the arena needs one')
  if suite_dir is not None:
    specs = suite_task_specs(suite_dir, config.eval.limits, config.eval.max_new_tokens)
    path_specs = suite_task_specs(suite_dir, config.paths.limits, config.eval.max_new_tokens)
    target_train = os.path.join(suite_dir, 'sft', f'{config.target}.jsonl')
  else:
    specs = custom_task_specs(config)
    path_specs = [dict(s, limit=config.paths.limit) for s in specs]
    target_train = config.target_train_path
  tasks = load_tasks(specs)
  path_tasks = load_tasks(path_specs)
  names = [t.name for t in tasks]
  if config.target not in names:
    raise ValueError(f'config.target={config.target!r} is not an evaluated task; tasks: {names}')
  n = int(config.geometry.num_prompts)
  general_prompts = [e.prompt for t in tasks if t.kind == GENERAL_KIND for e in t.examples]
  target_prompts = [e.prompt for t in tasks if t.name == config.target for e in t.examples]
  rng = np.random.default_rng(config.seed)
  general_prompts = [general_prompts[i] for i in sorted(
      rng.choice(len(general_prompts), min(n, len(general_prompts)), replace=False))]
  target_prompts = target_prompts[:n]
  return ArenaContext(config=config, workdir=workdir, base_dir=base_dir, suite_dir=suite_dir,
                      model=model, base_params=params, tokenizer=tokenizer, tasks=tasks,
                      path_tasks=path_tasks, target_train_path=target_train,
                      general_prompts=general_prompts, target_prompts=target_prompts)


def stage_base_eval(ctx: ArenaContext, out_dir: str) -> dict:
  generator = Generator(ctx.model, ctx.base_params, ctx.tokenizer)
  return evaluate_scores(generator.fn(), ctx.tasks, ctx.config.eval.batch_size, out_dir)


def _train_step_memory_mb(result) -> float:
  """Device memory of the compiled train step (arguments + outputs + temporaries − aliased), MB.

  This is XLA's own accounting of the step program (``memory_analysis``), the same on CPU and
  accelerators, rather than a noisy process RSS.
  """
  stats = result.lower_step().compile().memory_analysis()
  if stats is None:
    return float('nan')
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes +
           stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return total / 2**20


def trained_tree(ctx: ArenaContext, method: str, run_dir: str):
  """Trains (or, when the run is complete, just restores) method's tree: ``TrainResult``."""
  from peft_jax.train import trainer  # pylint: disable=g-import-not-at-top
  cfg = method_train_config(ctx.config, method, ctx.base_dir, ctx.target_train_path)
  return trainer.train(cfg, run_dir)


def stage_train(ctx: ArenaContext, method: str, out_dir: str) -> dict:
  from peft_jax.adapters import api  # pylint: disable=g-import-not-at-top
  from peft_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  result = trained_tree(ctx, method, os.path.join(out_dir, 'run'))
  seconds = time.perf_counter() - start
  tree = _host(result.tree)
  if method == 'full':
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    counts = {'trainable': total, 'total': total}
  else:
    counts = api.count_params(tree)
  history = metrics_lib.read_metrics(os.path.join(out_dir, 'run'))
  return {'method': method, 'train_time_s': seconds, 'num_compiles': result.num_compiles,
          'trainable_params': int(counts['trainable']), 'total_params': int(counts['total']),
          'peak_memory_mb': _train_step_memory_mb(result),
          'train_loss': [float(m['loss']) for m in history],
          'final_loss': float(history[-1]['loss']) if history else float('nan')}


def stage_eval(ctx: ArenaContext, method: str, tree, out_dir: str) -> dict:
  plain = plain_params(tree, method)
  generator = Generator(ctx.model, plain if plain is not None else tree, ctx.tokenizer)
  return evaluate_scores(generator.fn(), ctx.tasks, ctx.config.eval.batch_size, out_dir)


def _adapted_kernel_paths(tree, method: str) -> list[str]:
  from peft_jax.adapters import api  # pylint: disable=g-import-not-at-top
  if method == 'full':
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat]
    return [n[:-len('/kernel')] for n in names if n.endswith('/kernel') and 'layers_' in n]
  return [p[:-len('/kernel')] if p.endswith('/kernel') else p for p in api.adapted_nodes(tree)]


def module_params(tree, path: str):
  node = tree
  for part in path.split('/'):
    node = node[part]
  return node


def stage_geometry(ctx: ArenaContext, method: str, tree, out_dir: str) -> dict:
  """Spectra + CSD for every adapted kernel, activation metrics per layer."""
  cfg = ctx.config.geometry
  modules = _adapted_kernel_paths(tree, method)
  # ΔW of DISeL is input-dependent; its spectra use the expected update over general inputs.
  merged = plain_params(tree, method)
  base = ctx.base_params
  disel_expected = {}
  gen_caps, gen_mask = capture_activations(ctx.model, base, ctx.tokenizer, ctx.general_prompts,
                                           ['residual'] + modules)
  tgt_caps, tgt_mask = capture_activations(ctx.model, base, ctx.tokenizer, ctx.target_prompts,
                                           modules)
  if merged is None:
    for m in modules:
      node = module_params(tree, m)['kernel']
      xs = jnp.asarray(_flat_tokens(gen_caps[f'{m}/in'], gen_mask))
      disel_expected[m] = np.asarray(node.base + node.method.expected_delta(node, xs))
  spectral, csd_rows, arrays = {}, [], {}
  weight_metrics, csd_metrics = _weight_programs()
  for m in modules:
    w0 = jnp.asarray(module_params(base, m)['kernel'])
    w1 = jnp.asarray(disel_expected[m] if merged is None else module_params(merged, m)['kernel'])
    summary, retention, energy = weight_metrics(w0, w1)
    spectral[m] = {k: float(v) for k, v in summary._asdict().items() if np.ndim(v) == 0}
    arrays[f'retention/{m}'] = np.asarray(retention)
    arrays[f'energy/{m}'] = np.asarray(energy)
    comparison = csd_metrics(jnp.asarray(gen_caps[f'{m}/in']), jnp.asarray(tgt_caps[f'{m}/in']),
                             w0, w1, jnp.asarray(gen_mask), jnp.asarray(tgt_mask))
    csd_rows.append({'module': m, **{k: float(v) for k, v in _flatten_named(comparison).items()}})
  # Activation geometry on the residual stream, base vs fine-tuned on general prompts: all layers
  # in one vmapped program.
  ft_params = merged if merged is not None else tree
  ft_caps, _ = capture_activations(ctx.model, ft_params, ctx.tokenizer, ctx.general_prompts,
                                   ['residual'])
  layers = list(range(ctx.model.config.num_layers))
  x0 = jnp.stack([gen_caps[f'layers_{i}/residual'] for i in layers])
  x1 = jnp.stack([ft_caps[f'layers_{i}/residual'] for i in layers])
  per_layer = activation_program(int(cfg.gram_max_tokens))(
      x0, x1, jnp.asarray(gen_mask), jax.random.key(ctx.config.seed))
  per_layer = {k: np.asarray(v).tolist() for k, v in per_layer.items()}
  cka, procrustes, gram, raw = (per_layer[k] for k in ('cka', 'procrustes', 'gram', 'raw'))
  np.savez(os.path.join(out_dir, 'profiles.npz'), **arrays)
  chosen = cfg.module if cfg.module in modules else modules[0]
  return {'modules': modules, 'spectral': spectral,
          'chosen_module': chosen,
          'retention': arrays[f'retention/{chosen}'].tolist(),
          'energy': arrays[f'energy/{chosen}'].tolist(),
          'activation': {'layers': layers, 'cka': cka, 'procrustes': procrustes, 'gram': gram,
                         'raw_residual': raw},
          'csd': csd_rows,
          'delta_kind': 'expected_over_general_inputs' if merged is None else 'merged'}


@functools.lru_cache(maxsize=None)
def _weight_programs():
  """Jitted per-kernel programs (compiled once per shape, reused across modules and methods)."""
  from peft_jax import geometry  # pylint: disable=g-import-not-at-top

  @jax.jit
  def weight_metrics(w0, w1):
    return (geometry.spectral_summary(w0, w1), geometry.retention_profile(w0, w1),
            geometry.update_energy_profile(w0, w1))

  @jax.jit
  def csd_metrics(h_general, h_target, w0, w1, general_mask, target_mask):
    return geometry.csd_general_vs_target(h_general, h_target, w0, w1,
                                          general_mask=general_mask, target_mask=target_mask)

  return weight_metrics, csd_metrics


@functools.lru_cache(maxsize=None)
def activation_program(gram_max_tokens: int):
  """``(x0 [L, B, T, d], x1, mask [B, T], key) -> {metric: [L]}``, vmapped over layers."""
  from peft_jax import geometry  # pylint: disable=g-import-not-at-top

  def one_layer(x0, x1, mask, key):
    return {'cka': geometry.linear_cka(x0, x1, mask=mask),
            'procrustes': geometry.procrustes_residual(x0, x1, mask=mask),
            'raw': geometry.raw_residual(x0, x1, mask=mask),
            'gram': geometry.gram_distortion(x0, x1, mask=mask, key=key,
                                             max_tokens=gram_max_tokens)}

  return jax.jit(jax.vmap(one_layer, in_axes=(0, 0, None, None)))


def _flatten_named(value, prefix: str = '') -> dict[str, Any]:
  """Scalars of a (nested) NamedTuple as ``{'a/b': float}``."""
  out = {}
  items = value._asdict().items() if hasattr(value, '_asdict') else dict(value).items()
  for k, v in items:
    name = f'{prefix}{k}'
    if hasattr(v, '_asdict') or isinstance(v, Mapping):
      out.update(_flatten_named(v, name + '/'))
    elif np.ndim(v) == 0:
      out[name] = float(v)
  return out


def _same_stack(a, b, tol: float = 1e-6) -> bool:
  """Whether two stacked params trees hold the same kernels (relative max-abs ``tol``)."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(float(jnp.max(jnp.abs(x - y))) <= tol * (1.0 + float(jnp.max(jnp.abs(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def stage_paths(ctx: ArenaContext, method: str, tree, out_dir: str) -> dict:
  """Interpolation and the method's own rewinding path, each α-grid one vmapped program."""
  from peft_jax import geometry  # pylint: disable=g-import-not-at-top
  from peft_jax.adapters import api  # pylint: disable=g-import-not-at-top
  alphas = np.asarray(ctx.config.paths.alphas, np.float32)
  batch = ctx.config.eval.batch_size
  results = {'alpha': alphas.tolist()}
  merged = plain_params(tree, method)
  if merged is not None:
    interp = geometry.alpha_grid_params(ctx.base_params, merged, jnp.asarray(alphas))
    if method == 'full':
      rewind, kind = None, 'additive'
    else:
      # OFT: PEFT-Arena scales the Cayley generator as sqrt(α) Q (papers.md §1.5).
      schedule = (jnp.sqrt if method == 'oft' and ctx.config.paths.oft_generator_schedule == 'sqrt'
                  else None)
      rewind = geometry.method_path_grid(tree, jnp.asarray(alphas), api.path, schedule=schedule)
      kind = 'cayley' if method == 'oft' else 'additive'
  else:  # DISeL: both paths scale the gated update (the only exact path of an input-dependent ΔW)
    interp = _stack([_scaled_disel(tree, float(a)) for a in alphas])
    rewind, kind = None, 'additive'
  for name, stacked in (('interpolation', interp), ('rewind', rewind)):
    if stacked is None or (name == 'rewind' and _same_stack(stacked, interp)):
      # The method's own path is linear interpolation itself (additive methods: W0 + αΔW).
      results[name] = dict(results['interpolation'], kind=kind, same_as_interpolation=True)
      continue
    generator = Generator(ctx.model, stacked, ctx.tokenizer, stacked=True)
    curve = {'target': [], 'general': [], 'tasks': []}
    for i in range(len(alphas)):
      scores = evaluate_scores(generator.fn(i), ctx.path_tasks, batch)
      curve['target'].append(scores['tasks'][ctx.config.target])
      curve['general'].append(scores[GENERAL_KIND])
      curve['tasks'].append(scores['tasks'])
    curve['kind'] = kind if name == 'rewind' else 'linear'
    best = geometry.best_tradeoff(jnp.asarray(alphas), jnp.asarray(curve['target']),
                                  jnp.asarray(curve['general']), ctx.config.paths.tradeoff_weight)
    curve['best'] = {'alpha': float(best[0]), 'index': int(best[1]), 'score': float(best[2]),
                     'weight': float(ctx.config.paths.tradeoff_weight)}
    results[name] = curve
  return results


def stage_disel_gates(ctx: ArenaContext, tree, out_dir: str) -> dict:
  """Mean DISeL gate value per adapted module and rank component, general vs target prompts."""
  from peft_jax.adapters import api  # pylint: disable=g-import-not-at-top
  modules = _adapted_kernel_paths(tree, 'disel')
  out = {'layers': modules, 'general': [], 'target': []}
  for kind, prompts in (('general', ctx.general_prompts), ('target', ctx.target_prompts)):
    caps, mask = capture_activations(ctx.model, tree, ctx.tokenizer, prompts, modules)
    for m in modules:
      node = module_params(tree, m)['kernel']
      xs = jnp.asarray(_flat_tokens(caps[f'{m}/in'], mask))
      out[kind].append(np.asarray(node.method.gate_values(node, xs)).mean(axis=0).tolist())
  del api
  return out


def stage_drift(ctx: ArenaContext, base_scores, method_scores, out_dir: str) -> dict:
  from peft_jax.evals import drift  # pylint: disable=g-import-not-at-top
  adapters = [drift.AdapterScores(name=m, label=ctx.config.target, nominal_task=ctx.config.target,
                                  scores=s, config_id=f'seed{ctx.config.seed}')
              for m, s in method_scores.items()]
  report = drift.drift_report(base_scores, adapters)
  drift.write_drift_outputs(report, out_dir)
  return report


def run_arena(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole study in ``workdir``; returns the report's results dict."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  started = time.perf_counter()
  ctx = build_context(config, workdir)
  methods = list(config.method_order)
  total = 1 + 4 * len(methods) + ('disel' in methods) + 2
  progress = tqdm(total=total, desc='arena', disable=not config.progress_bar)
  runner = stages_lib.StageRunner(workdir, progress)

  base = runner.run('base_eval', lambda d: stage_base_eval(ctx, d))
  per_method = {}
  for method in methods:
    train = runner.run(f'train_{method}', lambda d, m=method: stage_train(ctx, m, d),
                       in_place=True)
    tree_holder = {}

    def tree(m=method):
      if m not in tree_holder:  # restore the finished run only when a later stage needs it
        tree_holder[m] = _host(trained_tree(ctx, m, os.path.join(runner.path(f'train_{m}'),
                                                                 'run')).tree)
      return tree_holder[m]

    evaluation = runner.run(f'eval_{method}', lambda d, m=method: stage_eval(ctx, m, tree(m), d))
    geometry_result = runner.run(f'geometry_{method}',
                                 lambda d, m=method: stage_geometry(ctx, m, tree(m), d))
    paths = runner.run(f'paths_{method}', lambda d, m=method: stage_paths(ctx, m, tree(m), d))
    per_method[method] = {'train': train, 'eval': evaluation, 'geometry': geometry_result,
                          'paths': paths}
    if method == 'disel':
      per_method[method]['gates'] = runner.run('disel_gates',
                                               lambda d, m=method: stage_disel_gates(ctx, tree(m), d))
  drift_result = runner.run('drift', lambda d: stage_drift(
      ctx, base['tasks'], {m: r['eval']['tasks'] for m, r in per_method.items()}, d))
  results = assemble_results(ctx, base, per_method, drift_result, runner, started)

  def write(d):
    from peft_jax import report  # pylint: disable=g-import-not-at-top
    paths = report.write_report(results, os.path.join(workdir, 'report'))
    return {'paths': {k: str(v) for k, v in dict(paths).items()}}

  # The report is cheap and reflects every stage: rebuild it on every run.
  report_dir = runner.path('report')
  if os.path.exists(report_dir):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(report_dir)
  runner.run('report', write)
  progress.close()
  files.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def _versions() -> dict[str, str]:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'transformers', 'numpy'):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = 'not installed'
  out['devices'] = f'{jax.device_count()} x {jax.devices()[0].platform}'
  return out


def assemble_results(ctx: ArenaContext, base, per_method, drift_result, runner, started) -> dict:
  """The report's results dict (schema: ``peft_jax.report``), read from the stage outputs."""
  config = ctx.config
  general_tasks = [t.name for t in ctx.tasks if t.kind == GENERAL_KIND]
  target_tasks = [t.name for t in ctx.tasks if t.kind == TARGET_KIND]
  methods = {}
  for m, r in per_method.items():
    ev, tr, geo, paths = r['eval'], r['train'], r['geometry'], r['paths']
    csd_rows = geo['csd']
    methods[m] = {
        'target': ev['tasks'][config.target], 'general': ev[GENERAL_KIND],
        'forget': (base[GENERAL_KIND] - ev[GENERAL_KIND]) * 100.0,
        'tasks': ev['tasks'],
        'trainable_params': tr['trainable_params'], 'total_params': tr['total_params'],
        'train_time_s': tr['train_time_s'], 'peak_memory_mb': tr['peak_memory_mb'],
        'train_loss': tr['train_loss'],
        'interpolation': {k: paths['interpolation'][k] for k in ('target', 'general')} | {
            'alpha': paths['alpha']},
        'rewind': {k: paths['rewind'][k] for k in ('target', 'general')} | {
            'alpha': paths['alpha'], 'kind': paths['rewind']['kind']},
        'spectral': {'module': geo['chosen_module'], 'retention': geo['retention'],
                     'energy': geo['energy'], 'summary': geo['spectral'][geo['chosen_module']]},
        'activation': {k: geo['activation'][k] for k in ('layers', 'cka', 'procrustes', 'gram')},
        'csd': {'modules': [row['module'] for row in csd_rows],
                'general': [row['general/rel'] for row in csd_rows],
                'target': [row['target/rel'] for row in csd_rows],
                'ratio': [row['rel_ratio'] for row in csd_rows]},
    }
  results = {
      'title': config.title,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'base': {'target': base['tasks'][config.target], 'general': base[GENERAL_KIND],
               'tasks': base['tasks']},
      'target_task': config.target, 'general_tasks': general_tasks, 'target_tasks': target_tasks,
      'methods': methods,
      'drift': {'adapters': [a['name'] for a in drift_result['adapters']],
                'labels': {a['name']: a['label'] for a in drift_result['adapters']},
                'tasks': drift_result['tasks'],
                'delta': [[a['deltas'][t] for t in drift_result['tasks']]
                          for a in drift_result['adapters']],
                'flagged': {a['name']: a['flags'] for a in drift_result['adapters'] if a['flags']}},
      'config': config.to_dict(), 'versions': _versions(),
      'timing': {'total_s': time.perf_counter() - started, 'stages': dict(runner.timings)},
  }
  if 'disel' in per_method:
    results['disel_gates'] = per_method['disel']['gates']
  return results
