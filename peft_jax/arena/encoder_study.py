"""The encoder study in the arena's frame: one text-classification target, every method, and
forgetting measured without labels on held-out general text (docs/ENCODERS.md, "The encoder
arena").

``run_encoder_arena(config, workdir)`` runs these stages through
:class:`peft_jax.arena.stages.StageRunner` (each writes its folder atomically under
``<workdir>/stages/`` and records the config slice and input stages it was computed from):

``base_<task>``   the base encoder's sentence embeddings of the held-out general texts (the
                  reference of every forgetting number) and the accuracy of its fresh head
``probe_<task>``  the head alone trained on the frozen base (a linear probe; ``config.probe``):
                  the accuracy the base's features give without fine-tuning the encoder
``train_<m>``     method m plus the head (``modules_to_save``) trained on the task's train
                  split (``train.classify.train_classifier``); the trained arrays are kept
``eval_<m>``      test accuracy with a bootstrap 95% interval; on the general texts CKA,
                  Procrustes residual, cosine-Gram distortion and the Spearman correlation of
                  pairwise similarities against the base (CKA and Spearman with intervals)
``gates_<m>``     methods with ``has_gates``: the mean gate per adapted module and rank
                  component on general and on target text
``report``        ``<workdir>/report/index.md`` + ``index.html`` + PNGs (rebuilt every run)

Every registered method in ``config.method_order`` runs, except those whose protocol says they
are no fine-tuning method of their own (``saved_module``: a head copy); the report lists them.
``plan_encoder_arena`` predicts the run / reuse decisions without loading the model.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import time
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from peft_jax import hub, models
from peft_jax.adapters import api as adapters
from peft_jax.arena import stages as stages_lib
from peft_jax.arena.context import path_identity
from peft_jax.arena.pipeline import normalized, record_config
from peft_jax.common import files, trees
from peft_jax.data import pydoc_tasks
from peft_jax.evals import intervals
from peft_jax.geometry import embeddings as embedding_geometry
from peft_jax.hub import encoder_checkpoint
from peft_jax.report import encoder as encoder_report
from peft_jax.report import results as results_lib
from peft_jax.train import classify

STUDY = 'encoder'
TASKS = ('pydoc_topics', 'pydoc_same_section')
TRAINED_FILE = 'trained.npz'
BASE_EMBEDDINGS = 'general_embeddings.npy'
METHOD_KEYS = ('kwargs', 'peak_lr', 'targets')
_embedding_drift = jax.jit(embedding_geometry.embedding_drift)  # one program for every method


# ---- what the study is, from the config alone --------------------------------------------------


def applicable(method: str) -> Optional[str]:
  """``None`` when ``method`` can be fine-tuned here, else why not (from its protocol: a
  ``saved_module`` method only copies a module, such as the head, and adapts nothing)."""
  cls = adapters.METHODS[method]
  if getattr(cls, 'saved_module', False):
    return 'copies whole modules (saved_module): the head is trained that way beside every method'
  return None


@dataclasses.dataclass(frozen=True)
class EncoderPlan:
  """The study resolved from the config (no model loaded).

  Attributes:
    base_dir: the base checkpoint's directory.
    identity: digests of the base files and of the text the tasks are built from.
    task: the target task's name (``config.task.name``).
    methods: the methods run, in order.
    excluded: ``{method: reason}`` of those that cannot apply.
  """

  base_dir: str
  identity: dict
  task: str
  methods: tuple[str, ...]
  excluded: dict


def resolve(config: ml_collections.ConfigDict) -> EncoderPlan:
  """Checks the config and resolves the base and the method list (errors name the key)."""
  if config.get('study', STUDY) != STUDY:
    raise ValueError(f'config.study={config.study!r}: this runner is the {STUDY!r} study')
  task = str(config.task.name)
  if task not in TASKS:
    raise ValueError(f'config.task.name={task!r}; valid: {", ".join(TASKS)}')
  base = str(config.base)
  if not encoder_checkpoint.is_encoder_directory(base):
    raise ValueError(
      f'config.base={base!r} is no BERT-family checkpoint (a directory whose config.json has '
      f'model_type in {sorted(encoder_checkpoint.ENCODER_MODEL_TYPES)}, or a named encoder '
      f'{sorted(encoder_checkpoint.NAMED_ENCODERS)})'
    )
  base_dir = str(encoder_checkpoint.named_encoder_directory(base) or hub.resolve_path(base))
  for method, overrides in config.methods.items():
    unknown = sorted(set(overrides) - set(METHOD_KEYS))
    if unknown:
      raise KeyError(f'config.methods.{method}: unknown keys {unknown}; valid: {METHOD_KEYS}')
  methods, excluded = [], {}
  for method in config.method_order:
    reason = applicable(method)
    if reason is None:
      methods.append(method)
    else:
      excluded[method] = reason
  if not methods:
    raise ValueError(f'config.method_order={tuple(config.method_order)}: no method applies')
  identity = {'base': path_identity(base_dir), 'text': pydoc_tasks.source_fingerprint()}
  return EncoderPlan(base_dir, identity, task, tuple(methods), excluded)


def method_settings(config: ml_collections.ConfigDict, method: str) -> dict:
  """``{'kwargs', 'peak_lr', 'targets'}`` of one method: ``config.methods[method]`` over the
  shared ``config.train`` (targets) and an empty kwargs."""
  own = config.methods.get(method, {})
  own = own.to_dict() if hasattr(own, 'to_dict') else dict(own)
  targets = own.get('targets') or config.train.targets
  return {
    'kwargs': dict(own.get('kwargs') or {}),
    'peak_lr': float(own.get('peak_lr', config.train.optimizer.peak_lr)),
    'targets': list(targets) if not isinstance(targets, str) else targets,
  }


def _world(config, plan: EncoderPlan) -> dict:
  return {
    'identity': plan.identity,
    'task': config.task.to_dict(),
    'max_length': int(config.max_length),
    'head_type': str(config.head_type),
    'seed': int(config.seed),
  }


def _slices(config, plan: EncoderPlan) -> dict:
  world = _world(config, plan)
  general = dict(config.general.to_dict())
  return {
    'base': dict(world, general=general, eval=config.eval.to_dict()),
    'eval': dict(world, general=general, eval=config.eval.to_dict()),
    'gates': dict(world, general=general, batch_size=int(config.eval.batch_size)),
  }


def _train_slice(config, plan: EncoderPlan, method: Optional[str]) -> dict:
  """What a training run reads; ``method=None``: the head-only probe."""
  train = config.train.to_dict()
  train.pop('targets', None)
  settings = method_settings(config, method) if method is not None else {}
  return dict(_world(config, plan), method=method, train=train, **settings)


# ---- the loaded context ------------------------------------------------------------------------


@dataclasses.dataclass
class EncoderContext:
  """What every computing stage shares: the model, the data arrays and the general texts."""

  model: Any
  params: Any
  tokenizer: Any
  train: pydoc_tasks.TextTask
  test: pydoc_tasks.TextTask
  train_data: dict
  test_data: dict
  general_texts: list
  general_data: dict


def task_splits(config) -> tuple[pydoc_tasks.TextTask, pydoc_tasks.TextTask]:
  t = config.task
  words = dict(min_words=int(t.min_words), max_words=int(t.max_words))
  if t.name == 'pydoc_topics':
    return pydoc_tasks.topic_classification(
      int(t.num_classes), int(t.max_per_class), float(t.test_fraction), int(config.seed), **words
    )
  return pydoc_tasks.same_section_pairs(
    int(t.num_train_pairs),
    int(t.num_test_pairs),
    int(t.num_classes),
    int(t.max_per_class),
    int(config.seed),
    **words,
  )


def build_context(config, plan: EncoderPlan) -> EncoderContext:
  train, test = task_splits(config)
  model, params, tokenizer = hub.load_pretrained(
    plan.base_dir, num_labels=train.num_labels, head_type=str(config.head_type)
  )
  if tokenizer is None:
    raise FileNotFoundError(f'config.base={config.base!r}: {plan.base_dir} has no tokenizer files')
  length = int(config.max_length)
  encode = lambda task: classify.encode_task(tokenizer, task, length, pad_to_multiple_of=length)
  t = config.task
  general = pydoc_tasks.heldout_passages(
    int(config.general.num_texts),
    int(t.num_classes),
    int(config.seed),
    int(t.min_words),
    int(t.max_words),
  )
  general_data = hub.encode_texts(tokenizer, general, max_length=length, pad_to_multiple_of=length)
  return EncoderContext(
    model, params, tokenizer, train, test, encode(train), encode(test), general, general_data
  )


# ---- the trained arrays ------------------------------------------------------------------------


def _inject(ctx: EncoderContext, method_obj, settings: dict, config) -> dict:
  """The adapted tree ``train_classifier`` starts from (same rules, same key)."""
  key = jax.random.key(int(config.seed) + 1)
  if method_obj.adapts == 'all':
    return adapters.inject(ctx.params, method_obj, None, key)
  return adapters.inject(
    ctx.params,
    method_obj,
    settings['targets'],
    key,
    modules_to_save=list(config.train.modules_to_save) or None,
  )


def save_trained(tree: Mapping, path: str) -> None:
  """Every node's trainable arrays, as ``'<kernel path>::<name>'`` in one npz (atomic)."""
  arrays = {
    f'{p}::{name}': np.asarray(value)
    for p, node in adapters.adapted_nodes(tree).items()
    for name, value in node.params.items()
  }
  files.atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def load_trained(start: Mapping, path: str) -> dict:
  """``start`` (the injected tree) with every node's params read from ``path``; the node set
  and shapes must match exactly."""
  with np.load(path) as stored:
    saved = {k: stored[k] for k in stored.files}
  tree = start
  expected = set()
  for p, node in adapters.adapted_nodes(start).items():
    params = {}
    for name, value in node.params.items():
      key = f'{p}::{name}'
      expected.add(key)
      if key not in saved or saved[key].shape != tuple(value.shape):
        raise ValueError(
          f'{path}: {key} missing or of shape {getattr(saved.get(key), "shape", None)}, the '
          f'injected tree has {tuple(value.shape)}; delete the train stage to retrain'
        )
      params[name] = jnp.asarray(saved[key], value.dtype)
    tree = trees.set_path(tree, p, dataclasses.replace(node, params=params))
  extra = sorted(set(saved) - expected)
  if extra:
    raise ValueError(f'{path}: arrays {extra[:4]} match no node of the injected tree')
  return tree


