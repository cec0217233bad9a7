"""Fine-tuning an encoder's classification / regression head together with any adapter method.

The same machinery as SFT (``train.setup.setup_training``: sharded state, one jitted donating
step, the methods' parameter groups), with a sequence-level loss instead of next-token
prediction:

* classification: ``L = Σ_b w_b (logsumexp(z_b) - z_{b, y_b})`` with ``w_b = [y_b >= 0]`` (a label
  of -1 marks a padding row);
* regression (``num_labels == 1``): ``L = Σ_b (z_b - y_b)²`` (transformers' MSE).

The loss returns ``(L, Σ_b w_b)`` so the step's mean is per example, exactly as SFT's is per
token (gradient accumulation and data parallelism stay exact). The head trains in full as
``modules_to_save`` (``adapters.modules_to_save``) beside the adapter; ``Full()`` trains
everything. Runs are in memory and not resumable mid-run (a study resumes per stage); use
``train.trainer.train`` for checkpointed SFT.

Batches are ``{'tokens', 'attention_mask', 'token_type_ids': [B, T] int32, 'labels': [B, 1]}``
(labels int32 for classification, float32 for regression; ``[B, 1]`` keeps every batch entry
2-D, the layout ``setup_training`` shards).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import hub, models
from peft_jax.adapters import api as adapter_api
from peft_jax.data.pydoc_tasks import TextTask
from peft_jax.parallel import distributed, sharding
from peft_jax.train.setup import setup_training

Array = jax.Array
PyTree = Any
BATCH_KEYS = ('tokens', 'attention_mask', 'token_type_ids', 'labels')


def classification_loss_sum(
  logits: Array, labels: Array, problem_type: str = 'single_label_classification'
) -> tuple[Array, Array]:
  """``(loss_sum, num_examples)`` float32 (module docstring).

  Args:
    logits: ``[B, num_labels]``.
    labels: ``[B, 1]`` (or ``[B]``) class indices (``-1``: ignored row) or regression targets.
    problem_type: ``'single_label_classification'`` or ``'regression'``.
  """
  logits = logits.astype(jnp.float32)
  labels = labels.reshape(logits.shape[0])
  if problem_type == 'regression':
    error = logits[:, 0] - labels.astype(jnp.float32)
    return jnp.sum(error * error), jnp.asarray(labels.shape[0], jnp.float32)
  if problem_type != 'single_label_classification':
    raise ValueError(
      f'problem_type={problem_type!r}; valid: single_label_classification, regression'
    )
  labels = labels.astype(jnp.int32)
  weights = (labels >= 0).astype(jnp.float32)
  safe = jnp.maximum(labels, 0)
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, safe[:, None], -1)[:, 0]
  return jnp.sum(nll * weights), jnp.sum(weights)


def _apply(model, tree, batch, rng):
  kwargs = dict(attention_mask=batch['attention_mask'], token_type_ids=batch['token_type_ids'])
  if rng is None:
    return model.apply({'params': tree}, batch['tokens'], **kwargs)
  return model.apply(
    {'params': tree}, batch['tokens'], deterministic=False, rngs={'dropout': rng}, **kwargs
  )


def make_classification_loss(model, combine_fn, *, dropout: bool = False):
  """``loss_fn(trainable, frozen, batch, rng) -> (loss_sum, num_examples)`` for ``model``'s head."""
  problem_type = model.config.problem_type

  def loss_fn(trainable, frozen, batch: Mapping[str, Array], rng: Array):
    params = combine_fn(trainable, frozen)
    logits = _apply(model, params, batch, rng if dropout else None)['logits']
    return classification_loss_sum(logits, batch['labels'], problem_type)

  return loss_fn


def encode_task(
  tokenizer: Any, task: TextTask, max_length: int = 64, pad_to_multiple_of: int = 8
) -> dict[str, np.ndarray]:
  """A task's examples as arrays ``{tokens, attention_mask, token_type_ids, labels [N, 1]}``."""
  arrays = hub.encode_texts(
    tokenizer, task.texts, task.pairs, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of
  )
  arrays['labels'] = np.asarray(task.labels).reshape(-1, 1)
  return arrays


@dataclasses.dataclass
class ClassifierResult:
  """What :func:`train_classifier` leaves in memory."""

  tree: PyTree  # the adapted params (adapter and head), combined
  losses: list  # (step, loss) per step
  num_compiles: int  # compilations of the jitted step (1 expected)
  seconds: float  # wall time of the loop


