"""A seconds-long offline world (suite, tokenizer, 4 pretraining steps, HF export), built once."""

import pytest

from configs.pretrain import tiny as pretrain_presets
from peft_jax.arena import world


@pytest.fixture(scope='session')
def smoke_world(tmp_path_factory):
  return world.build_world(
    pretrain_presets.get_config('smoke'), str(tmp_path_factory.mktemp('world'))
  )
