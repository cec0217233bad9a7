"""A start that fails validation (model, tokenizer, data) writes nothing, so the corrected
command then runs as a fresh start instead of being refused as an incompatible resume.
(Malformed data files: test_malformed_inputs.py.)"""

import os

import pytest
from reliability_support import train_args


@pytest.mark.parametrize(
  'bad, message',
  [
    ('--config.adapter.kwargs.rank=1000', 'rank=1000 is invalid for a kernel of shape'),
    (
      '--config.data.tokenizer=/nonexistent/tok',
      "config.data.tokenizer='/nonexistent/tok': tokenizer directory /nonexistent/tok does not "
      'exist',
    ),
  ],
)
def test_failed_start_writes_nothing(bad, message, launcher, reference_run, tmp_path):
  _, data = reference_run
  workdir = str(tmp_path / 'run')
  args = train_args(workdir, data)
  code, _, err = launcher.run(args + [bad.format(data=data)])
  assert code == 1, err[-2000:]
  assert message.format(data=data) in err, err[-2000:]
  assert not os.path.exists(workdir), os.listdir(workdir)


def test_typo_then_corrected_run(launcher, reference_run, tmp_path):
  _, data = reference_run
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)  # an existing (empty) workdir stays as it was, too
  code, _, err = launcher.run(train_args(workdir, data + 'x'))
  assert code == 1 and f"SFT data '{data}x'" in err, err[-2000:]
  assert os.listdir(workdir) == []
  code, out, err = launcher.run(train_args(workdir, data))
  assert code == 0, err[-2000:]
  assert 'steps 0..6 done' in out
