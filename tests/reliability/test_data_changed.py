"""The training data's fingerprint (path, size, content hash) guards a resume like the config
does; rows longer than seq_len are counted and reported, or dropped on request."""

import json
import os

from reliability_support import train_args


def _write(path, rows):
  with open(path, 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


def test_changed_data_refused_unless_allowed(launcher, tmp_path):
  data = str(tmp_path / 'train.jsonl')
  rows = [
    {'prompt': f'What is {i} plus {i % 7}? ', 'completion': f'{i + i % 7}.'} for i in range(64)
  ]
  rows[5] = {'prompt': 'Say it long: ', 'completion': 'x' * 80}  # longer than seq_len=32
  _write(data, rows)
  workdir = str(tmp_path / 'run')
  code, _, err = launcher.run(train_args(workdir, data, steps=6, every=6))
  assert code == 0, err[-2000:]
  warning = next(l for l in err.splitlines() if 'longer than seq_len' in l)
  assert '1 of 64 SFT rows are longer than seq_len=32 tokens and were cut' in warning
  assert f'Example: {data} line 6 (' in warning and 'config.data.drop_truncated=True' in warning

  rows[3]['completion'] = '99.'  # same path, same size class, other content
  _write(data, rows)
  code, _, err = launcher.run(train_args(workdir, data, steps=6, every=6))
  assert code == 1, err[-2000:]
  assert 'data_fingerprint.sha256: saved' in err
  assert '--config.data.allow_changed_data=True' in err

  code, out, err = launcher.run(
    train_args(workdir, data, '--config.data.allow_changed_data=True', steps=6, every=6)
  )
  assert code == 0, err[-2000:]
  assert 'resuming although data_fingerprint.sha256' in err and 'changed (allowed' in err
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)['data_fingerprint']
  assert saved['path'] == data and saved['size'] == os.path.getsize(data)
