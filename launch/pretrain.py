"""Pretrains the tiny base on the offline suite and exports it as a Hugging Face directory.

  python -m launch.pretrain --config=configs/pretrain/tiny.py --workdir=runs/pretrain

Writes <workdir>/{suite,tokenizer,train,hf}; rerunning resumes. Copy <workdir>/hf to
peft_jax/bundled/tiny to replace the bundled base.
"""

import json

from absl import flags
from ml_collections import config_flags

from peft_jax.common import cli, lock

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Pretraining config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from peft_jax.arena import world  # pylint: disable=g-import-not-at-top

  with lock.workdir_lock(_WORKDIR.value):
    print(json.dumps(world.build_world(_CONFIG.value, _WORKDIR.value), indent=1))


if __name__ == '__main__':
  cli.run(main)
