r"""Writes the real-base evaluation suite and measures the base on it (docs/REAL.md).

  python -m launch.real_eval --out_dir=runs/real_eval --base=smollm2-135m-instruct \
      --limits='{"bbh": 10, "gsm": 48}'

writes the suite under ``<out_dir>/suite`` (``peft_jax.data.real_suite``), evaluates the base on
every task (``peft_jax.evals.real.evaluate_base``: per-example files, the retention set, the
above-chance BBH subtasks, ``base_eval.json``) and prints the table: score, 95% interval, n,
floor and seconds per task.
"""

import json
import os

from absl import flags

from peft_jax.common import cli, lock

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory.', required=True)
_BASE = flags.DEFINE_string('base', 'smollm2-135m-instruct', 'Base model (load_pretrained).')
_SEED = flags.DEFINE_integer('seed', 0, 'Suite seed.')
_LIMITS = flags.DEFINE_string('limits', '', 'JSON {task: examples} (BBH: per subtask).')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Prompts per generation call.')


def main(argv):
  del argv
  # Imported after absl parsed the flags: importing JAX is slow and reads XLA_FLAGS.
  from peft_jax import hub  # pylint: disable=g-import-not-at-top
  from peft_jax.data import real_suite  # pylint: disable=g-import-not-at-top
  from peft_jax.evals import real  # pylint: disable=g-import-not-at-top

  with lock.workdir_lock(_OUT_DIR.value):
    suite_dir = os.path.join(_OUT_DIR.value, 'suite')
    real_suite.write_real_suite(suite_dir, seed=_SEED.value)
    model, params, tokenizer = hub.load_pretrained(_BASE.value)
    summary = real.evaluate_base(
      model,
      params,
      tokenizer,
      suite_dir,
      os.path.join(_OUT_DIR.value, 'base'),
      limits=json.loads(_LIMITS.value) if _LIMITS.value else None,
      batch_size=_BATCH.value,
    )
  print(f'{"task":<16}{"kind":<9}{"score":>8}  {"95% interval":<17}{"n":>5}{"floor":>7}{"s":>7}')
  for name, r in summary['tasks'].items():
    lo, hi = r['interval'] or (float('nan'),) * 2
    floor = '-' if r['floor'] is None else f'{r["floor"]:.3f}'
    print(
      f'{name:<16}{r["kind"]:<9}{r["score"]:>8.3f}  [{lo:.3f}, {hi:.3f}]   {r["n"]:>5}'
      f'{floor:>7}{r["seconds"]:>7.0f}'
    )
  nll = summary['nll_per_token']
  print(f'pydoc NLL/token {nll["value"]:.3f} {nll["interval"]}')
  ret = summary['retention']
  print(
    f'retention set: {ret["num_items"]} of {ret["of"]} items ({ret["source"]}) {ret["per_relation"]}'
  )
  for subtask, r in summary['bbh'].items():
    print(
      f'  bbh {subtask:<42} {r["accuracy"]:.3f} {r["interval"]} chance {r["chance"]:.3f} above={r["above"]}'
    )


if __name__ == '__main__':
  cli.run(main)