def train_classifier(
  model: models.Encoder,
  params: PyTree,
  method: Any,
  data: Mapping[str, np.ndarray],
  *,
  targets: Any = None,
  modules_to_save: Sequence[str] = ('classifier',),
  steps: int = 100,
  batch_size: int = 16,
  seed: int = 0,
  optimizer: Optional[Mapping[str, Any]] = None,
  mesh: Any = None,
) -> ClassifierResult:
  """Injects ``method`` (on ``targets``, PEFT semantics) and trains it with the head.

  Args:
    model: an :class:`peft_jax.models.Encoder` whose config has a head (``num_labels > 0``).
    params: its plain params (head included: ``hub.load_pretrained(..., num_labels=k)`` gives a
      fresh one to a base checkpoint).
    method: an adapter method object (``adapters.make_method(name, ...)``), or ``None`` to
      train only ``modules_to_save`` on the frozen encoder (with ``head_type='mean'``, a linear
      probe of the sentence embeddings).
    data: :func:`encode_task` arrays (rows are shuffled per epoch with ``seed``).
    targets: target modules (list or regex string); ignored by methods adapting everything.
    modules_to_save: modules trained in full (the head).
    steps, batch_size: optimizer steps, rows per step (a multiple of the data-parallel size).
    optimizer: keyword arguments of ``train.optimizer.make_optimizer`` (``peak_lr`` ...;
      defaults: peak_lr 1e-3, warmup 10 % of steps, cosine decay, no weight decay).
    mesh: device mesh (default: all devices data-parallel).
  Raises:
    ValueError: the model has no head, or a batch larger than the data.
  """
  config = model.config
  if not config.num_labels:
    raise ValueError('train_classifier: the encoder has no head (config.num_labels == 0)')
  num_rows = len(data['labels'])
  if batch_size > num_rows:
    raise ValueError(f'train_classifier: batch_size={batch_size} exceeds the {num_rows} examples')
  missing = [k for k in BATCH_KEYS if k not in data]
  if missing:
    raise ValueError(f'train_classifier: data lacks {missing} (use encode_task)')
  mesh = mesh if mesh is not None else sharding.make_mesh((-1, 1, 1))
  if method is None:
    if not modules_to_save:
      raise ValueError('train_classifier: method=None trains modules_to_save, and none is given')
    tree = adapter_api.inject(params, [], None, modules_to_save=list(modules_to_save))
  elif method.adapts == 'all':
    # Full fine-tuning trains the head with everything else; no separate copy.
    tree = adapter_api.inject(params, method, None, jax.random.key(seed + 1))
  else:
    tree = adapter_api.inject(
      params,
      method,
      targets,
      jax.random.key(seed + 1),
      modules_to_save=list(modules_to_save) or None,
    )
  axes = models.param_logical_axes(tree, config)
  options = dict(peak_lr=1e-3, warmup_steps=max(1, steps // 10), decay='cosine', clip_norm=1.0)
  options.update(optimizer or {})
  options.update(total_steps=steps, param_groups=adapter_api.param_groups)
  dropout = method is not None and method.needs_rng
  loss_fn = make_classification_loss(model, adapter_api.combine, dropout=dropout)
  training = setup_training(
    tree,
    axes,
    loss_fn=loss_fn,
    partition_fn=adapter_api.partition,
    mesh=mesh,
    optimizer_kwargs=options,
    seed=seed,
    batch_keys=BATCH_KEYS,
  )
  del tree
  rng = np.random.default_rng(seed)
  order = np.zeros((0,), np.int64)
  state = training.state
  losses = []
  compiles_before = training.train_step._cache_size()  # pylint: disable=protected-access
  start = time.perf_counter()
  for step in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(num_rows)])
    rows, order = order[:batch_size], order[batch_size:]
    local = {k: np.asarray(data[k])[rows] for k in BATCH_KEYS}
    batch = distributed.global_batch(local, mesh, batch_size)
    state, metrics = training.train_step(state, training.frozen, batch)
    losses.append((step, float(metrics['loss'])))
  seconds = time.perf_counter() - start
  compiles = training.train_step._cache_size() - compiles_before  # pylint: disable=protected-access
  if not np.all(np.isfinite([loss for _, loss in losses])):
    raise FloatingPointError(f'train_classifier: non-finite loss {losses[-1]}')
  return ClassifierResult(
    tree=adapter_api.combine(state.params, training.frozen),
    losses=losses,
    num_compiles=compiles,
    seconds=seconds,
  )


def predict(
  model: models.Encoder, tree: PyTree, data: Mapping[str, np.ndarray], batch_size: int = 64
) -> np.ndarray:
  """Logits ``[N, num_labels]`` float32 of every row (the last batch padded, one program)."""
  forward = jax.jit(lambda t, b: _apply(model, t, b, None)['logits'])
  n = len(data['tokens'])
  out = []
  for begin in range(0, n, batch_size):
    chunk = {k: np.asarray(data[k])[begin : begin + batch_size] for k in BATCH_KEYS[:3]}
    real = len(chunk['tokens'])
    if real < batch_size:
      chunk = {k: np.pad(v, ((0, batch_size - real), (0, 0))) for k, v in chunk.items()}
      chunk['attention_mask'][real:, 0] = 1  # a padded row needs one visible key
    out.append(np.asarray(forward(tree, chunk))[:real])
  return np.concatenate(out, axis=0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of rows whose argmax is the label."""
  return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels).reshape(-1)))


def embed_texts(
  model: models.Encoder,
  tree: PyTree,
  tokenizer: Any,
  texts: Sequence[str],
  *,
  max_length: int = 64,
  batch_size: int = 64,
  normalize: bool = True,
) -> np.ndarray:
  """Sentence embeddings ``[N, d]`` float32 (mask-aware mean, L2-normalised by default) of
  ``texts`` under ``tree`` (base, adapted or merged): the inputs of label-free forgetting
  measurements (CKA / Procrustes / Gram against the base, rank correlation of similarities).
  One padded length and batch size, so one program."""
  arrays = hub.encode_texts(tokenizer, texts, max_length=max_length, pad_to_multiple_of=max_length)
  forward = jax.jit(
    lambda t, x, m, y: model.apply({'params': t}, x, attention_mask=m, token_type_ids=y)['pooled']
  )
  out = []
  n = len(texts)
  for begin in range(0, n, batch_size):
    chunk = [arrays[k][begin : begin + batch_size] for k in BATCH_KEYS[:3]]
    real = len(chunk[0])
    if real < batch_size:
      chunk = [np.pad(v, ((0, batch_size - real), (0, 0))) for v in chunk]
      chunk[1][real:, 0] = 1
    out.append(np.asarray(forward(tree, *chunk))[:real])
  pooled = np.concatenate(out, axis=0)
  if normalize:
    pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
  return pooled
