"""A corrupt newest checkpoint (truncated data file, garbled metadata, missing state/) is named,
moved aside (never deleted), and the run resumes from the previous intact one, ending
bit-identical to a run that was never corrupted."""

import os
import shutil

from reliability_support import (
  REFERENCE_STEPS,
  assert_same_checkpoint,
  failure_line,
  losses,
  train_args,
)


def _truncate_data(step_dir):
  data_dir = os.path.join(step_dir, 'state', 'd')  # the OCDBT data files of the state item
  for name in os.listdir(data_dir):
    path = os.path.join(data_dir, name)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def _garble_metadata(step_dir):
  with open(os.path.join(step_dir, 'state', '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": garbled')


def _remove_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'state'))


CORRUPTIONS = {6: _truncate_data, 5: _garble_metadata, 4: _remove_state}


def _files(directory):
  return sorted(
    os.path.relpath(os.path.join(root, f), directory)
    for root, _, files in os.walk(directory)
    for f in files
  )


def test_corrupt_newest_checkpoints_fall_back_to_intact_one(launcher, reference_run, tmp_path):
  """The newest checkpoint truncated (6), the next one's metadata garbled (5), the next one
  without its state/ (4): each is named in a warning and moved aside whole, and the run resumes
  from step 3, ending bit-identical to the reference."""
  reference, data = reference_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  before = {}
  for step, corrupt in CORRUPTIONS.items():
    corrupt(os.path.join(workdir, 'checkpoints', str(step)))
    before[step] = _files(os.path.join(workdir, 'checkpoints', str(step)))
  code, _, err = launcher.run(train_args(workdir, data, '--config.checkpoint.keep=4', every=1))
  assert code == 0, err[-2000:]
  warnings = [l for l in err.splitlines() if 'is unreadable' in l]
  assert len(warnings) == 3, err[-3000:]
  moved_root = os.path.join(workdir, 'checkpoints.corrupt')
  for step, warning in zip((6, 5, 4), warnings):
    bad = os.path.join(workdir, 'checkpoints', str(step))
    assert f'checkpoint step {step} at {bad} is unreadable' in warning
    assert 'falling back to the previous intact checkpoint, step 3' in warning
    (moved,) = [d for d in os.listdir(moved_root) if d.startswith(f'{step}-')]
    assert f'moved (not deleted) to {moved_root}/{moved}' in warning
    assert _files(os.path.join(moved_root, moved)) == before[step]  # kept whole
  assert 'OUT_OF_RANGE' in warnings[0] or 'DATA_LOSS' in warnings[0]  # the truncated file
  assert 'JSONDecodeError' in warnings[1] and 'state' in warnings[2]
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))) == [3, 4, 5, 6]
  assert_same_checkpoint(reference, workdir, 6)
  assert losses(workdir) == losses(reference)


def test_every_checkpoint_corrupt_is_refused_untouched(launcher, reference_run, tmp_path):
  reference, data = reference_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  for step in REFERENCE_STEPS:
    _remove_state(os.path.join(workdir, 'checkpoints', str(step)))
  code, _, err = launcher.run(train_args(workdir, data, '--config.checkpoint.keep=4', every=1))
  assert code == 1, err[-2000:]
  last = failure_line(err)
  assert last.startswith('CheckpointCorruptError: no checkpoint in '), last
  for step in REFERENCE_STEPS:
    assert f'step {step} at {workdir}/checkpoints/{step}:' in last
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))) == REFERENCE_STEPS
  assert not os.path.exists(os.path.join(workdir, 'checkpoints.corrupt'))
