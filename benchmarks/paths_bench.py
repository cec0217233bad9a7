"""Speed of the batched α-grid (one compiled program over every α) against a loop of separate
evaluations, same weights, same batch, same run.

  # toy decoder (seconds):
  .venv/bin/python benchmarks/paths_bench.py --out=/tmp/paths_toy.json
  # the real SmolLM2-135M (its GGUF weights), 11 alphas, batch 4 x 128:
  .venv/bin/python benchmarks/paths_bench.py --model=smollm2 --out=/tmp/paths_smollm2.json

The evaluation at one point of the path is what the arena's log-likelihood scorer computes: the
mean next-token negative log-likelihood and the token accuracy of a fixed batch under
``θ(α) = θ0 + α (θ1 - θ0)``. ``θ0`` is the base model; ``θ1`` is the base with every weight moved
by a rank-8 update (as a merged LoRA would be) of relative size ``--delta``, so the path is a
real curve and the numbers of the variants can be compared.

Variants (each compiled once before timing; compile times reported apart):

* ``loop_host``: what one writes without a grid: for each α, the interpolated params built on
  the host side (``jax.tree.map``, one dispatch per leaf), then a jitted evaluation;
* ``loop_jit``: for each α, one jitted call that interpolates and evaluates (11 calls);
* ``grid_vmap``: ``geometry.evaluate_alpha_grid(..., mode='vmap')``, every α in one batched
  program (memory x num_alphas);
* ``grid_map``: the same with ``mode='map'`` (``lax.map``: one compiled loop over α, memory of one
  evaluation).

Reported: median seconds for the whole grid over ``--repeats`` (the variants alternate, so a busy
machine slows them alike), the ratio ``loop_host / variant`` (> 1: faster than the plain loop),
compile seconds, and the largest difference of each variant's NLL curve from ``loop_jit``'s.
"""

import statistics
import sys
import time

import bench_common
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from peft_jax import geometry, hub, models
from peft_jax.common import files

_MODEL = flags.DEFINE_enum('model', 'toy', ['toy', 'smollm2'], 'Which model.')
_HIDDEN = flags.DEFINE_integer('hidden', 256, 'toy: d_model.')
_LAYERS = flags.DEFINE_integer('layers', 4, 'toy: decoder layers.')
_VOCAB = flags.DEFINE_integer('vocab', 512, 'toy: vocabulary size.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Sequences in the evaluated batch.')
_SEQ = flags.DEFINE_integer('seq', 128, 'Tokens per sequence.')
_ALPHAS = flags.DEFINE_integer('alphas', 11, 'Points on the path (0 .. 1).')
_DELTA = flags.DEFINE_float('delta', 0.05, 'Relative size of the rank-8 weight update.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats of each variant (median).')
_VARIANTS = flags.DEFINE_list(
  'variants', ['loop_host', 'loop_jit', 'grid_vmap', 'grid_map'], 'Which variants to time.'
)
_OUT = flags.DEFINE_string('out', None, 'Write every number here as JSON (atomically).')

SMOLLM = 'smollm2-135m-instruct'


