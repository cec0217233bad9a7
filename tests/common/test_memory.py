"""peft_jax.common.memory against the kernel's own accounting and JAX's array sizes."""

import jax.numpy as jnp
import numpy as np

from peft_jax.common import memory


def test_rss_follows_a_touched_allocation_and_live_arrays_are_counted():
  jnp.zeros(()).block_until_ready()  # the backend up first: its start-up is not the block's
  before = memory.snapshot()
  array = jnp.zeros((1024, 1024), jnp.float32)  # 4 MiB
  assert memory.live_array_bytes() - before['jax_arrays'] >= 4 * 2**20
  block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page written
  during = memory.rss_bytes()
  # The kernel counts every written page resident; other threads may allocate a little too.
  assert during - before['rss'] >= 60 * 2**20
  del block, array
  memory.release()
  after = memory.snapshot()
  assert after['peak_rss'] >= during  # ru_maxrss is the high-water mark
  assert after['rss'] < during - 32 * 2**20  # the 64 MiB went back to the OS
  assert 'rss' in memory.describe(after) and 'GB' in memory.describe(after)
