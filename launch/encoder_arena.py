"""The encoder study end to end, with a report (peft_jax.arena.encoder_study).

  python -m launch.encoder_arena --config=configs/arena/encoder.py --workdir=runs/encoder

Rerunning the same command reuses every finished stage whose config slice and inputs are
unchanged and recomputes the rest (printing which and why); ``--dry_run`` prints that plan only.
The workdir is locked while it runs. The report is <workdir>/report/index.html (and index.md).
"""

from absl import flags, logging
from ml_collections import config_flags

from peft_jax.common import cli, lock

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  'configs/arena/encoder.py',
  'Encoder arena preset (configs/arena/encoder.py[:smoke]).',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/encoder', 'Output directory (resumable).')
_DRY_RUN = flags.DEFINE_bool(
  'dry_run', False, 'Print which stages would run and which would be reused, and why; run nothing.'
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from peft_jax.arena import encoder_study  # pylint: disable=g-import-not-at-top

  if _DRY_RUN.value:
    decisions = encoder_study.plan_encoder_arena(_CONFIG.value, _WORKDIR.value)
    for decision in decisions:
      print(decision.line())
    runs = sum(d.action != 'reuse' for d in decisions)
    print(f'{runs} of {len(decisions)} stages would run ({_WORKDIR.value})')
    return
  with lock.workdir_lock(_WORKDIR.value):
    results = encoder_study.run_encoder_arena(_CONFIG.value, _WORKDIR.value)
  for name, m in results['methods'].items():
    lo, hi = m['interval'] or (float('nan'), float('nan'))
    rho = m['drift']['similarity_spearman']
    print(f'{name:<8} accuracy {m["accuracy"]:.3f} [{lo:.3f}, {hi:.3f}]  similarity rho {rho:.3f}')
  timing = results['timing']
  print(
    f'report: {_WORKDIR.value}/report/index.html (this run {timing["total_s"]:.0f} s; '
    f'the stages took {sum(timing["stages"].values()):.0f} s when computed)'
  )


if __name__ == '__main__':
  cli.run(main)