# ---- stage functions ---------------------------------------------------------------------------


def forward_rows(model, tree, data: Mapping[str, np.ndarray], batch_size: int) -> dict:
  """``{'logits': [N, L], 'embeddings': [N, d]}`` of every row of ``data`` under ``tree``, in one
  compiled program of ``[batch_size, T]`` (the last batch padded; padded rows dropped). The
  embeddings are L2-normalised mean-pooled states: ``train.classify.embed_texts``'s, and the
  logits ``train.classify.predict``'s, from one forward."""

  def apply(t, b):
    out = model.apply(
      {'params': t}, b['tokens'], attention_mask=b['attention_mask'],
      token_type_ids=b['token_type_ids'],
    )  # fmt: skip
    return out['logits'], models.l2_normalize(out['pooled'])

  program = jax.jit(apply)
  logits, pooled = [], []
  n = len(data['tokens'])
  for begin in range(0, n, batch_size):
    chunk = {k: np.asarray(data[k])[begin : begin + batch_size] for k in classify.BATCH_KEYS[:3]}
    real = len(chunk['tokens'])
    if real < batch_size:
      chunk = {k: np.pad(v, ((0, batch_size - real), (0, 0))) for k, v in chunk.items()}
      chunk['attention_mask'][real:, 0] = 1  # a padded row needs one visible key
    z, e = jax.device_get(program(tree, chunk))
    logits.append(np.asarray(z)[:real])
    pooled.append(np.asarray(e)[:real])
  return {'logits': np.concatenate(logits), 'embeddings': np.concatenate(pooled)}


