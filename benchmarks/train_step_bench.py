"""Speed of our jitted train step against transformers (PyTorch) + HF PEFT, same weights, same run.

  # toy model, every method, float32 and bf16 (minutes):
  .venv/bin/python benchmarks/train_step_bench.py --out=/tmp/train_toy.json
  # the real SmolLM2-135M (its GGUF weights on both sides), batch 4 x 128:
  .venv/bin/python benchmarks/train_step_bench.py --model=smollm2 --batch=4 --seq=128 \
      --steps=5 --out=/tmp/train_smollm2.json

Models. ``--model=toy``: a Llama-style decoder (RMSNorm, RoPE, causal attention, SwiGLU MLP) of
``--hidden`` / ``--layers`` / ``--vocab``, random init by transformers, saved once to a temporary
HF directory that both sides load (our params through ``peft_jax.hub``). ``--model=smollm2``: the
real SmolLM2-135M-Instruct GGUF file (``hub.load_pretrained('smollm2-135m-instruct')`` here,
``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` for torch): both sides dequantize the
same bytes, so the starting weights are identical.

Cases (``--methods``), each AdamW (lr 1e-3, no weight decay) on the trainable params only, on
every linear layer except lm_head (``'all-linear'`` on both sides):

* ``lora``: LoRA r 8, alpha 16;  ``dora``: the same with DoRA;
* ``oft``: OFT block size 32, Cayley-Neumann (5 terms);  ``vera``: VeRA r 256;
* ``miss``: MiSS r 64 (balance);  ``full``: every weight trainable, no PEFT.

Each adapter starts as the identity (zero update), so every case's first-step loss equals the
base model's on both sides; ``loss_rel_diff`` compares them before any timing is trusted.
``--dtypes``: ``float32``, and ``bfloat16`` = our bf16 compute with float32 params vs torch bf16
autocast.

Every (case, dtype, side) runs in its own process (the script re-invokes itself with
``--side``), the sides alternating which goes first, so that each peak RSS (``ru_maxrss``) is that
side's alone. Reported per side: median ms/step over ``--steps`` steps after one untimed warm-up
step, tokens/s, the first step's time (JAX: trace + compile + run; torch: first run), achieved
FLOP/s (model FLOPs of ``bench_common.train_step_flops``: 3x forward for full FT, 2x for an
adapter on a frozen base) and its fraction of the machine's float32 matmul ceiling (best of a
square-matmul probe in JAX and torch, run first in its own process), peak RSS, and
``ratio = ours / torch`` (< 1: we are faster). Prints a markdown table; ``--out`` writes it and
every number as JSON.
"""

import json
import os
import statistics
import sys
import tempfile
import time

import bench_common
from absl import app, flags

