"""Geometry of a finished training run (weights, activations, CSD, paths, trajectory).

  python -m launch.analyze --workdir=RUN [--config=configs/analyze/default.py \
      --config.general_data=suite/sft/general.jsonl]

Writes RUN/analysis/analysis.json and RUN/analysis/arrays.npz (atomically), holding RUN's lock.
"""

from absl import flags, logging
from ml_collections import config_flags

from peft_jax.common import cli, lock

_CONFIG = config_flags.DEFINE_config_file(
  'config', 'configs/analyze/default.py', 'Analysis config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The launch.train run directory.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from peft_jax.arena import analyze  # pylint: disable=g-import-not-at-top

  with lock.workdir_lock(_WORKDIR.value):
    analysis = analyze.analyze_run(_CONFIG.value, _WORKDIR.value)
  print(f'analysis of {analysis["method"]}: {_WORKDIR.value}/analysis/analysis.json')


if __name__ == '__main__':
  cli.run(main)