def _outputs(ctx: EncoderContext, tree, config) -> tuple[np.ndarray, np.ndarray]:
  """(per-example correctness on the test split, general-text embeddings): one program."""
  batch = int(config.eval.batch_size)
  test = forward_rows(ctx.model, tree, ctx.test_data, batch)
  general = forward_rows(ctx.model, tree, ctx.general_data, batch)
  labels = np.asarray(ctx.test_data['labels']).reshape(-1)
  correct = (np.argmax(test['logits'], axis=-1) == labels).astype(np.int64)
  return correct, general['embeddings']


def _accuracy_entry(correct: np.ndarray, task: str, config) -> dict:
  stats = dict(intervals.unit_stats(correct), kind='target')
  found = intervals.score_intervals(
    {task: stats},
    resamples=int(config.eval.resamples),
    seed=int(config.seed),
    confidence=float(config.eval.confidence),
  )
  return {
    'accuracy': float(np.mean(correct)),
    'interval': found['tasks'][task],
    'correct': [int(c) for c in correct],
  }


def stage_base(ctx: EncoderContext, config, task: str, out_dir: str) -> dict:
  correct, embeddings = _outputs(ctx, ctx.params, config)
  files.atomic_write(
    os.path.join(out_dir, BASE_EMBEDDINGS), lambda f: np.save(f, embeddings), binary=True
  )
  out = _accuracy_entry(correct, task, config)
  out.update(
    num_general=len(ctx.general_texts),
    num_train=len(ctx.train),
    num_test=len(ctx.test),
    label_names=list(ctx.test.label_names),
    chance=float(np.max(np.bincount(ctx.test.labels)) / len(ctx.test)),
  )
  return out