_MODEL = flags.DEFINE_enum('model', 'toy', ['toy', 'smollm2'], 'Which model.')
_METHODS = flags.DEFINE_list('methods', ['lora', 'dora', 'oft', 'vera', 'miss', 'full'], 'Cases.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_HIDDEN = flags.DEFINE_integer('hidden', 256, 'toy: d_model.')
_LAYERS = flags.DEFINE_integer('layers', 4, 'toy: decoder layers.')
_VOCAB = flags.DEFINE_integer('vocab', 512, 'toy: vocabulary size.')
_SEQ = flags.DEFINE_integer('seq', 128, 'Sequence length.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per case (after one warm-up step).')
_PROBE_N = flags.DEFINE_integer('probe_n', 1024, 'Matmul probe size (n x n @ n x n, float32).')
_TORCH_THREADS = flags.DEFINE_integer(
  'torch_threads',
  0,
  'torch intra-op threads (0: torch default). On a shared, oversubscribed '
  'CPU, OpenMP spin-waiting can slow torch by 10x; compare with 1.',
)
_SCAN = flags.DEFINE_bool(
  'scan_layers',
  False,
  'Ours: run the decoder layers as one scan (ModelConfig.scan_layers=True; params stacked on '
  'load). Shrinks the program, so its compile, on deep models; torch is unaffected.',
)
_SIDES = flags.DEFINE_list(
  'sides', ['jax', 'torch'], 'Which sides to run (jax alone: to compare options of ours).'
)
_XLA_FLAGS = flags.DEFINE_string(
  'xla_flags',
  None,
  "Ours: XLA_FLAGS of the JAX side (appended to the environment's), e.g. "
  '"--xla_cpu_use_onednn=true"; to measure a compiler option.',
)
_OUT = flags.DEFINE_string('out', None, 'Write the table and every number here as JSON.')
# Internal: one side of one case in this process.
_SIDE = flags.DEFINE_enum('side', None, ['jax', 'torch', 'probe'], 'Internal: run one side.')
_METHOD = flags.DEFINE_string('method', None, 'Internal: the case of --side.')
_DTYPE = flags.DEFINE_string('dtype', None, 'Internal: the dtype of --side.')
_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Internal: the toy HF directory.')

SMOLLM = 'smollm2-135m-instruct'
HF_PEFT_CONFIG = {
  'lora': 'LoraConfig',
  'dora': 'LoraConfig',
  'oft': 'OFTConfig',
  'vera': 'VeraConfig',
  'miss': 'MissConfig',
}


def _batch():
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  vocab = _VOCAB.value if _MODEL.value == 'toy' else 49152
  tokens = rng.integers(0, vocab, size=(_BATCH.value, _SEQ.value)).astype(np.int32)
  # Prompt/completion split: loss on the second half of each row.
  loss_mask = np.zeros_like(tokens)
  loss_mask[:, _SEQ.value // 2 :] = 1
  return tokens, loss_mask


def _time_steps(step, sync):
  start = time.perf_counter()
  first_loss = step()
  sync()
  first_s = time.perf_counter() - start
  step()
  sync()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - start)
  return dict(first_loss=first_loss, first_step_s=first_s, step_s=statistics.median(times))


def _torch_side(method, dtype):
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if method in HF_PEFT_CONFIG and not hasattr(peft, HF_PEFT_CONFIG[method]):
    return dict(unavailable=f'no {HF_PEFT_CONFIG[method]} in peft {peft.__version__}')
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  start = time.perf_counter()
  if _MODEL.value == 'toy':
    model = transformers.AutoModelForCausalLM.from_pretrained(_MODEL_DIR.value, dtype=torch.float32)
  else:
    from peft_jax.hub import gguf  # pylint: disable=g-import-not-at-top

    path = gguf.named_base_path(SMOLLM)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    # A GGUF load is flagged as quantized (its config keeps a quantization_config), which
    # transformers refuses to cast or train; its tensors are plain float32 already. Rebuild the
    # same architecture without the flag on the meta device and move the tensors and buffers in
    # (no copy).
    hf_config = loaded.config.to_dict()
    hf_config.pop('quantization_config', None)
    with torch.device('meta'):
      model = type(loaded)(type(loaded.config).from_dict(hf_config))
    model.load_state_dict(loaded.state_dict(), assign=True)
    modules = dict(model.named_modules())
    for name, buffer in loaded.named_buffers():  # also the non-persistent ones (rotary)
      owner, _, leaf = name.rpartition('.')
      setattr(modules[owner], leaf, buffer)
    model.tie_weights()
    del loaded
  load_s = time.perf_counter() - start
  model = model.float().train()
  targets = 'all-linear'
  peft_config = {
    'lora': lambda: peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets),
    'dora': lambda: peft.LoraConfig(r=8, lora_alpha=16, use_dora=True, target_modules=targets),
    'oft': lambda: peft.OFTConfig(
      r=0,
      oft_block_size=32,
      use_cayley_neumann=True,
      num_cayley_neumann_terms=5,
      target_modules=targets,
    ),
    'vera': lambda: peft.VeraConfig(r=256, target_modules=targets),
    'miss': lambda: peft.MissConfig(r=64, target_modules=targets),
    'full': None,
  }[method]
  if peft_config is not None:
    model = peft.get_peft_model(model, peft_config())
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
  tokens, loss_mask = _batch()
  tokens_t = torch.from_numpy(tokens).long()
  labels = tokens_t.clone()
  labels[torch.from_numpy(loss_mask) == 0] = -100  # HF shifts labels inside the model

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = model(input_ids=tokens_t, labels=labels).loss
    loss.backward()
    optimizer.step()
    return loss.detach().float().item()

  out = _time_steps(step, lambda: None)
  out.update(
    load_s=load_s,
    trainable=sum(p.numel() for p in params),
    threads=torch.get_num_threads(),
  )
  return out


