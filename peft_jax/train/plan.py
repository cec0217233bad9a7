"""Plan a sharded training step without weights or the devices: ``plan(config)``.

The same config :func:`peft_jax.train.trainer.train` runs is turned into abstract params
(``jax.eval_shape`` of the decoder's init; no weight is read or allocated), the adapter is injected
on those shapes, the rules table gives every sharding (``parallel.sharding``), and the trainer's
own jitted step (``train.setup.plan_training``, the step ``setup_training`` runs) is lowered on
``jax.ShapeDtypeStruct`` arguments carrying their shardings and compiled for the mesh's devices.
XLA's ``memory_analysis()`` and ``cost_analysis()`` of that program are the per-device bytes and
FLOPs; an analytic count (params + optimizer state + gradients + activations) is given beside
them. On a host with fewer devices than the mesh, run it over fake CPU devices
(``launch/plan.py`` sets ``--xla_force_host_platform_device_count``); see docs/SCALE.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from peft_jax import models
from peft_jax.adapters import api as adapter_api
from peft_jax.common.trees import path_name
from peft_jax.hub import shapes as hub_shapes
from peft_jax.parallel import plan as accounting
from peft_jax.parallel import sharding
from peft_jax.train import trainer
from peft_jax.train.config import default_config, validate_config
from peft_jax.train.setup import TrainingPlan, plan_training

PyTree = Any


DTYPES = {'bf16': 'bfloat16', 'bfloat16': 'bfloat16', 'f32': 'float32', 'float32': 'float32'}


def planner_config(
  model: str,
  mesh: str,
  *,
  batch_size: int,
  seq_len: int,
  method: str = 'lora',
  method_kwargs: Optional[dict] = None,
  targets: Optional[str] = None,
  dtype: str = 'bf16',
  remat: bool = False,
  scan_layers: Any = False,
  grad_accum_steps: int = 1,
  base: Optional[ml_collections.ConfigDict] = None,
) -> ml_collections.ConfigDict:
  """A training config for :func:`plan` from the planner's command-line values.

  Args:
    model: a named model, an HF ``config.json`` or checkpoint directory (``config.model.path``).
    mesh: ``'data:32,fsdp:8'`` (``parallel.plan.parse_mesh``).
    batch_size, seq_len: the global batch ``[batch_size, seq_len]``.
    method, method_kwargs: the adapter (``config.adapter``); kwargs default to the base config's
      when the method is the same, else to the method's defaults.
    targets: comma-separated module names, or a regex / ``'all-linear'`` (``target_regex``) when
      it holds no comma and is not a bare module name; ``None`` keeps the base config's.
    dtype: compute dtype (``bf16`` or ``f32``); trainable params and the optimizer stay float32.
    remat, scan_layers, grad_accum_steps: as in training.
    base: the config to start from (default ``train.config.default_config()``).
  """
  config = ml_collections.ConfigDict((base or default_config()).to_dict())
  if dtype not in DTYPES:
    raise ValueError(f'dtype {dtype!r}; valid: {sorted(DTYPES)}')
  config.model.path = model
  config.model.dtype = DTYPES[dtype]
  config.model.remat = bool(remat)
  config.model.scan_layers = scan_layers
  if method != config.adapter.method:
    config.adapter.method = method
    config.adapter.kwargs = {}
  if method_kwargs is not None:
    config.adapter.kwargs = dict(method_kwargs)
  if targets is not None:
    names = [t.strip() for t in targets.split(',') if t.strip()]
    if len(names) == 1 and not re.fullmatch(r'[A-Za-z0-9_.]+', names[0]):
      config.adapter.target_regex, config.adapter.targets = names[0], ()
    else:
      config.adapter.target_regex, config.adapter.targets = '', tuple(names)
  config.mesh_shape = accounting.parse_mesh(mesh)
  config.batch_size = int(batch_size)
  config.data.seq_len = int(seq_len)
  config.grad_accum_steps = int(grad_accum_steps)
  return config


def abstract_model(config: ml_collections.ConfigDict):
  """``(model, params_shape, model_config)`` of ``config.model`` from shapes alone.

  ``config.model.path`` may be a named model (``hub.shapes.NAMED_MODEL_CONFIGS``), an HF
  ``config.json`` file or a checkpoint directory (only its config is read); empty: the size fields
  of ``config.model``. Params are float32, as :func:`trainer.build_model` loads them.
  """
  if config.model.path:
    model_config = hub_shapes.model_config(
      config.model.path,
      dtype=config.model.dtype,
      remat=config.model.remat,
      scan_layers=config.model.get('scan_layers', False),
    )
  else:
    model_config = models.ModelConfig(**{k: v for k, v in config.model.items() if k != 'path'})
  tokens = jnp.zeros((1, 8), jnp.int32)
  params_shape = jax.eval_shape(
    lambda key: nn.meta.unbox(models.Decoder(model_config).init(key, tokens)['params']),
    jax.random.PRNGKey(config.seed),
  )
  return models.Decoder(model_config), params_shape, model_config


@dataclasses.dataclass
class AbstractTraining:
  """What :func:`build` makes: the step's plan and its abstract arguments."""

  plan: TrainingPlan
  model_config: models.ModelConfig
  method: Any
  params_shape: PyTree  # the adapted params tree, as ShapeDtypeStruct
  args: tuple  # (state, frozen, batch) ShapeDtypeStruct with shardings
  rules: Optional[list]
  grad_accum_steps: int
  base_params: int  # parameters of the model before the adapter


