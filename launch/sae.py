"""Runs the delta-activation SAE study: ``run_sae_study(config, workdir)`` behind absl flags.

  python -m launch.sae --config=configs/sae/quick.py --workdir=/tmp/sae

Adapters missing from ``<workdir>/adapters`` are trained with ``peft_jax.train.trainer.train``.
Rerunning the same command resumes the study (every finished step is kept; an SAE resumes from
its last checkpoint); ``--workdir`` is locked while it runs. Writes ``<workdir>/sae_study.json``.
"""

from absl import flags, logging
from ml_collections import config_flags

from peft_jax.common import cli, lock
from peft_jax.sae.study import run_sae_study
from peft_jax.train import trainer
from peft_jax.train.config import default_config, with_overrides

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'SAE study config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Study directory.')
flags.mark_flags_as_required(['config', 'workdir'])


def train_adapter(overrides: dict, run_dir: str):
  """``trainer.train`` on ``default_config()`` with the study's overrides."""
  return trainer.train(with_overrides(default_config(), overrides, 'sae study'), run_dir)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  log = print if config.get('progress', True) else (lambda message: None)
  with lock.workdir_lock(_WORKDIR.value):
    result = run_sae_study(config, _WORKDIR.value, train_fn=train_adapter, log=log)
  claims = ', '.join(f'{k}: {v["holds"]}' for k, v in result['claims'].items())
  print(f'sae: {len(result["rows"])} rows in {_WORKDIR.value}/sae_study.json; {claims}')


if __name__ == '__main__':
  cli.run(main)
