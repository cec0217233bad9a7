"""The default training config; ``configs/train/*.py`` start from it and override a few fields."""

from __future__ import annotations

import ml_collections

from peft_jax.adapters import api as adapter_api
from peft_jax.train.optimizer import DEFAULT_NO_DECAY_PATTERNS


def default_config() -> ml_collections.ConfigDict:
  """A tiny random Llama-style decoder with LoRA on q/v, trained for 20 steps on CPU."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: a tiny random decoder, or a Hugging Face directory when `path` is set
  # (then the size fields below are ignored; dtype/remat/scan_layers still apply).
  config.model = ml_collections.ConfigDict(
    dict(
      path='',
      model_type='llama',
      vocab_size=64,
      hidden_size=32,
      intermediate_size=64,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      # Compute dtype; trainable params stay float32 either way.
      dtype='float32',
      remat=False,
      # Scan over the layers (params stacked on a leading 'layers' axis): True, False or
      # 'auto' (scan >= 16 layers off the CPU); see peft_jax.models.ModelConfig.scan_layers.
      scan_layers=ml_collections.FieldReference(False, field_type=object),
    )
  )

  # Adapter: a registered method (peft_jax.adapters.METHODS) injected with PEFT target
  # semantics: `targets` is a list (exact or '.'-suffix match of HF module names); a non-empty
  # `target_regex` (full-match regex, or 'all-linear') replaces it. 'full' (Full(scope=
  # 'everything')) trains every parameter whatever the targets; kwargs=dict(scope='linear')
  # restricts it to the targeted kernels. A method's own parameter groups (DISeL's gates: lr x
  # gate_lr_mult, no decay) come from the method object.
  config.adapter = ml_collections.ConfigDict(
    dict(
      method='lora', targets=('q_proj', 'v_proj'), target_regex='', kwargs=dict(rank=4, alpha=8.0)
    )
  )

  # Data: a local JSONL/JSON/Parquet file or dataset directory of {"prompt","completion"} or
  # {"messages"} rows. tokenizer: 'byte' (ByteTokenizer over the model vocab), 'model' (the HF
  # directory's tokenizer) or a tokenizer directory. Rows longer than seq_len are cut (counted,
  # with a warning) or, with drop_truncated, left out. The data's fingerprint (path, size, hash)
  # is part of the resume guard; allow_changed_data resumes on a changed file anyway.
  config.data = ml_collections.ConfigDict(
    dict(
      path='',
      split='train',
      tokenizer='byte',
      seq_len=32,
      packing=True,
      shuffle=True,
      drop_truncated=False,
      allow_changed_data=False,
      # Per-process loading: > 0 splits the rows into this many shards (row i in shard
      # i % num_shards, each packed and shuffled on its own) and each process reads and
      # tokenises only its num_shards / process_count of them (data.sft.ShardedSFTIterator).
      # Batches then depend on num_shards, not on the process count. 0: every process reads
      # the whole data and takes its slice of each batch.
      num_shards=0,
    )
  )

  config.batch_size = 8  # global rows per step
  config.grad_accum_steps = 1  # microbatches per step (inner scan)
  config.total_steps = 20
  # Stop this call after that many steps (0: at total_steps); the schedule still spans
  # total_steps, and rerunning with 0 continues the run (a learning-rate sweep's candidates).
  config.stop_step = 0

  config.optimizer = ml_collections.ConfigDict(
    dict(
      peak_lr=3e-3,
      warmup_steps=2,
      decay='cosine',
      final_lr_fraction=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      clip_norm=1.0,
      no_decay_patterns=DEFAULT_NO_DECAY_PATTERNS,
      # (regex on '/'-joined param names, lr multiplier); first match wins.
      lr_groups=(),
    )
  )

  # Mesh (data, fsdp, tensor); -1 takes the remaining devices. Empty rules: the built-in table.
  config.mesh_shape = (-1, 1, 1)
  config.logical_axis_rules = ()

  config.checkpoint = ml_collections.ConfigDict(
    dict(
      every_steps=10,
      keep=3,
      # Adapter snapshots every K steps (0: off), all kept, under <workdir>/trajectory.
      snapshot_every=0,
    )
  )
  # Divergence guard: a non-finite loss / grad / update / param norm always stops the run; so
  # does one above its bound here (0: no bound). Defaults sit far above any healthy run.
  config.guard = ml_collections.ConfigDict(
    dict(max_loss=0.0, max_grad_norm=0.0, max_update_norm=1e6, max_param_norm=1e8)
  )
  config.log_every = 1
  # Seconds the metric writer may stall (hung filesystem) before the run fails.
  config.metric_timeout_s = 60.0
  config.progress_bar = True
  # Seconds to sleep after each step (0: none): lets preemption tests kill a run mid-training.
  config.throttle_s = 0.0
  # Assumed peak FLOP/s per device for MFU: ~200 GFLOP/s float32 matmul on this 2-core CPU
  # (docs/CPU_SPEED.md, "Matmul ceiling and MFU"). Set to the accelerator's peak (e.g. 989e12 for H100 bf16).
  config.peak_flops_per_device = 200e9
  config.export = ml_collections.ConfigDict(dict(adapter=False, merged=False))
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early with the bad key and the valid values."""
  if config.adapter.method not in adapter_api.METHODS:
    raise ValueError(
      f'config.adapter.method={config.adapter.method!r}; valid: {adapter_api.method_names()}'
    )
  if not config.data.path:
    raise ValueError('config.data.path is empty; give a JSONL/JSON/Parquet file or dataset dir')
  for key in ('total_steps', 'batch_size', 'grad_accum_steps', 'log_every', 'data.seq_len'):
    node = config
    for part in key.split('.'):
      node = node[part]
    if not isinstance(node, int) or isinstance(node, bool) or node <= 0:
      raise ValueError(f'config.{key}={node!r} must be a positive integer')
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(
      f'config.batch_size={config.batch_size} is not divisible by '
      f'config.grad_accum_steps={config.grad_accum_steps}'
    )
  stop_step = config.get('stop_step', 0)
  if not isinstance(stop_step, int) or isinstance(stop_step, bool):
    raise ValueError(f'config.stop_step={stop_step!r} must be an integer')
  if not 0 <= stop_step <= config.total_steps:
    raise ValueError(
      f'config.stop_step={stop_step} must be in [0, total_steps={config.total_steps}] (0: the end)'
    )
  if config.checkpoint.every_steps <= 0:
    raise ValueError(f'config.checkpoint.every_steps={config.checkpoint.every_steps} must be > 0')