def build(config: ml_collections.ConfigDict) -> AbstractTraining:
  """Everything :func:`trainer.train` builds before its first step, from shapes alone.

  Raises:
    ValueError: the mesh needs more devices than JAX has (naming the XLA flag that makes them),
      or the config is invalid.
  """
  _validate(config)
  devices = math.prod(int(s) for s in config.mesh_shape if int(s) > 0)
  if -1 not in tuple(config.mesh_shape) and devices != jax.device_count():
    raise ValueError(
      f'mesh_shape {tuple(config.mesh_shape)} needs {devices} devices but JAX has '
      f'{jax.device_count()}; plan on fake CPU devices by setting '
      f'XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts '
      '(python -m launch.plan does this)'
    )
  mesh = sharding.make_mesh(tuple(config.mesh_shape))
  rules = [tuple(r) for r in config.logical_axis_rules] or None
  model, params_shape, model_config = abstract_model(config)
  base_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params_shape))
  method = trainer.make_method(config)
  params_shape = jax.eval_shape(lambda p: trainer.adapt(config, p, method), params_shape)
  axes = models.param_logical_axes(params_shape, model_config)
  training_plan = plan_training(
    params_shape,
    axes,
    loss_fn=trainer.make_loss_fn(model, method, mesh, rules),
    partition_fn=adapter_api.partition,
    mesh=mesh,
    optimizer_kwargs=trainer.optimizer_kwargs(config),
    rules=rules,
    seed=config.seed,
    grad_accum_steps=config.grad_accum_steps,
  )
  args = training_plan.abstract_args(config.batch_size, config.data.seq_len)
  return AbstractTraining(
    training_plan,
    model_config,
    method,
    params_shape,
    args,
    rules,
    config.grad_accum_steps,
    base_params,
  )


def _validate(config: ml_collections.ConfigDict) -> None:
  # The planner reads no data: validate the rest of the training config with a stand-in path.
  probe = ml_collections.ConfigDict(config.to_dict())
  probe.data.path = probe.data.path or '<planner: no data>'
  validate_config(probe)


def analytic_bytes(abstract: AbstractTraining) -> dict[str, int]:
  """Per-device bytes counted from the shardings and the model's shapes.

  * ``frozen_params``, ``trainable_params``, ``optimizer_state``, ``step_and_rng``, ``batch``:
    the arguments of the step, each array's shard (exact);
  * ``gradients``: one float32 copy of the trainable shards;
  * ``gathered_weights``: FSDP's working set (:func:`gathered_weight_bytes`);
  * ``activations``: what the backward pass keeps of one microbatch (:func:`activation_bytes`).
  """
  plan, (state, frozen, batch) = abstract.plan, abstract.args
  out = dict(
    frozen_params=accounting.bytes_per_device(frozen, plan.frozen_shardings),
    trainable_params=accounting.bytes_per_device(state.params, plan.state_shardings.params),
    optimizer_state=accounting.bytes_per_device(state.opt_state, plan.state_shardings.opt_state),
    step_and_rng=accounting.bytes_per_device(
      (state.step, state.rng), (plan.state_shardings.step, plan.state_shardings.rng)
    ),
    batch=sum(accounting.shard_bytes(x, x.sharding) for x in batch.values()),
  )
  out['gradients'] = out['trainable_params']
  out['gathered_weights'] = gathered_weight_bytes(abstract)
  out['activations'] = activation_bytes(abstract)
  out['total'] = sum(out.values())
  return out