def _jax_side(method, dtype):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from peft_jax import hub, models, parallel  # pylint: disable=g-import-not-at-top
  from peft_jax.adapters import api as adapters  # pylint: disable=g-import-not-at-top
  from peft_jax.train import make_sft_loss  # pylint: disable=g-import-not-at-top
  from peft_jax.train.setup import setup_training  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  source = _MODEL_DIR.value if _MODEL.value == 'toy' else SMOLLM
  model, params, _ = hub.load_pretrained(source, **({'scan_layers': True} if _SCAN.value else {}))
  load_s = time.perf_counter() - start
  config = model.config
  if dtype == 'bfloat16':
    model = models.Decoder(config.replace(dtype='bfloat16'))
  method_obj = {
    'lora': lambda: adapters.LoRA(rank=8, alpha=16.0),
    'dora': lambda: adapters.DoRA(rank=8, alpha=16.0),
    'oft': lambda: adapters.OFT(block_size=32, use_cayley_neumann=True, num_neumann_terms=5),
    'vera': lambda: adapters.VeRA(rank=256),
    'miss': lambda: adapters.MiSS(rank=64),
    'full': adapters.Full,
  }[method]()
  targets = None if method == 'full' else 'all-linear'
  params = adapters.inject(params, method_obj, targets, jax.random.PRNGKey(0))

  def apply_fn(tree, tokens_, positions, segment_ids, rng):
    del rng
    return model.apply({'params': tree}, tokens_, positions=positions, segment_ids=segment_ids)

  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  training = setup_training(
    params,
    models.param_logical_axes(params, config),
    loss_fn=make_sft_loss(apply_fn, adapters.combine),
    partition_fn=adapters.partition,
    mesh=mesh,
    optimizer_kwargs=dict(peak_lr=1e-3, total_steps=1000, decay='constant', clip_norm=None),
    batch_keys=('tokens', 'loss_mask'),
  )
  tokens, loss_mask = _batch()
  batch = parallel.global_batch(
    {'tokens': tokens, 'loss_mask': loss_mask.astype(np.float32)}, mesh, tokens.shape[0]
  )
  holder = {'state': training.state, 'compiled': None, 'lower_s': 0.0, 'compile_s': 0.0}

  def step():
    if holder['compiled'] is None:  # the first step: trace + lower, then XLA compile, timed apart
      start = time.perf_counter()
      lowered = training.train_step.lower(holder['state'], training.frozen, batch)
      holder['lower_s'] = time.perf_counter() - start
      start = time.perf_counter()
      holder['compiled'] = lowered.compile()
      holder['compile_s'] = time.perf_counter() - start
    holder['state'], metrics = holder['compiled'](holder['state'], training.frozen, batch)
    return float(metrics['loss'])

  out = _time_steps(step, lambda: jax.block_until_ready(holder['state']))
  out.update(lower_s=holder['lower_s'], compile_s=holder['compile_s'], scan_layers=_SCAN.value)
  trainable, _ = adapters.partition(params)
  out.update(
    load_s=load_s,
    trainable=int(sum(x.size for x in jax.tree.leaves(trainable))),
    torch_imported='torch' in sys.modules,
    dims=dict(
      hidden=config.hidden_size,
      intermediate=config.intermediate_size,
      layers=config.num_layers,
      heads=config.num_heads,
      kv_heads=config.num_kv_heads,
      head_dim=config.head_dim,
      vocab=config.vocab_size,
      seq=_SEQ.value,
    ),
  )
  return out


