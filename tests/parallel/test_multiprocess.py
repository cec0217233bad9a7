"""Two local processes x 4 CPU devices (jax.distributed over gloo on 127.0.0.1) train 10 LoRA
steps through ``launch.train`` with per-process data loading (``config.data.num_shards=2``: each
process reads and tokenises only its shard of the rows) and reproduce the losses of one process
on 8 devices reading both shards (1e-5); the checkpoints hold the iterator state."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from peft_jax.train import default_config, read_metrics, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 10


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('data') / 'train.jsonl'
  with open(path, 'w') as f:
    for i in range(48):
      f.write(
        json.dumps(
          {
            'messages': [
              {'role': 'user', 'content': f'{i} + {i % 5} ='},
              {'role': 'assistant', 'content': str(i + i % 5)},
            ]
          }
        )
        + '\n'
      )
  return str(path)


def test_two_processes_match_single_process(data_path, tmp_path):
  workdir = str(tmp_path / 'multi')
  port = _free_port()
  procs = []
  try:
    for process_id in range(2):
      env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS='--xla_force_host_platform_device_count=4',
        PEFT_JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
        PEFT_JAX_NUM_PROCESSES='2',
        PEFT_JAX_PROCESS_ID=str(process_id),
      )
      procs.append(
        subprocess.Popen(
          [
            sys.executable,
            '-m',
            'launch.train',
            '--config=configs/train/tiny.py:lora',
            f'--workdir={workdir}',
            f'--config.data.path={data_path}',
            f'--config.total_steps={STEPS}',
            '--config.checkpoint.every_steps=5',
            '--config.progress_bar=False',
            '--config.mesh_shape=(2,4,1)',
            '--config.data.seq_len=64',
            '--config.data.num_shards=2',
          ],
          cwd=REPO,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
        )
      )
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  multi = [r['loss'] for r in read_metrics(workdir)]
  assert len(multi) == STEPS
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '5']
  with open(os.path.join(workdir, 'checkpoints', '5', 'data', 'metadata')) as f:
    assert json.load(f) == {'step': 5, 'seed': 0, 'num_shards': 2}  # the resumable position

  config = default_config()
  config.data.path = data_path
  config.total_steps = STEPS
  config.checkpoint.every_steps = 5
  config.progress_bar = False
  config.mesh_shape = (8, 1, 1)
  config.data.seq_len = 64
  config.data.num_shards = 2
  single = [loss for _, loss in train(config, str(tmp_path / 'single')).losses]
  np.testing.assert_allclose(multi, single, rtol=1e-5)
  assert single[-1] < single[0]
