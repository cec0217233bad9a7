"""Tiny HF checkpoints shared by the model tests: built, saved and loaded once per session."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import helpers_hf  # noqa: E402  pylint: disable=g-import-not-at-top

from peft_jax import hub  # noqa: E402  pylint: disable=g-import-not-at-top


class LoadedPair:
  """A transformers reference model and the same checkpoint loaded by peft_jax."""

  def __init__(self, model_type, path):
    self.model_type = model_type
    self.path = path
    self.hf_model = helpers_hf.tiny_hf_model(model_type)
    self.hf_model.save_pretrained(path)
    self.model, self.params, _ = hub.load_pretrained(path)
    self.config = self.model.config


@pytest.fixture(scope='session')
def tiny_pairs(tmp_path_factory):
  """{model_type: LoadedPair} for every helpers_hf.MODEL_TYPES variant."""
  root = tmp_path_factory.mktemp('hf_models')
  return {t: LoadedPair(t, root / t) for t in helpers_hf.MODEL_TYPES}
