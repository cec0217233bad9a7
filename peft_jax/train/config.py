"""The default training config; ``configs/train/*.py`` start from it and override a few fields."""

from __future__ import annotations

import ml_collections

ADAPTER_METHODS = ('full', 'lora', 'dora', 'pissa', 'vera', 'oft', 'miss', 'disel')


def default_config() -> ml_collections.ConfigDict:
  """A tiny random Llama-style decoder with LoRA on q/v, trained for 20 steps on CPU."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: a tiny random decoder, or a Hugging Face directory when `path` is set
  # (then the size fields below are ignored; dtype/remat still apply).
  config.model = ml_collections.ConfigDict(dict(
      path='', model_type='llama', vocab_size=64, hidden_size=32, intermediate_size=64,
      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
      # Compute dtype; trainable params stay float32 either way.
      dtype='float32', remat=False))

  # Adapter: 'full' trains every weight; otherwise `inject` with PEFT target semantics:
  # `targets` is a list (exact or '.'-suffix match of HF module names); a non-empty
  # `target_regex` (full-match regex, or 'all-linear') replaces it.
  config.adapter = ml_collections.ConfigDict(dict(
      method='lora', targets=('q_proj', 'v_proj'), target_regex='',
      kwargs=dict(rank=4, alpha=8.0)))

  # Data: a local JSONL/JSON/Parquet file or dataset directory of {"prompt","completion"} or
  # {"messages"} rows. tokenizer: 'byte' (ByteTokenizer over the model vocab), 'model' (the HF
  # directory's tokenizer) or a tokenizer directory. Rows longer than seq_len are cut (counted,
  # with a warning) or, with drop_truncated, left out. The data's fingerprint (path, size, hash)
  # is part of the resume guard; allow_changed_data resumes on a changed file anyway.
  config.data = ml_collections.ConfigDict(dict(
      path='', split='train', tokenizer='byte', seq_len=32, packing=True, shuffle=True,
      drop_truncated=False, allow_changed_data=False))

  config.batch_size = 8  # global rows per step
  config.grad_accum_steps = 1  # microbatches per step (inner scan)
  config.total_steps = 20

  config.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=3e-3, warmup_steps=2, decay='cosine', final_lr_fraction=0.0, b1=0.9, b2=0.999,
      eps=1e-8, weight_decay=0.0, clip_norm=1.0,
      no_decay_patterns=(r'.*bias.*', r'.*norm.*', r'.*scale'),
      # (regex on '/'-joined param names, lr multiplier); first match wins.
      lr_groups=()))

  # Mesh (data, fsdp, tensor); -1 takes the remaining devices. Empty rules: the built-in table.
  config.mesh_shape = (-1, 1, 1)
  config.logical_axis_rules = ()

  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=10, keep=3,
      # Adapter snapshots every K steps (0: off), all kept, under <workdir>/trajectory.
      snapshot_every=0))
  # Divergence guard: a non-finite loss / grad / update / param norm always stops the run; so
  # does one above its bound here (0: no bound). Defaults sit far above any healthy run.
  config.guard = ml_collections.ConfigDict(dict(
      max_loss=0.0, max_grad_norm=0.0, max_update_norm=1e6, max_param_norm=1e8))
  config.log_every = 1
  # Seconds the metric writer may stall (hung filesystem) before the run fails.
  config.metric_timeout_s = 60.0
  config.progress_bar = True
  # Seconds to sleep after each step (0: none): lets preemption tests kill a run mid-training.
  config.throttle_s = 0.0
  # Assumed peak FLOP/s per device for MFU: ~200 GFLOP/s float32 matmul on this 2-core CPU
  # (research/env_probe.md §5). Set to the accelerator's peak (e.g. 989e12 for H100 bf16).
  config.peak_flops_per_device = 200e9
  config.export = ml_collections.ConfigDict(dict(adapter=False, merged=False))
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early with the bad key and the valid values."""
  if config.adapter.method not in ADAPTER_METHODS:
    raise ValueError(f'config.adapter.method={config.adapter.method!r}; valid: {ADAPTER_METHODS}')
  if not config.data.path:
    raise ValueError('config.data.path is empty; give a JSONL/JSON/Parquet file or dataset dir')
  for key in ('total_steps', 'batch_size', 'grad_accum_steps', 'log_every', 'data.seq_len'):
    node = config
    for part in key.split('.'):
      node = node[part]
    if not isinstance(node, int) or isinstance(node, bool) or node <= 0:
      raise ValueError(f'config.{key}={node!r} must be a positive integer')
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible by '
                     f'config.grad_accum_steps={config.grad_accum_steps}')
  if config.checkpoint.every_steps <= 0:
    raise ValueError(f'config.checkpoint.every_steps={config.checkpoint.every_steps} must be > 0')
