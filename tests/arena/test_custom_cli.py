"""The README's custom-preset command, run verbatim as a subprocess on the smoke world.

The test lays out ``my_data/`` as the README describes (a model folder with its tokenizer, SFT
rows, a tasks file with paths relative to it), extracts the command block that follows the
README's ``custom-preset command`` marker, and runs it with this interpreter; it must end with a
report. The budget is derived from the data (the preset's 0 / -1 values) and printed.
"""

import json
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = '<!-- custom-preset command'


def readme_command() -> str:
  text = open(os.path.join(REPO, 'README.md')).read()
  after = text[text.index(MARKER) :]
  block = re.search(r'```bash\n(.*?)```', after, re.S).group(1)
  return block.replace('\\\n', ' ').strip()


def test_readme_custom_command_runs_to_a_report(tmp_path, smoke_world):
  suite = smoke_world['suite_dir']
  data = tmp_path / 'my_data'
  data.mkdir()
  os.symlink(smoke_world['hf_dir'], data / 'model')
  os.symlink(os.path.join(REPO, 'configs'), tmp_path / 'configs')
  shutil.copy(os.path.join(suite, 'sft', 'gsm.jsonl'), data / 'train.jsonl')
  shutil.copy(os.path.join(suite, 'targets', 'gsm_test.jsonl'), data / 'gsm_test.jsonl')
  shutil.copy(os.path.join(suite, 'general', 'nq_test.jsonl'), data / 'nq_test.jsonl')
  # The README's tasks file, with test-sized limits.
  tasks = [
    dict(type='gsm8k', name='word_problems', kind='target', path='gsm_test.jsonl', limit=3),
    dict(type='nq_open', name='facts', path='nq_test.jsonl', limit=3, max_new_tokens=6),
  ]
  (data / 'tasks.json').write_text(json.dumps(tasks))
  command = readme_command()
  assert command.startswith('python -m launch.arena --config=configs/arena/quick.py:custom')
  argv = command.split()
  argv[0] = sys.executable
  argv += [
    '--config.progress_bar=False',
    '--config.eval.batch_size=8',
    '--config.geometry.num_prompts=3',
    '--config.paths.alphas=(0.0,1.0)',
    '--config.train.data.seq_len=80',
    '--config.geometry.module=layers_0/self_attn/q_proj',
  ]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # one CPU device, as a user's laptop
  done = subprocess.run(
    argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  out = done.stdout
  # 20 rows of 80 tokens pack into 20 sequences: batch 16, ceil(3 * 20 / 16) = 4 steps, warmup 0.
  assert 'budget from the data: 20 packed training sequences of 80 tokens' in out, out
  assert 'batch 16' in out and '4 steps (3 epochs)' in out
  assert 'learning-rate sweep off' in out
  workdir = tmp_path / 'runs' / 'mine'
  results = json.load(open(workdir / 'results.json'))
  assert list(results['methods']) == ['lora', 'vera']
  assert results['methods']['lora']['n'] == {'word_problems': 3, 'facts': 3}
  train = json.load(open(workdir / 'stages' / 'train_lora' / 'run' / 'config.json'))
  assert (train['total_steps'], train['batch_size'], train['optimizer']['warmup_steps']) == (
    4,
    16,
    0,
  )
  assert os.path.exists(workdir / 'report' / 'index.html')