ARGUMENT_PARTS = ('frozen_params', 'trainable_params', 'optimizer_state', 'step_and_rng', 'batch')


def _split(name: str, size: int, mesh, rules) -> int:
  """How many ways the rules split an activation dimension of logical ``name`` and ``size``."""
  (axes,) = sharding.logical_to_spec((name,), (size,), mesh, rules)
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def gathered_weight_bytes(abstract: AbstractTraining) -> int:
  """Two decoder layers' weights gathered over the mesh axes the rules give ``embed`` (FSDP),
  in the compute dtype: the layer being computed and the next one, fetched ahead. Each array
  keeps its other splits (``tensor``)."""
  cfg, plan = abstract.model_config, abstract.plan
  state, frozen, _ = abstract.args
  c = 2 if cfg.dtype == 'bfloat16' else 4
  mesh = plan.mesh
  (embed_axes,) = sharding.logical_to_spec(('embed',), None, mesh, abstract.rules)
  embed_axes = set(
    () if embed_axes is None else (embed_axes,) if isinstance(embed_axes, str) else embed_axes
  )
  total = 0
  for tree, shardings in (
    (frozen, plan.frozen_shardings),
    (state.params, plan.state_shardings.params),
  ):
    for name, x, s in accounting.named_shards(tree, shardings):
      shape, spec = tuple(x.shape), tuple(s.spec) + (None,) * (len(x.shape) - len(s.spec))
      if name.startswith('layers/block_0/'):  # stacked layers: one layer is one slice
        shape, spec = shape[1:], spec[1:]
      elif not name.startswith('layers_0/'):
        continue
      kept = []
      for entry in spec:
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept.append(math.prod(mesh.shape[a] for a in axes if a not in embed_axes))
      total += math.prod(dim // split for dim, split in zip(shape, kept)) * c
  return 2 * total


def _tokens_per_device(abstract: AbstractTraining) -> tuple[int, int]:
  """``(tokens of one microbatch on one device, sequence length)``."""
  tokens = abstract.args[2]['tokens']
  rows, length = tokens.sharding.shard_shape(tuple(tokens.shape))
  return max(1, rows // abstract.grad_accum_steps) * length, length


def activation_bytes(abstract: AbstractTraining) -> int:
  """Per-device activation bytes the backward pass keeps, counted per token.

  With ``d`` the width, ``q = H·hd``, ``k = K·hd``, ``F`` the MLP width, ``c`` the compute
  dtype's bytes and ``T`` the sequence length, one layer keeps for each token about
  ``c·(4d + 2q + 2k + 3F)`` (its input, the two norm outputs, q/k/v, the attention output, the
  residual, gate/up/hidden) plus the float32 attention scores and probabilities ``2·4·H·T``; the
  logits add ``2·4·V`` (float32 logits and their gradient) and the final norm ``c·d``. Dimensions
  the rules shard (``heads``, ``kv``, ``mlp``, ``vocab``) are divided by their split. With remat a
  layer keeps only its input ``c·d`` and one layer's full set is live while it is recomputed.
  Tokens: one microbatch's rows on a device times ``T``.
  """
  cfg, mesh, rules = abstract.model_config, abstract.plan.mesh, abstract.rules
  tokens, length = _tokens_per_device(abstract)
  split = lambda name, size: size / _split(name, size, mesh, rules)
  c = 2 if cfg.dtype == 'bfloat16' else 4
  d = cfg.hidden_size
  q = split('heads', cfg.num_heads * cfg.head_dim)
  k = split('kv', cfg.num_kv_heads * cfg.head_dim)
  f = split('mlp', cfg.intermediate_size)
  heads = q / cfg.head_dim
  layer = c * (4 * d + 2 * q + 2 * k + 3 * f) + 2 * 4 * heads * length
  kept = cfg.num_layers * c * d + layer if cfg.remat else cfg.num_layers * layer
  kept += 2 * 4 * split('vocab', cfg.vocab_size) + c * d
  return int(kept * tokens)


def analytic_flops(abstract: AbstractTraining) -> float:
  """FLOPs of one step over all devices, counted from the shapes.

  Per token, the forward pass costs ``2·N_mm`` for the matmul weights ``N_mm`` (every linear
  kernel and adapter array, the tied embedding when it is the output layer; not the embedding
  lookup) plus ``4·T·H·hd`` per layer for the attention scores and their weighted sum (the causal
  mask is applied to full ``T×T`` scores). The backward pass costs the forward once more for the
  input gradients (attention twice: both operands of each of its matmuls are activations), and
  ``2·N_trainable`` for the weight gradients of the trainable arrays only (frozen weights get
  none); remat adds one more forward of the layers.
  """
  cfg = abstract.model_config
  state, frozen, batch = abstract.args
  tokens = math.prod(batch['tokens'].shape)
  length = batch['tokens'].shape[1]

  def matmul_sizes(tree) -> int:
    total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = path_name(path)
      if 'norm' in name or name.endswith('bias'):
        continue
      if 'embed_tokens' in name and not cfg.tie_word_embeddings:
        continue  # a lookup, not a matmul
      total += math.prod(x.shape)
    return total

  trainable = matmul_sizes(state.params)
  attention = 4 * cfg.num_layers * length * cfg.num_heads * cfg.head_dim
  forward = 2 * (matmul_sizes(frozen) + trainable) + attention
  # backward: input gradients (the forward again; attention's two inputs, q and k or p and v,
  # both need one), and the trainable weights' gradients
  total = tokens * (2 * forward + attention + 2 * trainable)
  if cfg.remat:
    total += tokens * forward
  return float(total)


def _parameter_summary(abstract: AbstractTraining) -> dict[str, Any]:
  plan, (state, frozen, _) = abstract.plan, abstract.args
  counts = adapter_api.count_params(abstract.params_shape)
  params = (state.params, frozen)
  params_shardings = (plan.state_shardings.params, plan.frozen_shardings)
  return dict(
    base=abstract.base_params,
    total=counts['total'],
    trainable=counts['trainable'],
    bytes=accounting.total_bytes(params),
    bytes_per_device=accounting.bytes_per_device(params, params_shardings),
    **accounting.replication(params, params_shardings),
    trainable_replication=accounting.replication(state.params, plan.state_shardings.params),
    frozen_replication=accounting.replication(frozen, plan.frozen_shardings),
  )


def plan(config: ml_collections.ConfigDict, *, name: str = '') -> dict[str, Any]:
  """Lowers and compiles ``config``'s train step on abstract arguments and reports it.

  Args:
    config: a training config (``train.config.default_config`` schema); ``config.data.path`` is
      not read, ``config.model.path`` may name a model (see :func:`abstract_model`).
    name: a label for the report (default: the model path).
  Returns:
    A JSON-ready dict: the model and run, ``memory_per_device`` (XLA's analysis of the compiled
    step, bytes), ``analytic_per_device`` (:func:`analytic_bytes`), ``params`` (counts, bytes,
    the replicated fraction), ``sharding_groups`` (one row per parameter group of the trainable
    and frozen partitions and the optimizer state), ``flops_per_step`` (XLA's per-device count,
    times the devices, and :func:`analytic_flops`) and ``seconds`` (build, lower, compile).
  """
  start = time.perf_counter()
  abstract = build(config)
  built = time.perf_counter()
  lowered = abstract.plan.train_step.lower(*abstract.args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  plan_, (state, frozen, _) = abstract.plan, abstract.args
  mesh = plan_.mesh
  devices = mesh.size
  cost = accounting.cost_stats(compiled)
  cfg = abstract.model_config
  return dict(
    name=name or config.model.path or 'config.model',
    model=dict(
      model_type=cfg.model_type,
      num_layers=cfg.num_layers,
      hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size,
      num_heads=cfg.num_heads,
      num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim,
      vocab_size=cfg.vocab_size,
      dtype=cfg.dtype,
      remat=cfg.remat,
      scan_period=cfg.scan_period,
    ),
    method=abstract.method.name,
    adapter=config.adapter.to_dict(),
    mesh=dict(mesh.shape),
    devices=devices,
    backend=jax.default_backend(),
    jax_version=jax.__version__,
    xla_flags=os.environ.get('XLA_FLAGS', ''),
    batch_size=config.batch_size,
    seq_len=config.data.seq_len,
    grad_accum_steps=config.grad_accum_steps,
    tokens_per_device=_tokens_per_device(abstract)[0],
    memory_per_device=accounting.memory_stats(compiled),
    analytic_per_device=analytic_bytes(abstract),
    params=_parameter_summary(abstract),
    sharding_groups=dict(
      trainable=accounting.sharding_groups(state.params, plan_.state_shardings.params),
      frozen=accounting.sharding_groups(frozen, plan_.frozen_shardings),
      optimizer_state=accounting.sharding_groups(state.opt_state, plan_.state_shardings.opt_state),
    ),
    batch_sharding={k: str(s.spec) for k, s in plan_.batch_shardings.items()},
    flops_per_step=dict(
      xla_per_device=cost['flops'],
      xla_total=cost['flops'] * devices,
      analytic_total=analytic_flops(abstract),
      # XLA's cost analysis counts a while loop's body once, not once per iteration: with
      # scanned layers its count covers one block of layers (plus what is outside the scan).
      xla_counts_one_scan_step=bool(cfg.scan_period),
    ),
    bytes_accessed_per_device=cost['bytes_accessed'],
    seconds=dict(build=built - start, lower=lowered_at - built, compile=compiled_at - lowered_at),
  )


def format_report(report: dict[str, Any]) -> str:
  """A plain-text summary of a :func:`plan` report."""
  b = accounting.format_bytes
  mem, ana, params = report['memory_per_device'], report['analytic_per_device'], report['params']
  mesh = ','.join(f'{k}:{v}' for k, v in report['mesh'].items())
  lines = [
    f'plan: {report["name"]} ({report["model"]["model_type"]}, {params["base"]:,} params), '
    f'{report["method"]} ({params["trainable"]:,} trainable), mesh {mesh} = '
    f'{report["devices"]} {report["backend"]} devices',
    f'  batch {report["batch_size"]} x seq {report["seq_len"]} '
    f'(grad_accum {report["grad_accum_steps"]}; {report["tokens_per_device"]} tokens per device '
    f'per microbatch), dtype {report["model"]["dtype"]}, remat {report["model"]["remat"]}, '
    f'scan {report["model"].get("scan_period", 0) or "off"}',
    '  per device            XLA (compiled)   analytic',
    f'    arguments         {b(mem["argument_size_in_bytes"]):>14}   '
    f'{b(sum(ana[k] for k in ARGUMENT_PARTS)):>10}'
    '  (params + optimizer state + batch)',
    f'      frozen params   {"":>14}   {b(ana["frozen_params"]):>10}',
    f'      trainable       {"":>14}   {b(ana["trainable_params"]):>10}',
    f'      optimizer state {"":>14}   {b(ana["optimizer_state"]):>10}',
    f'    outputs           {b(mem["output_size_in_bytes"]):>14}',
    f'    aliased (donated) {b(mem["alias_size_in_bytes"]):>14}',
    f'    temporaries       {b(mem["temp_size_in_bytes"]):>14}   '
    f'{b(ana["gradients"] + ana["gathered_weights"] + ana["activations"]):>10}'
    '  (gradients + gathered weights + activations)',
    f'      gradients       {"":>14}   {b(ana["gradients"]):>10}',
    f'      gathered weights{"":>14}   {b(ana["gathered_weights"]):>10}',
    f'      activations     {"":>14}   {b(ana["activations"]):>10}',
    f'    peak              {b(mem.get("peak_memory_in_bytes", float("nan"))):>14}',
    f'    total             {b(mem["total_size_in_bytes"]):>14}   {b(ana["total"]):>10}',
    f'  params: {b(params["bytes"])} in all, {b(params["bytes_per_device"])} per device; '
    f'{100 * params["replicated_fraction"]:.2f}% of elements replicated on every device '
    f'(redundancy {params["redundancy"]:.2f}x)',
    f'  FLOPs per step: XLA {report["flops_per_step"]["xla_total"]:.4g} '
    f'({report["flops_per_step"]["xla_per_device"]:.4g} per device), analytic '
    f'{report["flops_per_step"]["analytic_total"]:.4g}'
    + (
      ' (scanned layers: XLA counts the loop body once, i.e. one block of layers)'
      if report['flops_per_step'].get('xla_counts_one_scan_step')
      else ''
    ),
    f'  batch sharding: {report["batch_sharding"].get("tokens")}',
    '  sharding of each parameter group (layer index folded):',
  ]
  for part in ('trainable', 'frozen'):
    for row in report['sharding_groups'][part]:
      spec = (
        'P('
        + ', '.join(repr(tuple(a)) if isinstance(a, list) else repr(a) for a in row['spec'])
        + ')'
      )
      lines.append(
        f'    {part:9} {row["group"]:48} {str(tuple(row["shape"])):16} {spec:28} '
        f'-> {tuple(row["shard_shape"])} x{row["count"]}'
      )
  s = report['seconds']
  lines.append(
    f'  seconds: build {s["build"]:.1f}, lower {s["lower"]:.1f}, compile {s["compile"]:.1f}'
  )
  return '\n'.join(lines)
