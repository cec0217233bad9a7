"""Shared fixtures of the training tests."""

import json

import pytest


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('data') / 'train.jsonl'
  with open(path, 'w') as f:
    for i in range(64):
      f.write(
        json.dumps({'prompt': f'What is {i} plus {i % 7}? ', 'completion': f'{i + i % 7}.'}) + '\n'
      )
  return str(path)
