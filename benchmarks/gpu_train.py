"""Training throughput and model-FLOPs utilisation (MFU) of a ~1B Llama-shaped model on one GPU.

  .venv/bin/python benchmarks/gpu_train.py --out=/tmp/gpu_train.json
  # wiring check on a CPU, tiny model (numbers meaningless):
  .venv/bin/python benchmarks/gpu_train.py --allow_cpu --hidden=64 --intermediate=256 \\
      --layers=2 --heads=4 --kv_heads=2 --vocab=256 --batch=2 --seq=64 --steps=2

The model is TinyLlama-1.1B's shape by default (d 2048, MLP 5632, 22 layers, 32 heads / 4 kv
heads, vocab 32000), random init; the batch is random tokens with the loss on every position.
Cases (``--methods``):

* ``lora``: LoRA r 16 / alpha 32 on every linear layer but lm_head, the frozen base stored in
  bfloat16, bf16 compute, AdamW on the adapters;
* ``full``: every weight trainable, float32 params (AdamW's master copy), bf16 compute.

The step is the trainer's (``train.setup.setup_training``): jitted, sharded on a one-device mesh,
layers rematerialised (``--remat``) and scanned (``--scan_layers``). Reported per case: the first
step split into trace + lower and XLA compile, the median step over ``--steps`` after one warm-up
step, tokens/s, achieved model FLOP/s (``bench_common.train_step_flops``: 3x forward for full
FT, 2x for adapters on a frozen base; rematerialised work not counted, as usual for MFU), MFU
against the device's published dense bf16 peak (when its kind is in ``PEAK_BF16``) and against a
bf16 matmul probe measured here, and the device's peak memory in use.

Without a GPU the script says so, writes ``{"status": "no_gpu", ...}`` to ``--out`` and exits 0;
``--allow_cpu`` runs it on the CPU anyway. Never part of ``make test``.
"""

import statistics
import sys
import time

import bench_common
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from peft_jax import models, parallel
from peft_jax.adapters import api as adapters
from peft_jax.common import files
from peft_jax.train.setup import setup_training
from peft_jax.train.trainer import make_loss_fn

_METHODS = flags.DEFINE_list('methods', ['lora', 'full'], 'Cases.')
_HIDDEN = flags.DEFINE_integer('hidden', 2048, 'd_model.')
_INTERMEDIATE = flags.DEFINE_integer('intermediate', 5632, 'MLP width.')
_LAYERS = flags.DEFINE_integer('layers', 22, 'Decoder layers.')
_HEADS = flags.DEFINE_integer('heads', 32, 'Attention heads.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', 4, 'Key/value heads.')
_VOCAB = flags.DEFINE_integer('vocab', 32000, 'Vocabulary size.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Sequences per step.')
_SEQ = flags.DEFINE_integer('seq', 2048, 'Tokens per sequence.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after one warm-up step).')
_RANK = flags.DEFINE_integer('rank', 16, 'LoRA rank.')
_REMAT = flags.DEFINE_bool('remat', True, 'Rematerialise each layer in the backward pass.')
_SCAN = flags.DEFINE_enum('scan_layers', 'auto', ['auto', 'true', 'false'], 'Scan the layers.')
_PROBE_N = flags.DEFINE_integer('probe_n', 8192, 'bf16 matmul probe size (n x n @ n x n).')
_ALLOW_CPU = flags.DEFINE_bool('allow_cpu', False, 'Run even without a GPU (wiring check).')
_OUT = flags.DEFINE_string('out', None, 'Write every number here as JSON (atomically).')

# Published dense bf16 tensor-core peaks, FLOP/s per device (no sparsity), matched by substring
# of ``device.device_kind`` (first match wins, so the more specific names come first).
PEAK_BF16 = (
  ('H200', 989e12),
  ('H100 PCIe', 756e12),
  ('H100', 989e12),
  ('GH200', 989e12),
  ('B200', 2250e12),
  ('A100', 312e12),
  ('L40S', 362e12),
  ('L4', 121e12),
  ('A10G', 70e12),
  ('A10', 125e12),
  ('V100', 125e12),
  ('TPU v4', 275e12),
  ('TPU v5 lite', 197e12),
  ('TPU v5e', 197e12),
  ('TPU v5p', 459e12),
  ('TPU v6', 918e12),
)


def published_peak(kind: str):
  for name, peak in PEAK_BF16:
    if name.lower() in kind.lower():
      return peak
  return None


def _probe(device):
  n = _PROBE_N.value
  a = jax.device_put(jnp.ones((n, n), jnp.bfloat16), device)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  best = float('inf')
  for _ in range(10):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best


def _peak_memory(device):
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (backends without memory stats)
    return None
  return stats.get('peak_bytes_in_use')


