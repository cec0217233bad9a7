"""The GRPO loop end to end on the tiny random decoder and a synthetic verifiable task (the answer
is the digit in the prompt, scored by GSM8K numeric match): metrics and held-out pass@k are
logged, the first step's KL is 0 and its ratio 1, the update's teacher-forced log-probs are the
sampler's, and a launcher run killed with SIGKILL and rerun ends bit-identical to an
uninterrupted run.

The uninterrupted in-process run fills a persistent compilation cache that the launcher
subprocess and the resumed run read, so only the first run compiles (the cache is this module's
only; the setting is restored afterwards)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from configs.train import grpo as presets
from peft_jax.evals import load_task
from peft_jax.rl import grpo, rollout
from peft_jax.rl import step as rl_step
from peft_jax.train import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY = 4, 2
# Keys that hold wall-clock times: the only ones that may differ between two runs.
TIMING = ('step_seconds', 'generation_seconds', 'generation_tokens_per_second')


def _overrides(task_path):
  return {
    'model.num_layers': 1,
    'total_steps': STEPS,
    'checkpoint.every_steps': EVERY,
    'checkpoint.keep': 3,
    'mesh_shape': (2, 2, 2),
    'progress_bar': False,
    'grpo.task.path': task_path,
    'grpo.eval_task.path': task_path,
    'grpo.eval_task.limit': 2,  # 2 prompts x 4 samples: the training batch's decoder program
    'grpo.eval_samples': 4,
    'grpo.eval_k': (1, 2, 4),
    'grpo.eval_every': 2,
    'grpo.eval_prompts_per_batch': 2,
    'grpo.group_size': 4,
    'grpo.prompts_per_step': 2,
    'grpo.max_new_tokens': 6,
    'grpo.prompt_bucket': 8,
  }


def _config(task_path):
  config = presets.get_config('lora,tiny')
  for key, value in _overrides(task_path).items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _flags(task_path):
  return [f'--config.{k}={v}' for k, v in _overrides(task_path).items()]


@pytest.fixture(scope='module')
def task_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('task') / 'digits.jsonl'
  rng = np.random.default_rng(0)
  with open(path, 'w') as f:
    for digit in rng.integers(0, 10, size=16):
      f.write(json.dumps({'question': f'{digit} is', 'answer': f'#### {digit}'}) + '\n')
  return str(path)


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('jax_cache'))
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  saved = {n: getattr(jax.config, n) for n in names}
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  compilation_cache.reset_cache()
  yield path
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def reference(task_path, cache_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reference'))
  return workdir, grpo.train(_config(task_path), workdir)


def _launch(workdir, task_path, cache_dir, throttle):
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    PYTHONPATH=REPO,
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  return subprocess.Popen(
    [
      sys.executable,
      '-m',
      'launch.train',
      '--config=configs/train/grpo.py:lora,tiny',
      f'--workdir={workdir}',
      f'--config.throttle_s={throttle}',
      *_flags(task_path),
    ],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )


def _checkpoint(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
  )
  manager.close()
  return {k: np.asarray(v) for k, v in restored['state'].items()}, dict(restored['data'])


def test_metrics_kl_ratio_and_pass_at_k(reference, task_path):
  workdir, result = reference
  rows = read_metrics(workdir)
  assert [r['step'] for r in rows] == list(range(STEPS + 1))  # step 0: the base's evaluation
  first = rows[1]
  # The adapter starts switched off (LoRA's B = 0): the policy is the reference, so the KL is 0
  # (exactly here; XLA may round the two forwards of one program apart by an ulp of a log-prob,
  # ~1e-7, which k3 turns into < 1e-13); one update per batch: the ratio is 1 and nothing is
  # clipped, at every step.
  assert first['kl'] < 1e-12
  for row in rows[1:]:
    assert row['ratio_mean'] == 1.0 and row['clip_fraction'] == 0.0
    assert np.isfinite(row['kl']) and row['kl'] >= 0.0
    assert 0.0 <= row['reward_mean'] <= 1.0 and 0.0 <= row['zero_variance_fraction'] <= 1.0
    assert 1.0 <= row['completion_length'] <= 6.0 and row['entropy'] > 0.0
  assert rows[-1]['kl'] > 0.0  # the policy has moved off the reference
  assert [s for s, _ in result.evals] == [0, 2, 4]
  for step, values in result.evals:
    assert values['pass@1'] <= values['pass@2'] <= values['pass@4'] <= 1.0
    assert rows[step]['eval/pass@4'] == values['pass@4']
  assert result.num_compiles == 1  # one prompt bucket: one update program
  # The exposed helper on the returned tree reproduces the final evaluation.
  config = _config(task_path)
  again = grpo.pass_at_k_curve(
    result.model,
    result.tree,
    result.tokenizer,
    load_task(dict(type='gsm8k', path=task_path, limit=2)),
    num_samples=4,
    ks=(1, 2, 4),
    key=jax.random.fold_in(jax.random.PRNGKey(config.seed), grpo._EVAL_STREAM),
    max_new_tokens=6,
    prompts_per_batch=2,
    bucket=8,
    mesh=result.mesh,
  )
  assert again == result.evals[-1][1]


def test_teacher_forced_log_probs_match_the_sampler(reference, task_path):
  """The update's log-probs of sampled completions (one forward over prompt + completion) are
  the KV-cache sampler's (temperature 1: the same distribution) on the run's mesh, up to float32
  rounding of two differently ordered computations; a step's key gives the same completions."""
  _, result = reference
  config = _config(task_path)
  task = load_task(dict(type='gsm8k', path=task_path, limit=2))
  tokens, mask = rollout.encode_prompts(
    result.tokenizer, [e.prompt for e in task.examples], chat=False, bucket=8
  )
  sampling = grpo.make_sampling(result.model.config, result.tokenizer, 4, config.grpo)
  key = rollout.sampling_key(0, 1)
  out = rollout.sample_groups(
    result.model.config, result.tree, tokens, mask, key, sampling, result.mesh
  )
  batch = dict(
    prompt_tokens=out.prompt_tokens, prompt_mask=out.prompt_mask, tokens=out.tokens, mask=out.mask
  )
  log_probs = jax.jit(
    lambda t, b: rl_step.completion_log_probs(result.model, t, b, 1.0)[0],
    compiler_options={'xla_backend_optimization_level': 0},
  )(result.tree, batch)
  completion = np.asarray(out.mask) > 0
  assert completion.sum() > 8  # several tokens per completion
  np.testing.assert_allclose(
    np.asarray(log_probs)[completion], np.asarray(out.sample_log_probs)[completion], atol=2e-5
  )
  np.testing.assert_array_equal(np.asarray(out.prompt_tokens)[:4], np.repeat(tokens[:1], 4, 0))
  again = rollout.sample_groups(
    result.model.config, result.tree, tokens, mask, key, sampling, result.mesh
  )
  np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(out.tokens))