def stage_train(ctx: EncoderContext, config, method: str, out_dir: str, keep: dict) -> dict:
  settings = method_settings(config, method)
  method_obj = adapters.make_method(method, **settings['kwargs'])
  optimizer = dict(config.train.optimizer.to_dict(), peak_lr=settings['peak_lr'])
  start = time.perf_counter()
  result = classify.train_classifier(
    ctx.model,
    ctx.params,
    method_obj,
    ctx.train_data,
    targets=settings['targets'],
    modules_to_save=tuple(config.train.modules_to_save),
    steps=int(config.train.steps),
    batch_size=int(config.train.batch_size),
    seed=int(config.seed),
    optimizer=optimizer,
  )
  seconds = time.perf_counter() - start
  tree = jax.device_get(result.tree)
  save_trained(tree, os.path.join(out_dir, TRAINED_FILE))
  keep[method] = tree
  nodes = adapters.adapted_nodes(tree)
  head = sum(n.method.num_trainable(n) for n in nodes.values() if n.method.saved_module)
  counts = adapters.count_params(tree)
  losses = [float(loss) for _, loss in result.losses]
  return {
    'method': method,
    'kwargs': settings['kwargs'],
    'targets': settings['targets'],
    'peak_lr': settings['peak_lr'],
    'steps': int(config.train.steps),
    'train_loss': losses,
    'train_time_s': seconds,
    'loop_time_s': result.seconds,
    'num_compiles': int(result.num_compiles),
    'trainable_params': int(counts['trainable']),
    'head_params': int(head),
    'total_params': int(counts['total']),
    'adapted_modules': sorted(p for p, n in nodes.items() if not n.method.saved_module),
  }


