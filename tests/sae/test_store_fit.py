"""Disk-backed stores, streaming collection within a memory budget (peak RSS measured in a
subprocess), and fit_sae: planted-dictionary recovery per variant, batch sharding over the data
axis, SIGKILL + resume."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from peft_jax.parallel import sharding
from peft_jax.sae import fit, store
from peft_jax.sae import sae as sae_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(directory, rows, chunk_rows):
  writer = store.StoreWriter(str(directory), rows.shape[1], chunk_rows, meta={'x': 1})
  for part in np.array_split(rows, 5):
    writer.append(part)
  return writer.close()


def test_store_roundtrip_sums_and_sampler(tmp_path):
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(103, 6)).astype(np.float32)
  with pytest.raises(FileNotFoundError, match='not a complete'):
    store.ActivationStore(str(tmp_path / 's'))
  manifest = _write(tmp_path / 's', rows, chunk_rows=10)
  assert [c['rows'] for c in manifest['chunks']] == [10] * 10 + [3]
  st = store.ActivationStore(str(tmp_path / 's'))
  np.testing.assert_array_equal(st.read(), rows)
  np.testing.assert_array_equal(st.read(17, 58), rows[17:58])
  blocks = list(st.blocks(5, 100, 32))
  assert [b[0] for b in blocks] == [5, 37, 69] and blocks[-1][1].shape == (31, 6)
  np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), rows[5:100])
  wide = rows.astype(np.float64)
  np.testing.assert_allclose(st.mean, wide.mean(0), rtol=1e-12)
  np.testing.assert_allclose(st.mean_norm, np.linalg.norm(wide, axis=1).mean(), rtol=1e-12)
  with pytest.raises(FileExistsError):
    store.StoreWriter(str(tmp_path / 's'), 6, 10)
  # In memory: uniform draws over [0, stop); the same index draws the same rows.
  memory = store.TokenSampler(st, 80, budget_bytes=10**6, seed=3)
  assert memory.in_memory
  a = memory.draw((0, 4), 500)
  np.testing.assert_array_equal(a, memory.draw((0, 4), 500))
  assert not np.array_equal(a, memory.draw((0, 5), 500))
  picked = {tuple(r) for r in a}
  assert picked <= {tuple(r) for r in rows[:80]} and len(picked) > 60
  # Over budget: a buffer of 2 whole chunks per draw, rows only from [0, stop).
  buffered = store.TokenSampler(st, 80, budget_bytes=2 * 10 * 6 * 4, seed=3)
  assert not buffered.in_memory and buffered.buffer_chunks == 2
  b = buffered.draw((0, 4), 200)
  np.testing.assert_array_equal(b, buffered.draw((0, 4), 200))
  index = {tuple(r): i for i, r in enumerate(rows)}
  chunks = {index[tuple(r)] // 10 for r in b}
  assert len(chunks) <= 2 and max(index[tuple(r)] for r in b) < 80


_COLLECT_SCRIPT = textwrap.dedent(
  """
  import json, os, sys
  import jax, jax.numpy as jnp, numpy as np
  from peft_jax.adapters import api
  from peft_jax.adapters.core import Adapted
  from peft_jax.models import ModelConfig, init_params
  from peft_jax.sae import collect

  def status(key):
    for line in open('/proc/self/status'):
      if line.startswith(key):
        return int(line.split()[1]) * 1024

  out, budget, num_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=4, num_kv_heads=4, head_dim=16, model_type='llama')
  params = init_params(cfg, jax.random.key(0))
  trees = {}
  for r in (4,):
    tree = api.inject(params, api.make_method('lora', rank=r, alpha=2.0 * r), ['down_proj'],
                      jax.random.key(r))
    trees[f'r{r}'] = jax.tree.map(
      lambda n: Adapted(n.base, {**n.params, 'lora_b': n.params['lora_b'] + 0.1}, n.frozen,
                        n.method) if isinstance(n, Adapted) else n,
      tree, is_leaf=lambda n: isinstance(n, Adapted))
  T = 64
  rng = np.random.default_rng(0)
  def rows(n):
    seg = np.ones((n, T), np.int32); seg[:, 60:] = 0
    return {'tokens': rng.integers(1, 64, (n, T)).astype(np.int32), 'segment_ids': seg,
            'positions': np.tile(np.arange(T, dtype=np.int32), (n, 1))}
  sites = ['layers_0/residual', 'layers_1/residual', 'layers_1/mlp/down_proj/out']
  # Warm-up on a few rows: compiles the programs, so the measured run allocates only data.
  collect.collect_activations(cfg, params, trees, rows(8), sites, out + '_warm',
                              budget_bytes=budget, batch_rows=8)
  data = rows(num_rows)
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM to the current RSS
  before = status('VmRSS:')
  summary = collect.collect_activations(cfg, params, trees, data, sites, out,
                                        budget_bytes=budget, batch_rows=8)
  print(json.dumps({'before': before, 'peak': status('VmHWM:'), **summary}))
  """
)


def test_collection_streams_within_memory_budget(tmp_path):
  budget = 1 << 20  # 1 MiB for the writers' buffers
  num_rows = 192  # 11520 tokens x 3 sites x 2 sources x 64 floats = 5.6 MiB stored
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
    [sys.executable, '-c', _COLLECT_SCRIPT, str(tmp_path / 'acts'), str(budget), str(num_rows)],
    env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top

  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['n_tokens'] == num_rows * 60
  assert out['stored_bytes'] > 5 * budget  # far more than the budget was collected
  # Derived overhead: one batch (8 x 64 positions) of captures, float32, per site, held for the
  # base and one adapter on device and on the host (x2 copies each, plus the masked rows): 6
  # arrays of 8*64*64*4 B per site, 3 sites; plus the forward's attention scores (8 x 4 heads x
  # 64 x 64 float32, x4 for softmax temporaries) and 8 MiB for allocator slack/fragmentation.
  batch = 8 * 64 * 64 * 4
  overhead = 6 * 3 * batch + 4 * 8 * 4 * 64 * 64 * 4 + (8 << 20)
  growth = out['peak'] - out['before']
  assert growth <= budget + overhead, (growth, budget, overhead)
  # And the stores are complete and hold what was collected.
  st = store.ActivationStore(os.path.join(tmp_path / 'acts', 'r4', 'layers_1.residual'))
  assert st.n == out['n_tokens'] and len(st.chunk_files) > 10


def _planted(seed, n, d, m_true, active):
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(m_true, d))
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  codes = np.zeros((n, m_true))
  idx = np.argsort(rng.random((n, m_true)), axis=1)[:, :active]
  np.put_along_axis(codes, idx, rng.uniform(0.5, 2.0, size=(n, active)), axis=1)
  return g, (codes @ g).astype(np.float32)


VARIANTS = {
  'relu': dict(activation='relu', k=None, l1_coeff=0.3),
  'topk': dict(activation='topk', k=3),
  'jumprelu': dict(activation='jumprelu', k=None, l1_coeff=0.3, bandwidth=0.1, init_threshold=0.1),
}


@pytest.fixture(scope='module')
def planted_store(tmp_path_factory):
  g, x = _planted(0, n=6144, d=24, m_true=32, active=3)
  directory = str(tmp_path_factory.mktemp('planted') / 'store')
  _write(directory, x, chunk_rows=512)
  return g, store.ActivationStore(directory)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_fit_recovers_planted_dictionary(planted_store, variant):
  g, st = planted_store
  config = sae_lib.SAEConfig(
    num_features=32, learning_rate=3e-3, num_steps=1200, batch_size=256, log_every=200,
    dead_after=200, resample_every=400, init_b_dec='zeros', **VARIANTS[variant],
  )  # fmt: skip
  # The topk variant streams from a 4-chunk shuffle buffer (the store is 12 chunks).
  budget = 4 * 512 * 24 * 4 if variant == 'topk' else 1 << 30
  sampler = store.TokenSampler(st, st.n, budget, seed=1)
  assert sampler.in_memory == (variant != 'topk')
  params, history = fit.fit_sae(sampler, config, seed=0)
  w = params['W_dec'] / np.linalg.norm(params['W_dec'], axis=1, keepdims=True)
  cos = np.abs(g @ w.T)
  assert cos.max(axis=1).mean() >= 0.9, (variant, cos.max(axis=1).mean())
  assert history['fvu'][-1] < history['fvu'][0]


def test_fit_is_batch_sharded_and_matches_one_device(planted_store):
  _, st = planted_store
  config = sae_lib.SAEConfig(num_features=16, activation='topk', k=3, num_steps=40,
                             batch_size=64, log_every=20)  # fmt: skip
  sampler = store.TokenSampler(st, st.n, 1 << 30, seed=2)
  mesh = sharding.make_mesh((-1, 1, 1))
  assert mesh.shape['data'] == len(jax.devices()) == 8
  seen = []
  original = jax.device_put

  def spy(x, device=None, *args, **kwargs):
    out = original(x, device, *args, **kwargs)
    if getattr(x, 'ndim', 0) == 3:
      seen.append(out.sharding)
    return out

  jax.device_put = spy
  try:
    sharded, _ = fit.fit_sae(sampler, config, seed=0, mesh=mesh)
  finally:
    jax.device_put = original
  assert seen and all(s.spec == jax.sharding.PartitionSpec(None, 'data', None) for s in seen)
  assert seen[0].shard_shape((20, 64, 24)) == (20, 8, 24)
  single, _ = fit.fit_sae(sampler, config, seed=0)
  for name in single:  # only the gradient's all-reduce order differs
    np.testing.assert_allclose(sharded[name], single[name], rtol=2e-4, atol=2e-5, err_msg=name)


_KILL_SCRIPT = textwrap.dedent(
  """
  import os, signal, sys
  from peft_jax.sae import fit, store
  from peft_jax.sae import sae as sae_lib
  st = store.ActivationStore(sys.argv[1])
  config = sae_lib.SAEConfig(**eval(sys.argv[3]))
  def on_chunk(done):
    if done == 2:
      os.kill(os.getpid(), signal.SIGKILL)
  fit.fit_sae(store.TokenSampler(st, st.n, 1 << 30, seed=5), config, seed=7,
              checkpoint_dir=sys.argv[2], on_chunk=on_chunk)
  """
)


def test_fit_resumes_after_sigkill(planted_store, tmp_path):
  _, st = planted_store
  kwargs = dict(num_features=16, activation='relu', k=None, l1_coeff=0.1, num_steps=100,
                batch_size=64, log_every=20, dead_after=20, resample_every=40)  # fmt: skip
  config = sae_lib.SAEConfig(**kwargs)
  ckpt = str(tmp_path / 'ckpt')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')  # same devices as this process
  proc = subprocess.run(
    [sys.executable, '-c', _KILL_SCRIPT, st.directory, ckpt, repr(kwargs)],
    env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  resumed_from = []
  sampler = store.TokenSampler(st, st.n, 1 << 30, seed=5)
  resumed, history = fit.fit_sae(
    sampler, config, seed=7, checkpoint_dir=ckpt, on_chunk=resumed_from.append
  )
  assert resumed_from == [3, 4, 5]  # chunks 1-2 came from the checkpoint
  fresh, fresh_history = fit.fit_sae(sampler, config, seed=7)
  for name in fresh:
    np.testing.assert_array_equal(resumed[name], fresh[name], err_msg=name)
  assert history == fresh_history
  with pytest.raises(ValueError, match='different settings'):
    fit.fit_sae(sampler, sae_lib.SAEConfig(**{**kwargs, 'l1_coeff': 0.2}), seed=7,
                checkpoint_dir=ckpt)  # fmt: skip
