"""Loading a GGUF file: peft_jax against transformers, each in its own fresh process.

  .venv/bin/python benchmarks/gguf_load_bench.py                      # SmolLM2-135M-Instruct Q4_1
  .venv/bin/python benchmarks/gguf_load_bench.py --gguf=path/to/model.gguf --repeats=3

Each measurement starts a new Python process (so neither side profits from the other's page
cache of imports or from warm allocators; the GGUF file itself is in the OS page cache after the
first run either way), which imports its stack, records its resident set size, then loads:

- ``peft_jax``: ``hub.load_pretrained(file)`` -> (Decoder, float32 params, tokenizer), params
  blocked until ready.
- ``transformers``: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (float32; without
  a GGUF kernel it dequantizes every weight) and ``AutoTokenizer.from_pretrained(dir,
  gguf_file=...)``.

Reported: import seconds (the stack, ``gguf``, and for peft_jax the XLA CPU client), load
seconds (model + tokenizer), peak RSS of the process (``ru_maxrss``), RSS after imports, and
their difference (what loading added at its peak: the params, the touched pages of the
memory-mapped file, transient per-tensor buffers, the tokenizer), in MiB; ``weights_f32_mib`` is the size of one float32 copy of all parameters. Medians over
``--repeats`` processes per side, sides alternated. A JSON with every run goes to ``--out``.
"""

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

_GGUF = flags.DEFINE_string(
  'gguf', 'smollm2-135m-instruct', 'A .gguf file, or a named base of peft_jax.hub.gguf.NAMED_BASES.'
)
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Fresh processes per side (median reported).')
_OUT = flags.DEFINE_string('out', 'runs/bench/gguf_load.json', 'JSON output path.')
_SIDE = flags.DEFINE_enum(
  'side',
  None,
  ['peft_jax', 'transformers'],
  'Internal: run one measurement in this process and print JSON.',
)

_MIB = 1024.0  # ru_maxrss is in KiB on Linux


def _rss_mib() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return float(line.split()[1]) / _MIB
  return float('nan')


def _measure(side: str, gguf_file: pathlib.Path) -> dict:
  start = time.perf_counter()
  if side == 'peft_jax':
    import jax  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top,unused-import  (tokenizer class)

    from peft_jax import hub  # pylint: disable=g-import-not-at-top

    jax.devices()  # the XLA CPU client, so its memory counts before the load
  else:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  import gguf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  import_s = time.perf_counter() - start
  rss_before = _rss_mib()
  start = time.perf_counter()
  if side == 'peft_jax':
    _, params, tokenizer = hub.load_pretrained(gguf_file)
    jax.block_until_ready(params)
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  else:
    model = transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(
      str(gguf_file.parent), gguf_file=gguf_file.name
    )
    n_params = sum(p.numel() for p in model.parameters())
  load_s = time.perf_counter() - start
  assert tokenizer is not None
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _MIB
  return dict(
    side=side,
    import_s=import_s,
    load_s=load_s,
    rss_after_import_mib=rss_before,
    peak_rss_mib=peak,
    load_added_peak_mib=peak - rss_before,
    weights_f32_mib=n_params * 4 / 2**20,
    n_params=n_params,
  )


def _resolve(name: str) -> pathlib.Path:
  from peft_jax.hub import gguf as gguf_io  # pylint: disable=g-import-not-at-top

  found = gguf_io.find_gguf_file(name)
  if found is None:
    raise SystemExit(f'{name} is not a GGUF file or named base')
  return found.resolve()


def main(argv):
  del argv
  gguf_file = _resolve(_GGUF.value)
  if _SIDE.value:
    print('RESULT ' + json.dumps(_measure(_SIDE.value, gguf_file)), flush=True)
    return
  env = dict(os.environ, TOKENIZERS_PARALLELISM='false', HF_HUB_OFFLINE='1')
  root = str(pathlib.Path(__file__).resolve().parent.parent)
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  runs = []
  for _ in range(_REPEATS.value):
    for side in ('peft_jax', 'transformers'):
      out = subprocess.run(
        [sys.executable, __file__, f'--side={side}', f'--gguf={gguf_file}'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
      )
      line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')][-1]
      runs.append(json.loads(line[len('RESULT ') :]))

  def median(side, key):
    return statistics.median(r[key] for r in runs if r['side'] == side)

  keys = ('import_s', 'load_s', 'rss_after_import_mib', 'peak_rss_mib', 'load_added_peak_mib')
  summary = {side: {k: median(side, k) for k in keys} for side in ('peft_jax', 'transformers')}
  weights = runs[0]['weights_f32_mib']
  print(
    f'{gguf_file.name}: {runs[0]["n_params"]:,} params, one float32 copy = {weights:.0f} MiB, '
    f'file {gguf_file.stat().st_size / 2**20:.0f} MiB; medians of {_REPEATS.value} '
    'fresh process(es) per side'
  )
  print(f'| {"":12} | import s | load s | RSS after import MiB | peak RSS MiB | load added MiB |')
  print('|---|---:|---:|---:|---:|---:|')
  for side, row in summary.items():
    print(
      f'| {side:12} | {row["import_s"]:8.1f} | {row["load_s"]:6.1f} | '
      f'{row["rss_after_import_mib"]:19.0f} | {row["peak_rss_mib"]:12.0f} | '
      f'{row["load_added_peak_mib"]:14.0f} |'
    )
  out_path = pathlib.Path(_OUT.value)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text(json.dumps(dict(file=str(gguf_file), summary=summary, runs=runs), indent=2))
  print(f'wrote {out_path}')


if __name__ == '__main__':
  app.run(main)