def test_sigkill_and_rerun_is_bit_identical(reference, task_path, cache_dir, tmp_path):
  reference_dir, _ = reference
  killed = str(tmp_path / 'killed')
  proc = _launch(killed, task_path, cache_dir, throttle=0.3)
  try:
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(killed, 'checkpoints', str(EVERY))):
      assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
      assert time.time() < deadline, 'no checkpoint within the time limit'
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.isdir(os.path.join(killed, 'checkpoints', str(STEPS)))
  resumed = grpo.train(_config(task_path), killed)  # the same run, resumed
  assert resumed.start_step == EVERY

  state, data = _checkpoint(killed, STEPS)
  ref_state, ref_data = _checkpoint(reference_dir, STEPS)
  assert data == ref_data
  assert sorted(state) == sorted(ref_state)
  for name in ref_state:
    np.testing.assert_array_equal(state[name], ref_state[name], err_msg=name)
  rows, ref_rows = read_metrics(killed), read_metrics(reference_dir)
  assert [r['step'] for r in rows] == [r['step'] for r in ref_rows]
  for row, ref_row in zip(rows, ref_rows):
    assert {k: v for k, v in row.items() if k not in TIMING} == {
      k: v for k, v in ref_row.items() if k not in TIMING
    }


def test_stop_step_then_continue_is_bit_identical(reference, task_path, tmp_path):
  # The arena's RLVR stage stops a run at its early step (here 3, off the checkpoint grid of 2)
  # and continues it: the end equals the uninterrupted run, and the stopped call exports nothing.
  reference_dir, _ = reference
  workdir = str(tmp_path / 'stopped')
  config = _config(task_path)
  config.stop_step = STEPS - 1
  stopped = grpo.train(config, workdir)
  assert len(stopped.metrics) == STEPS - 1 and stopped.metrics[-1][0] == STEPS - 1
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(STEPS - 1)))
  continued = grpo.train(_config(task_path), workdir)
  assert continued.start_step == STEPS - 1 and len(continued.metrics) == 1
  state, data = _checkpoint(workdir, STEPS)
  ref_state, ref_data = _checkpoint(reference_dir, STEPS)
  assert data == ref_data and sorted(state) == sorted(ref_state)
  for name in ref_state:
    np.testing.assert_array_equal(state[name], ref_state[name], err_msg=name)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
  assert strip(read_metrics(workdir)) == strip(read_metrics(reference_dir))
