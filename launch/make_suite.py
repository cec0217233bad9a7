r"""Writes the offline capability suite and trains its tokenizer.

    python -m launch.make_suite --out_dir=/tmp/suite --seed=0

writes the task files, SFT pairs, pretraining corpus and manifest under ``--out_dir``
(peft_jax/data/suite/generate.py lists them) and, unless ``--notrain_tokenizer``, a byte-level BPE
tokenizer in ``<out_dir>/tokenizer`` trained on the corpus plus the target training text.
"""

import json
import os

from absl import flags, logging

from peft_jax.common import cli, lock
from peft_jax.data import suite, tokenizer_train

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Directory to write the suite into.', required=True)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed every split derives from.')
_SIZES = flags.DEFINE_string(
  'sizes', '', 'JSON object overriding suite.DEFAULT_SIZES, e.g. \'{"ifeval_train": 3000}\'.'
)
_TRAIN_TOKENIZER = flags.DEFINE_bool(
  'train_tokenizer', True, 'Also train the tokenizer into <out_dir>/tokenizer.'
)
_VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 2048, 'Tokenizer vocabulary size.')


def main(argv):
  del argv
  sizes = json.loads(_SIZES.value) if _SIZES.value else None
  with lock.workdir_lock(_OUT_DIR.value):
    paths = suite.generate_suite(_OUT_DIR.value, seed=_SEED.value, sizes=sizes)
    logging.info('wrote %d suite files under %s', len(paths), _OUT_DIR.value)
    if _TRAIN_TOKENIZER.value:
      texts = tokenizer_train.corpus_texts(suite.tokenizer_training_files(paths))
      written = suite.train_tokenizer(
        texts, os.path.join(_OUT_DIR.value, 'tokenizer'), vocab_size=_VOCAB_SIZE.value
      )
      logging.info('wrote tokenizer to %s', written['tokenizer_dir'])


if __name__ == '__main__':
  cli.run(main)