def _probe():
  """Best float32 ``n x n @ n x n`` rate of JAX and of torch on this machine, FLOP/s."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  n = _PROBE_N.value
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  flops = 2.0 * n**3
  matmul = jax.jit(jnp.matmul)
  x = jnp.asarray(a)
  ta = torch.from_numpy(a)

  def best(fn, reps=8):
    fn()
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return flops / min(times)

  return dict(
    n=n,
    jax_flops=best(lambda: matmul(x, x).block_until_ready()),
    torch_flops=best(lambda: torch.mm(ta, ta)),
  )


def _child_main():
  if _SIDE.value == 'probe':
    out = _probe()
  elif _SIDE.value == 'jax':
    out = _jax_side(_METHOD.value, _DTYPE.value)
  else:
    out = _torch_side(_METHOD.value, _DTYPE.value)
  out['peak_rss'] = bench_common.peak_rss_bytes()
  bench_common.emit(out)


def _forwarded_flags(extra):
  names = ('model', 'hidden', 'layers', 'vocab', 'seq', 'batch', 'steps', 'probe_n', 'scan_layers')
  args = [f'--{n}={flags.FLAGS[n].value}' for n in names]
  args.append(f'--torch_threads={_TORCH_THREADS.value}')
  return args + extra


def _fmt_side(side, flops):
  if side is None or 'unavailable' in side:
    return None
  return dict(
    ms=1e3 * side['step_s'],
    tok_s=_BATCH.value * _SEQ.value / side['step_s'],
    first_s=side['first_step_s'],
    lower_s=side.get('lower_s'),
    compile_s=side.get('compile_s'),
    flop_s=flops / side['step_s'],
    rss_gb=side['peak_rss'] / 1e9,
  )


def _first(side):
  """First-step seconds; ours also split as (trace + lower, XLA compile)."""
  if side.get('compile_s') is None:
    return f'{side["first_s"]:.2f}'
  return f'{side["first_s"]:.2f} ({side["lower_s"]:.1f} + {side["compile_s"]:.1f})'


def _table(rows, ceiling):
  header = (
    '| case | dtype | ours ms/step | torch ms/step | ours / torch | ours tok/s | torch tok/s '
    '| ours first step (s: trace+lower + compile) | torch first step (s) | ours GFLOP/s (% ceiling) '
    '| torch GFLOP/s (% ceiling) | ours peak RSS (GB) | torch peak RSS (GB) | loss rel diff |'
  )
  lines = [header, '|---|---|' + '---:|' * 12]
  for r in rows:
    o, t = r['ours'], r['torch']
    if t is None:
      lines.append(
        f'| {r["method"]} | {r["dtype"]} | {o["ms"]:.1f} | {r["torch_note"]} | - '
        f'| {o["tok_s"]:.0f} | - | {_first(o)} | - '
        f'| {o["flop_s"] / 1e9:.1f} ({100 * o["flop_s"] / ceiling:.0f} %) | - '
        f'| {o["rss_gb"]:.2f} | - | - |'
      )
      continue
    lines.append(
      f'| {r["method"]} | {r["dtype"]} | {o["ms"]:.1f} | {t["ms"]:.1f} | {o["ms"] / t["ms"]:.2f} '
      f'| {o["tok_s"]:.0f} | {t["tok_s"]:.0f} | {_first(o)} | {t["first_s"]:.2f} '
      f'| {o["flop_s"] / 1e9:.1f} ({100 * o["flop_s"] / ceiling:.0f} %) '
      f'| {t["flop_s"] / 1e9:.1f} ({100 * t["flop_s"] / ceiling:.0f} %) '
      f'| {o["rss_gb"]:.2f} | {t["rss_gb"]:.2f} | {r["loss_rel_diff"]:.1e} |'
    )
  return '\n'.join(lines)


def _toy_directory(directory):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  heads = max(_HIDDEN.value // 64, 1)
  config = transformers.LlamaConfig(
    vocab_size=_VOCAB.value,
    hidden_size=_HIDDEN.value,
    intermediate_size=4 * _HIDDEN.value,
    num_hidden_layers=_LAYERS.value,
    num_attention_heads=heads,
    num_key_value_heads=heads,
    max_position_embeddings=_SEQ.value,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
  )
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).float().save_pretrained(directory)


def _parent_main():
  script = os.path.abspath(__file__)
  load_before = bench_common.load_average()
  probe = bench_common.run_child(script, _forwarded_flags(['--side=probe']))
  ceiling = max(probe['jax_flops'], probe['torch_flops'])
  print(
    f'matmul ceiling (float32, n={probe["n"]}): jax {probe["jax_flops"] / 1e9:.1f} GFLOP/s, '
    f'torch {probe["torch_flops"] / 1e9:.1f} GFLOP/s',
    flush=True,
  )
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    extra = []
    if _MODEL.value == 'toy':
      _toy_directory(directory)
      extra = [f'--model_dir={directory}']
    index = 0
    for dtype in _DTYPES.value:
      for method in _METHODS.value:
        case = extra + [f'--method={method}', f'--dtype={dtype}']
        order = ('jax', 'torch') if index % 2 == 0 else ('torch', 'jax')
        order = [side for side in order if side in _SIDES.value]
        index += 1
        sides = {}
        for side in order:
          env = None
          if side == 'jax' and _XLA_FLAGS.value:
            env = {'XLA_FLAGS': f'{os.environ.get("XLA_FLAGS", "")} {_XLA_FLAGS.value}'.strip()}
          sides[side] = bench_common.run_child(
            script, _forwarded_flags(case + [f'--side={side}']), env=env
          )
        jax_side = sides['jax']
        torch_side = sides.get('torch', {'unavailable': 'not run (--sides)'})
        flops = bench_common.train_step_flops(
          jax_side['dims'], _BATCH.value * _SEQ.value, full=method == 'full'
        )
        row = dict(method=method, dtype=dtype, flops_per_step=flops, raw=sides)
        row['ours'] = _fmt_side(jax_side, flops)
        row['torch'] = _fmt_side(torch_side, flops)
        row['torch_note'] = torch_side.get('unavailable')
        if row['torch'] is not None:
          row['loss_rel_diff'] = abs(jax_side['first_loss'] - torch_side['first_loss']) / abs(
            torch_side['first_loss']
          )
          print(
            f'{method:5s} {dtype:8s} ours {row["ours"]["ms"]:8.1f} ms  torch '
            f'{row["torch"]["ms"]:8.1f} ms  ratio {row["ours"]["ms"] / row["torch"]["ms"]:.2f}  '
            f'first loss {jax_side["first_loss"]:.6f} / {torch_side["first_loss"]:.6f}',
            flush=True,
          )
        else:
          print(
            f'{method:5s} {dtype:8s} ours {row["ours"]["ms"]:8.1f} ms  torch: {row["torch_note"]}',
            flush=True,
          )
        rows.append(row)
  table = _table(rows, ceiling)
  print(table)
  report = dict(
    model=_MODEL.value,
    config=dict(
      batch=_BATCH.value,
      seq=_SEQ.value,
      steps=_STEPS.value,
      torch_threads=_TORCH_THREADS.value,
      scan_layers=_SCAN.value,
      xla_flags=_XLA_FLAGS.value,
      **(
        dict(hidden=_HIDDEN.value, layers=_LAYERS.value, vocab=_VOCAB.value)
        if _MODEL.value == 'toy'
        else dict(weights='real GGUF (both sides)')
      ),
    ),
    probe=probe,
    ceiling_flops=ceiling,
    rows=rows,
    machine=dict(bench_common.machine(), load_average_before=load_before, load_average_after=None),
    versions=bench_common.versions(),
    date=bench_common.now_utc(),
    command=' '.join(sys.argv),
    table=table,
  )
  report['machine']['load_average_after'] = report['machine'].pop('load_average')
  if _OUT.value:
    from peft_jax.common import files  # pylint: disable=g-import-not-at-top

    print(f'wrote {files.write_json(_OUT.value, report)}')
  else:
    print(json.dumps(report, indent=2, default=str))


def main(argv):
  del argv
  if _SIDE.value:
    _child_main()
  else:
    _parent_main()


if __name__ == '__main__':
  app.run(main)