def stage_probe(ctx: EncoderContext, config, task: str, out_dir: str) -> dict:
  """The head alone on the frozen base (``method=None``): a linear probe of the sentence
  embeddings with ``head_type='mean'``. Its encoder is the base's, so its geometry columns are
  the base's (retention 1) by construction."""
  del out_dir
  optimizer = dict(config.train.optimizer.to_dict(), peak_lr=float(config.probe.peak_lr))
  start = time.perf_counter()
  result = classify.train_classifier(
    ctx.model,
    ctx.params,
    None,
    ctx.train_data,
    modules_to_save=tuple(config.train.modules_to_save),
    steps=int(config.train.steps),
    batch_size=int(config.train.batch_size),
    seed=int(config.seed),
    optimizer=optimizer,
  )
  seconds = time.perf_counter() - start
  test = forward_rows(ctx.model, result.tree, ctx.test_data, int(config.eval.batch_size))
  labels = np.asarray(ctx.test_data['labels']).reshape(-1)
  correct = (np.argmax(test['logits'], axis=-1) == labels).astype(np.int64)
  out = _accuracy_entry(correct, task, config)
  out.update(
    train_loss=[float(loss) for _, loss in result.losses],
    train_time_s=seconds,
    num_compiles=int(result.num_compiles),
    trainable_params=int(adapters.count_params(result.tree)['trainable']),
    peak_lr=float(config.probe.peak_lr),
    steps=int(config.train.steps),
  )
  return out


def trained_tree(ctx, config, method: str, train_dir: str, keep: dict) -> dict:
  """The trained tree of ``method``: kept from this process's training, else reloaded."""
  if method not in keep:
    settings = method_settings(config, method)
    start = _inject(ctx, adapters.make_method(method, **settings['kwargs']), settings, config)
    keep[method] = load_trained(start, os.path.join(train_dir, TRAINED_FILE))
  return keep[method]


def stage_eval(ctx, config, task: str, tree, base_dir: str, out_dir: str) -> dict:
  del out_dir
  correct, e1 = _outputs(ctx, tree, config)
  out = _accuracy_entry(correct, task, config)
  e0 = np.load(os.path.join(base_dir, BASE_EMBEDDINGS))
  drift = _embedding_drift(jnp.asarray(e0), jnp.asarray(e1))
  out['drift'] = {k: float(v) for k, v in drift.items()}
  rng = intervals.task_rng(int(config.seed), 'general_text')
  indices = rng.integers(0, len(e0), size=(int(config.eval.resamples), len(e0)))
  replicates = embedding_geometry.similarity_spearman_replicates(
    jnp.asarray(e0), jnp.asarray(e1), jnp.asarray(indices)
  )
  interval = intervals.percentile_interval(np.asarray(replicates), float(config.eval.confidence))
  out['drift_intervals'] = {'similarity_spearman': interval}
  return out


def _gate_sums(model, tree, modules: list, batch) -> dict:
  """``{module: (Σ_tokens g [r], token count)}`` over the real tokens of one batch."""
  _, captures = model.apply(
    {'params': tree},
    batch['tokens'],
    attention_mask=batch['attention_mask'],
    token_type_ids=batch['token_type_ids'],
    capture=tuple(modules),
  )
  weight = batch['weight'].astype(jnp.float32)
  out = {}
  for m in modules:
    node = trees.get_path(tree, m)['kernel']
    gates = node.method.gate_values(node, captures[f'{m}/in'])  # [B, T, r]
    out[m] = (jnp.einsum('bt,btr->r', weight, gates.astype(jnp.float32)), jnp.sum(weight))
  return out


def stage_gates(ctx, config, tree, out_dir: str) -> dict:
  del out_dir
  nodes = adapters.adapted_nodes(tree)
  modules = sorted(p[: -len('/kernel')] for p, n in nodes.items() if n.method.has_gates)
  forward = jax.jit(lambda t, b: _gate_sums(ctx.model, t, modules, b))
  batch_size = int(config.eval.batch_size)
  out = {'layers': modules}
  for kind, data in (('general', ctx.general_data), ('target', ctx.test_data)):
    sums = {m: 0.0 for m in modules}
    count = 0.0
    n = len(data['tokens'])
    for begin in range(0, n, batch_size):
      chunk = {
        k: np.asarray(data[k])[begin : begin + batch_size]
        for k in ('tokens', 'attention_mask', 'token_type_ids')
      }
      chunk['weight'] = chunk['attention_mask'].copy()
      real = len(chunk['tokens'])
      if real < batch_size:  # pad to one shape; padded rows weigh 0 but see one key
        chunk = {k: np.pad(v, ((0, batch_size - real), (0, 0))) for k, v in chunk.items()}
        chunk['attention_mask'][real:, 0] = 1
      got = jax.device_get(forward(tree, chunk))
      for m in modules:
        sums[m] = sums[m] + np.asarray(got[m][0], np.float64)
      count += float(got[modules[0]][1])
    out[kind] = [(sums[m] / count).tolist() for m in modules]
  return out


