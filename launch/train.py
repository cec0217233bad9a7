"""Fine-tunes a model: ``train(config, workdir)`` behind absl flags.

  python -m launch.train --config=configs/train/tiny.py:lora --workdir=/tmp/run \
      --config.data.path=data/train.jsonl --config.total_steps=50

Rerunning the same command resumes the run in ``--workdir``. Multi-process runs add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or the
``PEFT_JAX_*`` environment variables) on every process.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from peft_jax.parallel import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (config, metrics, checkpoints).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'jax.distributed coordinator HOST:PORT (multi-process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process id.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from peft_jax.train import trainer  # after distributed start-up: nothing touches JAX before
  trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