def _case(method, config, device):
  params = models.init_params(config, jax.random.PRNGKey(0))
  if method == 'lora':
    # The frozen base in bf16 (its master copy is never updated); the adapters stay float32.
    params = jax.tree.map(
      lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )
    method_obj = adapters.LoRA(rank=_RANK.value, alpha=2.0 * _RANK.value)
    params = adapters.inject(params, method_obj, 'all-linear', jax.random.PRNGKey(1))
  else:
    method_obj = adapters.Full()
    params = adapters.inject(params, method_obj, None, jax.random.PRNGKey(1))
  mesh = parallel.make_mesh((1, 1, 1), devices=[device])
  training = setup_training(
    params,
    models.param_logical_axes(params, config),
    loss_fn=make_loss_fn(models.Decoder(config), method_obj, mesh),
    partition_fn=adapters.partition,
    mesh=mesh,
    optimizer_kwargs=dict(peak_lr=1e-4, total_steps=1000, warmup_steps=1),
  )
  del params
  rng = np.random.default_rng(0)
  shape = (_BATCH.value, _SEQ.value)
  batch = {
    'tokens': rng.integers(0, config.vocab_size, shape).astype(np.int32),
    'loss_mask': np.ones(shape, np.float32),
    'segment_ids': np.ones(shape, np.int32),
    'positions': np.broadcast_to(np.arange(_SEQ.value, dtype=np.int32), shape).copy(),
  }
  batch = parallel.global_batch(batch, mesh, _BATCH.value)
  start = time.perf_counter()
  lowered = training.train_step.lower(training.state, training.frozen, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  state = training.state
  start = time.perf_counter()
  state, metrics = compiled(state, training.frozen, batch)
  first_loss = float(metrics['loss'])
  first_run_s = time.perf_counter() - start
  state, metrics = compiled(state, training.frozen, batch)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, training.frozen, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return dict(
    lower_s=lower_s,
    compile_s=compile_s,
    first_run_s=first_run_s,
    step_s=statistics.median(times),
    step_times_s=times,
    first_loss=first_loss,
    last_loss=float(metrics['loss']),
    peak_memory_bytes=_peak_memory(device),
  )


def main(argv):
  del argv
  gpus = [d for d in jax.devices() if d.platform == 'gpu']
  report = dict(
    date=bench_common.now_utc(),
    command=' '.join(sys.argv),
    machine=bench_common.machine(),
    versions=bench_common.versions(),
    devices=[str(d) for d in jax.devices()],
  )
  if not gpus and not _ALLOW_CPU.value:
    print(
      f'gpu_train: no GPU visible to JAX (devices: {jax.devices()}); nothing measured. '
      'Install a CUDA jaxlib (pip install "jax[cuda12]") on a GPU machine, or pass --allow_cpu '
      'for a wiring check.'
    )
    if _OUT.value:
      print(f'wrote {files.write_json(_OUT.value, dict(report, status="no_gpu"))}')
    return
  device = gpus[0] if gpus else jax.devices()[0]
  scan = {'auto': 'auto', 'true': True, 'false': False}[_SCAN.value]
  config = models.ModelConfig(
    vocab_size=_VOCAB.value,
    hidden_size=_HIDDEN.value,
    intermediate_size=_INTERMEDIATE.value,
    num_layers=_LAYERS.value,
    num_heads=_HEADS.value,
    num_kv_heads=_KV_HEADS.value,
    head_dim=_HIDDEN.value // _HEADS.value,
    max_position_embeddings=max(_SEQ.value, 2048),
    dtype='bfloat16',
    remat=_REMAT.value,
    scan_layers=scan,
  )
  dims = dict(
    hidden=config.hidden_size,
    intermediate=config.intermediate_size,
    layers=config.num_layers,
    heads=config.num_heads,
    kv_heads=config.num_kv_heads,
    head_dim=config.head_dim,
    vocab=config.vocab_size,
    seq=_SEQ.value,
  )
  num_params = sum(
    x.size
    for x in jax.tree.leaves(
      jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))
    )
  )
  kind = device.device_kind
  peak = published_peak(kind)
  probe = _probe(device)
  print(
    f'device {kind} ({device.platform}); model {num_params / 1e9:.2f} B params, '
    f'{config.num_layers} layers, d {config.hidden_size}; batch {_BATCH.value} x {_SEQ.value}; '
    f'scan {config.scan_period or "off"}, remat {config.remat}; published bf16 peak '
    f'{"unknown" if peak is None else f"{peak / 1e12:.0f} TFLOP/s"}, '
    f'measured bf16 matmul {probe / 1e12:.1f} TFLOP/s (n={_PROBE_N.value})',
    flush=True,
  )
  header = (
    '| case | step (ms) | tokens/s | model TFLOP/s | MFU (published peak) | MFU (measured matmul) '
    '| trace+lower (s) | compile (s) | peak memory (GiB) | loss first / last |'
  )
  lines = [header, '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  rows = []
  tokens = _BATCH.value * _SEQ.value
  for method in _METHODS.value:
    out = _case(method, config, device)
    flops = bench_common.train_step_flops(dims, tokens, full=method == 'full')
    achieved = flops / out['step_s']
    out.update(
      method=method,
      flops_per_step=flops,
      tokens_per_s=tokens / out['step_s'],
      achieved_flop_s=achieved,
      mfu_published=None if peak is None else achieved / peak,
      mfu_measured=achieved / probe,
    )
    rows.append(out)
    memory = out['peak_memory_bytes']
    line = (
      f'| {method} | {1e3 * out["step_s"]:.1f} | {out["tokens_per_s"]:.0f} '
      f'| {achieved / 1e12:.1f} '
      f'| {"-" if peak is None else f"{100 * achieved / peak:.1f} %"} '
      f'| {100 * achieved / probe:.1f} % | {out["lower_s"]:.1f} | {out["compile_s"]:.1f} '
      f'| {"-" if memory is None else f"{memory / 2**30:.1f}"} '
      f'| {out["first_loss"]:.3f} / {out["last_loss"]:.3f} |'
    )
    lines.append(line)
    print(line, flush=True)
  table = '\n'.join(lines)
  print(table)
  report.update(
    status='measured' if gpus else 'cpu_wiring_check',
    device_kind=kind,
    published_peak_bf16=peak,
    measured_matmul_bf16=probe,
    num_params=int(num_params),
    config=dict(dims, batch=_BATCH.value, rank=_RANK.value, remat=_REMAT.value, scan=_SCAN.value),
    rows=rows,
    table=table,
  )
  if _OUT.value:
    print(f'wrote {files.write_json(_OUT.value, report)}')


if __name__ == '__main__':
  app.run(main)