# ---- the stage graph ---------------------------------------------------------------------------


class _Graph:
  def __init__(self):
    self.specs: list[stages_lib.StageSpec] = []
    self.fns: dict[str, Callable[[str], dict]] = {}
    self.runner: Optional[stages_lib.StageRunner] = None

  def add(self, name, config, inputs=(), fn=None, always=False):
    self.specs.append(stages_lib.StageSpec(name, config, tuple(inputs), False, always))
    self.fns[name] = fn


def base_stage(plan: EncoderPlan) -> str:
  return f'base_{plan.task}'


def probe_stage(plan: EncoderPlan) -> str:
  return f'probe_{plan.task}'


def _graph(config, plan: EncoderPlan, get_ctx) -> _Graph:
  slices = _slices(config, plan)
  graph, keep = _Graph(), {}
  base = base_stage(plan)
  graph.add(base, slices['base'], fn=lambda d: stage_base(get_ctx(), config, plan.task, d))
  if config.probe.enabled:
    graph.add(
      probe_stage(plan),
      dict(
        _train_slice(config, plan, None), probe=config.probe.to_dict(), eval=config.eval.to_dict()
      ),
      fn=lambda d: stage_probe(get_ctx(), config, plan.task, d),
    )
  for method in plan.methods:
    train = f'train_{method}'

    def tree(m=method):
      return trained_tree(get_ctx(), config, m, graph.runner.path(f'train_{m}'), keep)

    graph.add(
      train,
      _train_slice(config, plan, method),
      fn=lambda d, m=method: stage_train(get_ctx(), config, m, d, keep),
    )
    graph.add(
      f'eval_{method}',
      slices['eval'],
      [base, train],
      fn=lambda d, t=tree: stage_eval(
        get_ctx(), config, plan.task, t(), graph.runner.path(base), d
      ),
    )
    if adapters.METHODS[method].has_gates:
      graph.add(
        f'gates_{method}',
        slices['gates'],
        [train],
        fn=lambda d, t=tree: stage_gates(get_ctx(), config, t(), d),
      )
  graph.add('report', {}, always=True)
  return graph


def plan_encoder_arena(config, workdir: str) -> list[stages_lib.Decision]:
  """What ``run_encoder_arena`` would do, stage by stage, without running or writing anything."""
  config = normalized(config)
  plan = resolve(config)
  graph = _graph(config, plan, get_ctx=None)
  return stages_lib.plan(
    stages_lib.StageRunner(os.path.abspath(workdir), readonly=True), graph.specs
  )


# ---- results and running -----------------------------------------------------------------------


def machine() -> dict:
  """The CPU model, core count and load: the context every timing in the report needs."""
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    model = names[0] if names else model
  except OSError:
    pass
  return {'cpu': model, 'cores': os.cpu_count(), 'platform': platform.platform()}


def _load() -> list:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return []