# Overrides replace these values whole instead of merging into them (a method's kwargs are its
# own: LoRA's rank must not leak into OFT's).
REPLACED_WHOLE = ('adapter.kwargs',)


def with_overrides(
  config: ml_collections.ConfigDict, overrides, where: str = 'overrides'
) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the nested ``overrides`` (dict or ConfigDict) applied.

  Sub-configs merge key by key; a key the config does not have is an error naming it, with the
  valid keys at that level (``where`` prefixes the names in messages).
  """
  out = ml_collections.ConfigDict(config.to_dict())

  def apply(target, values, prefix):
    for key, value in dict(values).items():
      name = f'{prefix}{key}'
      if key not in target:
        raise KeyError(
          f'{where}: {name!r} is not a train config key; valid at this level: '
          f'{sorted(target.keys())}'
        )
      current = target[key]
      if (
        isinstance(current, ml_collections.ConfigDict)
        and name not in REPLACED_WHOLE
        and isinstance(value, (dict, ml_collections.ConfigDict))
      ):
        apply(current, value, name + '.')
      else:
        if isinstance(value, ml_collections.ConfigDict):
          value = value.to_dict()
        if isinstance(current, ml_collections.ConfigDict):
          target[key] = ml_collections.ConfigDict(value)
        else:
          target[key] = value

  apply(out, overrides, '')
  return out
