"""The main job: the PEFT-Arena study end to end, with a report.

  python -m launch.arena --config=configs/arena/quick.py --workdir=runs/arena

Rerunning the same command reuses every finished stage whose config slice and inputs are
unchanged and recomputes the rest (printing which and why); ``--dry_run`` prints that plan only.
The workdir is locked while it runs.
The report is <workdir>/report/index.html.
"""

from absl import flags, logging
from ml_collections import config_flags

from peft_jax.common import cli, lock

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  'configs/arena/quick.py',
  'Arena preset (configs/arena/quick.py[:full|custom]).',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/arena', 'Output directory (resumable).')
_DRY_RUN = flags.DEFINE_bool(
  'dry_run', False, 'Print which stages would run and which would be reused, and why; run nothing.'
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from peft_jax.arena import pipeline  # pylint: disable=g-import-not-at-top
  from peft_jax.report import print_summary_table  # pylint: disable=g-import-not-at-top

  if _DRY_RUN.value:
    decisions = pipeline.plan_arena(_CONFIG.value, _WORKDIR.value)
    for decision in decisions:
      print(decision.line())
    runs = sum(d.action != 'reuse' for d in decisions)
    print(f'{runs} of {len(decisions)} stages would run ({_WORKDIR.value})')
    return
  with lock.workdir_lock(_WORKDIR.value):
    results = pipeline.run_arena(_CONFIG.value, _WORKDIR.value)
  print(print_summary_table(results))
  print(f'report: {_WORKDIR.value}/report/index.html ({results["timing"]["total_s"]:.0f} s in all)')


if __name__ == '__main__':
  cli.run(main)