def assemble(config, plan: EncoderPlan, runner: stages_lib.StageRunner, extra: dict) -> dict:
  """The report's results dict (``peft_jax.report.encoder``'s schema), read from the stages."""
  base = runner.result(base_stage(plan))
  methods, gates = {}, {}
  for method in plan.methods:
    train = runner.result(f'train_{method}')
    ev = runner.result(f'eval_{method}')
    methods[method] = {
      'accuracy': ev['accuracy'],
      'interval': ev['interval'],
      'drift': ev['drift'],
      'drift_intervals': ev['drift_intervals'],
      **{
        k: train[k]
        for k in (
          'trainable_params',
          'head_params',
          'total_params',
          'train_time_s',
          'num_compiles',
          'peak_lr',
          'kwargs',
          'steps',
          'train_loss',
        )
      },
    }
    if runner.done(f'gates_{method}') and adapters.METHODS[method].has_gates:
      gates[method] = {
        k: runner.result(f'gates_{method}')[k] for k in ('layers', 'general', 'target')
      }
  probe = None
  if runner.done(probe_stage(plan)) and config.probe.enabled:
    stored = runner.result(probe_stage(plan))
    probe = {
      k: stored[k]
      for k in ('accuracy', 'interval', 'train_loss', 'train_time_s', 'trainable_params', 'peak_lr')
    }
    # Paired bootstrap of (method - probe) accuracy: the same test examples, the same draws.
    for method in plan.methods:
      correct = runner.result(f'eval_{method}')['correct']
      paired = intervals.paired_intervals(
        {plan.task: dict(intervals.unit_stats(stored['correct']), kind='target')},
        {plan.task: dict(intervals.unit_stats(correct), kind='target')},
        resamples=int(config.eval.resamples),
        seed=int(config.seed),
        confidence=float(config.eval.confidence),
      )
      methods[method]['gain_over_probe'] = paired['tasks'][plan.task]
  return {
    'study': STUDY,
    'title': str(config.title),
    'created': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
    'base_name': str(config.base),
    'task': {
      'name': plan.task,
      'labels': base['label_names'],
      'num_train': base['num_train'],
      'num_test': base['num_test'],
      'chance': base['chance'],
    },
    'general': {'num_texts': base['num_general']},
    'base': {'accuracy': base['accuracy'], 'interval': base['interval']},
    'probe': probe,
    'methods': methods,
    'gates': gates,
    'excluded': dict(plan.excluded),
    'bootstrap': {
      'resamples': int(config.eval.resamples),
      'seed': int(config.seed),
      'confidence': float(config.eval.confidence),
    },
    'config': config.to_dict(),
    'versions': results_lib.versions(),
    'machine': machine(),
    **extra,
  }


def run_encoder_arena(
  config: ml_collections.ConfigDict, workdir: str, log: Optional[Callable[[str], None]] = print
) -> dict:
  """Runs (or resumes) the encoder study in ``workdir``; returns the report's results dict."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  log = log or (lambda line: None)
  started, load_start = time.perf_counter(), _load()
  config = normalized(config)
  plan = resolve(config)
  kept = record_config(workdir, config.to_dict())
  if kept:
    log(f'config changed since the last run: the previous one is kept as {kept}')
  for method, reason in plan.excluded.items():
    log(f'{method} not run: {reason}')
  contexts: list[EncoderContext] = []

  def get_ctx() -> EncoderContext:
    if not contexts:
      contexts.append(build_context(config, plan))
    return contexts[0]

  graph = _graph(config, plan, get_ctx)
  progress = tqdm(total=len(graph.specs), desc='encoder arena', disable=not config.progress_bar)
  runner = stages_lib.StageRunner(workdir, progress, log=log)
  graph.runner = runner
  for spec in graph.specs:
    if not spec.always:
      runner.run(spec.name, graph.fns[spec.name], config=spec.config, inputs=spec.inputs)
  log(f'stages: {len(runner.ran)} run, {len(runner.skipped)} reused')
  results = assemble(
    config,
    plan,
    runner,
    {
      'timing': {
        'total_s': time.perf_counter() - started,
        'stages': dict(runner.timings),
        'ran': list(runner.ran),
        'reused': list(runner.skipped),
        'load_start': load_start,
        'load_end': _load(),
      },
      'plan': [d.line() for d in runner.decisions],
    },
  )
  report_dir = os.path.join(workdir, 'report')
  shutil.rmtree(runner.path('report'), ignore_errors=True)  # rebuilt on every run
  runner.run(
    'report',
    lambda d: {
      'paths': {
        k: str(v) for k, v in encoder_report.write_encoder_report(results, report_dir).items()
      }
    },
    config={},
  )
  progress.close()
  files.write_json(os.path.join(workdir, 'results.json'), results)
  return results