def _model_and_params():
  if _MODEL.value == 'smollm2':
    model, params, _ = hub.load_pretrained(SMOLLM)
    return model, params
  d = _HIDDEN.value
  config = models.ModelConfig(
    vocab_size=_VOCAB.value,
    hidden_size=d,
    intermediate_size=4 * d,
    num_layers=_LAYERS.value,
    num_heads=max(d // 64, 1),
    num_kv_heads=max(d // 64, 1),
    head_dim=min(d, 64),
  )
  return models.Decoder(config), models.init_params(config, jax.random.PRNGKey(0))


def _tuned(params, key):
  """``θ1``: every 2-D kernel plus a rank-8 update of relative Frobenius size ``--delta``."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for leaf, k in zip(leaves, keys):
    if leaf.ndim != 2:
      out.append(leaf)
      continue
    ka, kb = jax.random.split(k)
    update = jax.random.normal(ka, (leaf.shape[0], 8)) @ jax.random.normal(kb, (8, leaf.shape[1]))
    scale = _DELTA.value * jnp.linalg.norm(leaf) / jnp.linalg.norm(update)
    out.append((leaf + scale * update).astype(leaf.dtype))
  return jax.tree.unflatten(treedef, out)


def main(argv):
  del argv
  load_before = bench_common.load_average()
  model, theta0 = _model_and_params()
  theta1 = _tuned(theta0, jax.random.PRNGKey(1))
  vocab = model.config.vocab_size
  tokens = np.random.default_rng(0).integers(0, vocab, (_BATCH.value, _SEQ.value), np.int32)
  tokens = jnp.asarray(tokens)

  def evaluate(params):
    logits = model.apply({'params': params}, tokens[:, :-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = tokens[:, 1:]
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return {'nll': nll.mean(), 'accuracy': (logits.argmax(-1) == targets).mean()}

  alphas = jnp.asarray(geometry.linspace_alphas(_ALPHAS.value))
  eval_jit = jax.jit(evaluate)
  point_jit = jax.jit(lambda t0, t1, a: evaluate(geometry.interpolate(t0, t1, a)))

  def loop_host():
    return [eval_jit(geometry.interpolate(theta0, theta1, a)) for a in alphas]

  def loop_jit():
    return [point_jit(theta0, theta1, a) for a in alphas]

  def grid(mode):
    return lambda: geometry.evaluate_alpha_grid(evaluate, theta0, theta1, alphas, mode=mode)

  runners = {
    'loop_host': loop_host,
    'loop_jit': loop_jit,
    'grid_vmap': grid('vmap'),
    'grid_map': grid('map'),
  }
  runners = {name: runners[name] for name in _VARIANTS.value}

  def nll_curve(result):
    if isinstance(result, list):
      return np.asarray([float(r['nll']) for r in result], np.float64)
    return np.asarray(result['nll'], np.float64)

  compile_s, curves = {}, {}
  for name, run in runners.items():  # the first call compiles (a loop compiles its one program)
    start = time.perf_counter()
    curves[name] = nll_curve(jax.block_until_ready(run()))
    compile_s[name] = time.perf_counter() - start
  times = {name: [] for name in runners}
  for _ in range(_REPEATS.value):
    for name, run in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      times[name].append(time.perf_counter() - start)
  median = {name: statistics.median(t) for name, t in times.items()}
  for name in runners:  # first call minus one run: the compile (and trace) share
    compile_s[name] = max(compile_s[name] - median[name], 0.0)
  reference = curves.get('loop_jit', next(iter(curves.values())))
  baseline = median.get('loop_host', next(iter(median.values())))

  config = model.config
  print(
    f'model {_MODEL.value} (d {config.hidden_size}, {config.num_layers} layers, vocab {vocab}); '
    f'batch {_BATCH.value} x {_SEQ.value}; {len(alphas)} alphas; median of {_REPEATS.value}'
  )
  header = (
    '| variant | grid (s) | per alpha (ms) | loop_host / variant | compile (s) '
    '| max NLL diff vs loop_jit |'
  )
  lines = [header, '|---|---:|---:|---:|---:|---:|']
  rows = []
  for name in runners:
    diff = float(np.max(np.abs(curves[name] - reference)))
    rows.append(
      dict(
        variant=name,
        grid_s=median[name],
        times_s=times[name],
        compile_s=compile_s[name],
        speedup_vs_loop_host=baseline / median[name],
        max_nll_diff=diff,
        nll=curves[name].tolist(),
      )
    )
    lines.append(
      f'| {name} | {median[name]:.3f} | {1e3 * median[name] / len(alphas):.1f} '
      f'| {baseline / median[name]:.2f} | {compile_s[name]:.2f} | {diff:.1e} |'
    )
  table = '\n'.join(lines)
  print(table)
  print(f'NLL along the path (loop_jit): {np.round(reference, 4).tolist()}')
  report = dict(
    model=_MODEL.value,
    config=dict(
      batch=_BATCH.value,
      seq=_SEQ.value,
      alphas=len(alphas),
      delta=_DELTA.value,
      repeats=_REPEATS.value,
      hidden=config.hidden_size,
      layers=config.num_layers,
      vocab=vocab,
    ),
    rows=rows,
    table=table,
    machine=dict(
      bench_common.machine(), load_average_before=load_before, devices=str(jax.devices())
    ),
    versions=bench_common.versions(),
    date=bench_common.now_utc(),
    command=' '.join(sys.argv),
  )
  if _OUT.value:
    print(f'wrote {files.write_json(_OUT.value, report)}')


if __name__ == '__main__':
  app.run(main)
