"""Fine-tunes a model: ``train(config, workdir)`` behind absl flags.

  python -m launch.train --config=configs/train/tiny.py:lora --workdir=/tmp/run \
      --config.data.path=data/train.jsonl --config.total_steps=50
  python -m launch.train --config=configs/train/grpo.py:lora --workdir=/tmp/grpo \
      --config.grpo.task.path=train.jsonl

``config.algorithm`` picks the trainer: ``'sft'`` (absent: SFT, ``peft_jax.train.train``) or
``'grpo'`` (RL with verifiable rewards, ``peft_jax.rl.grpo.train``).

Rerunning the same command resumes the run in ``--workdir``, which is locked while it runs (a
second run on it is refused, naming the first one's pid and host). SIGTERM/SIGINT save a
checkpoint at the current step and exit with 128 + the signal number. Multi-process runs add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or the
``PEFT_JAX_*`` environment variables) on every process.
"""

from absl import flags, logging
from ml_collections import config_flags

from peft_jax.common import cli, lock
from peft_jax.parallel import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (config, metrics, checkpoints).')
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'jax.distributed coordinator HOST:PORT (multi-process).'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process id.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax  # pylint: disable=g-import-not-at-top

  from peft_jax.rl import grpo  # pylint: disable=g-import-not-at-top
  from peft_jax.train import trainer  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  algorithm = config.get('algorithm', 'sft')
  if algorithm not in ('sft', 'grpo'):
    raise ValueError(f"config.algorithm={algorithm!r}; valid: 'sft', 'grpo'")
  # Process 0 holds the lock for all processes of a multi-process run.
  with lock.workdir_lock(_WORKDIR.value, enabled=jax.process_index() == 0):
    if algorithm == 'grpo':
      result = grpo.train(config, _WORKDIR.value)
    else:
      result = trainer.train(config, _WORKDIR.value)
  if jax.process_index() == 0 and algorithm == 'grpo':
    last = (
      f'final mean reward {result.metrics[-1][1]["reward_mean"]:.4f}'
      if result.metrics
      else 'nothing left to run'
    )
    print(
      f'grpo: steps {result.start_step}..{config.total_steps} done, {last}; '
      f'workdir {_WORKDIR.value}'
    )
  elif jax.process_index() == 0:
    last = f'final loss {result.losses[-1][1]:.4f}' if result.losses else 'nothing left to run'
    print(
      f'train: steps {result.start_step}..{_CONFIG.value.total_steps} done, {last}; '
      f'workdir {_WORKDIR.value}'
    )


if __name__ == '__main__':
  cli.run(main)
