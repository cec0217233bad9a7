"""peft_jax.common.compile_cache: programs written once and read back by a new jit of the same
function; settings restored afterwards; a user's own cache folder left in charge."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import monitoring

from peft_jax.common import compile_cache

HITS = '/jax/compilation_cache/cache_hits'


def _program(x):  # a fresh jax.jit each call: only the persistent cache can share its code
  return jax.jit(lambda v: jnp.tanh(v) @ v.T + 3.0)(x)


def test_cache_writes_once_reads_back_and_restores(tmp_path, monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  if jax.config.jax_compilation_cache_dir:  # a session-wide cache is configured: left alone
    with compile_cache.persistent_cache(str(tmp_path / 'c')) as used:
      assert used == jax.config.jax_compilation_cache_dir
    return
  events = []
  listener = lambda name, **kw: events.append(name)
  monitoring.register_event_listener(listener)
  try:
    _check(tmp_path, monkeypatch, events)
  finally:
    monitoring.unregister_event_listener(listener)


def _check(tmp_path, monkeypatch, events):
  x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
  before = {n: getattr(jax.config, n) for n in compile_cache._SETTINGS}
  folder = tmp_path / 'cache'
  with compile_cache.persistent_cache(str(folder), min_compile_s=0.0) as used:
    assert used == str(folder)
    first = _program(x)
    written = sorted(os.listdir(folder))
    assert written  # the program's entry
    hits = events.count(HITS)
    second = _program(x)
    assert events.count(HITS) == hits + 1  # read back, not compiled
    assert sorted(os.listdir(folder)) == written  # nothing new written
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
  np.testing.assert_allclose(np.asarray(first), np.tanh(x) @ x.T + 3.0, rtol=1e-6)
  assert {n: getattr(jax.config, n) for n in compile_cache._SETTINGS} == before
  # Off ('' or None) and under a user's own folder: nothing is configured here.
  with compile_cache.persistent_cache('') as used:
    assert (
      used is None and jax.config.jax_compilation_cache_dir == before['jax_compilation_cache_dir']
    )
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'mine'))
  with compile_cache.persistent_cache(str(tmp_path / 'other')) as used:
    assert used == str(tmp_path / 'mine') and not (tmp_path / 'other').exists()
