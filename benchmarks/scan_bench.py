"""Compile time and step time of the LoRA train step, layers scanned vs unrolled, same run.

  .venv/bin/python benchmarks/scan_bench.py --layers=4,12,30 --out=/tmp/scan_bench.json

Model: the tiny Llama-style decoder of ``peft_jax.models`` (``--hidden`` wide, MLP 4x, 4 heads,
GQA 2 kv heads), LoRA rank 8 on q/v, AdamW, the trainer's sharded step
(``train.setup.setup_training``) on one CPU device, float32. For every depth and both layouts
(``ModelConfig.scan_layers`` False / True, the same initial params: the scanned ones are the
unrolled ones stacked):

* ``compile_s``: ``lower`` + ``compile`` of the jitted step (tracing included), persistent
  compilation cache off so nothing is read from disk, after a discarded warm-up compile of a
  2-layer model in each layout;
* ``step_ms``: median wall time of ``--steps`` calls of the compiled step after one warm-up call,
  the two layouts measured alternately step by step (a shared machine slows both alike);
* ``hlo_kb``: size of the optimized HLO text (program size grows with depth when unrolled);
* ``loss_diff``: |first-step loss scanned - unrolled| (the two compute the same function).

Prints a table and writes every number, the machine and the versions as JSON (``--out``).
"""

import json
import platform
import statistics
import subprocess
import time

import jax
import numpy as np
from absl import app, flags

_LAYERS = flags.DEFINE_list('layers', ['4', '12', '30'], 'Depths to measure.')
_HIDDEN = flags.DEFINE_integer('hidden', 64, 'd_model (tiny: the point is depth).')
_SEQ = flags.DEFINE_integer('seq', 64, 'Sequence length.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per layout.')
_OUT = flags.DEFINE_string('out', None, 'Write the results here as JSON (atomically).')


def _case(num_layers, scan):
  from peft_jax import models, parallel  # pylint: disable=g-import-not-at-top
  from peft_jax.adapters import api as adapters  # pylint: disable=g-import-not-at-top
  from peft_jax.train.setup import setup_training  # pylint: disable=g-import-not-at-top
  from peft_jax.train.trainer import make_loss_fn  # pylint: disable=g-import-not-at-top

  d = _HIDDEN.value
  config = models.ModelConfig(
    vocab_size=256,
    hidden_size=d,
    intermediate_size=4 * d,
    num_layers=num_layers,
    num_heads=4,
    num_kv_heads=2,
    head_dim=d // 4,
    scan_layers=scan,
  )
  params = models.init_params(config, jax.random.PRNGKey(0))
  method = adapters.LoRA(rank=8, alpha=16.0)
  params = adapters.inject(params, method, ['q_proj', 'v_proj'], jax.random.PRNGKey(1))
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  training = setup_training(
    params,
    models.param_logical_axes(params, config),
    loss_fn=make_loss_fn(models.Decoder(config), method, mesh),
    partition_fn=adapters.partition,
    mesh=mesh,
    optimizer_kwargs=dict(peak_lr=1e-3, total_steps=1000, warmup_steps=1),
  )
  rng = np.random.default_rng(0)
  shape = (_BATCH.value, _SEQ.value)
  batch = {
    'tokens': rng.integers(0, 256, shape).astype(np.int32),
    'loss_mask': np.ones(shape, np.float32),
    'segment_ids': np.ones(shape, np.int32),
    'positions': np.broadcast_to(np.arange(_SEQ.value, dtype=np.int32), shape).copy(),
  }
  batch = parallel.global_batch(batch, mesh, _BATCH.value)
  start = time.perf_counter()
  compiled = training.train_step.lower(training.state, training.frozen, batch).compile()
  compile_s = time.perf_counter() - start
  hlo_kb = len(compiled.as_text()) / 1024
  state = training.state
  state, metrics = compiled(state, training.frozen, batch)  # warm-up
  first_loss = float(metrics['loss'])
  holder = {'state': state}

  def step():
    holder['state'], out = compiled(holder['state'], training.frozen, batch)
    jax.block_until_ready(out)

  return dict(compile_s=compile_s, hlo_kb=hlo_kb, first_loss=first_loss), step


def _cpu_model():
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    return next(line.split(':', 1)[1].strip() for line in out.splitlines() if 'Model name' in line)
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return platform.processor() or 'unknown'


def main(argv):
  del argv
  jax.config.update('jax_enable_compilation_cache', False)
  import flax  # pylint: disable=g-import-not-at-top

  # Warm-up: the first trace and compile of a process pays one-time costs (lowering rules,
  # backend start-up) that belong to neither layout.
  for scan in (False, True):
    _case(2, scan)
  rows = []
  for layers in [int(x) for x in _LAYERS.value]:
    unrolled, step_u = _case(layers, False)
    scanned, step_s = _case(layers, True)
    times = {'unrolled': [], 'scan': []}
    for _ in range(_STEPS.value):  # alternate: both see the same machine load
      for name, step in (('unrolled', step_u), ('scan', step_s)):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
    for name, info in (('unrolled', unrolled), ('scan', scanned)):
      info['step_ms'] = 1e3 * statistics.median(times[name])
    rows.append(
      dict(
        layers=layers,
        unrolled=unrolled,
        scan=scanned,
        loss_diff=abs(unrolled['first_loss'] - scanned['first_loss']),
      )
    )
    print(f'measured {layers} layers', flush=True)
  header = (
    f'| layers | compile unrolled (s) | compile scan (s) | step unrolled (ms) | step scan (ms) '
    f'| HLO unrolled (KiB) | HLO scan (KiB) | loss diff |'
  )
  lines = [header, '|' + '---:|' * 8]
  for r in rows:
    u, s = r['unrolled'], r['scan']
    lines.append(
      f'| {r["layers"]} | {u["compile_s"]:.2f} | {s["compile_s"]:.2f} | {u["step_ms"]:.1f} '
      f'| {s["step_ms"]:.1f} | {u["hlo_kb"]:.0f} | {s["hlo_kb"]:.0f} | {r["loss_diff"]:.1e} |'
    )
  print('\n'.join(lines))
  report = dict(
    rows=rows,
    config=dict(
      hidden=_HIDDEN.value, seq=_SEQ.value, batch=_BATCH.value, steps=_STEPS.value, rank=8
    ),
    machine=dict(cpu=_cpu_model(), backend=jax.default_backend(), devices=1),
    versions=dict(jax=jax.__version__, flax=flax.__version__, python=platform.python_version()),
    date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
    table='\n'.join(lines),
  )
  if _OUT.value:
    from peft_jax.common import files  # pylint: disable=g-import-not-at-top

    print(f'wrote {files.write_json(_OUT.value, report)}')
  else:
    print(json.dumps(report, indent=2))


if __name__ == '__main__':
  app.run(main)
