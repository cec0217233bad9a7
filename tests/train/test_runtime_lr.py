"""The peak learning rate as a runtime value of the optimizer state: the same float32 updates as
optax's own constant-rate schedule, and one compiled step for every rate and seed."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
import tiny_lm  # noqa: E402

from peft_jax import parallel  # noqa: E402
from peft_jax.train import loss as loss_lib  # noqa: E402
from peft_jax.train import optimizer as opt_lib  # noqa: E402
from peft_jax.train.setup import setup_training  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _reference_optimizer(params, *, peak_lr, total_steps, warmup_steps, decay, final, wd, mult):
  """The pre-runtime construction: optax's scale_by_learning_rate over a constant-peak
  schedule (every other part as make_optimizer builds it)."""
  schedule = opt_lib.lr_schedule(peak_lr, total_steps, warmup_steps, decay, final)
  multipliers = opt_lib.lr_multipliers(params, [('gate/.*', mult)])
  return optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.scale_by_adam(),
    optax.add_decayed_weights(wd, mask=opt_lib.decay_mask(params)),
    optax.scale_by_learning_rate(schedule),
    opt_lib.scale_by_tree(multipliers),
  ), schedule


def _trajectory(tx, params, grads_fn, steps):
  update = jax.jit(tx.update)
  state, out = tx.init(params), []
  for t in range(steps):
    updates, state = update(grads_fn(params, t), state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def test_runtime_peak_matches_the_constant_schedule():
  params = {
    'a': {'kernel': jnp.array([[1.0, -2.0, 0.3], [0.5, 3.0, -1.1]]), 'bias': jnp.array([0.1, 0.2])},
    'gate': {'w': jnp.array([[0.3, 0.4]])},
  }
  # Parameter-dependent gradients (a quadratic pull to 0 plus a step-dependent push), so any
  # difference in one update would propagate through the later ones.
  grads_fn = lambda p, t: jax.tree.map(lambda x: 0.7 * x + 0.05 * np.cos(t), p)
  steps = 12
  for decay, final in (('cosine', 0.0), ('constant', 0.0), ('linear', 0.1)):
    kwargs = dict(peak_lr=0.03, total_steps=10, warmup_steps=3, decay=decay)
    new_tx, new_schedule = opt_lib.make_optimizer(
      params,
      **kwargs,
      final_lr_fraction=final,
      weight_decay=0.1,
      clip_norm=1.0,
      lr_groups=[('gate/.*', 5.0)],
    )
    ref_tx, ref_schedule = _reference_optimizer(params, **kwargs, final=final, wd=0.1, mult=5.0)
    new, new_state = _trajectory(new_tx, params, grads_fn, steps)
    ref, _ = _trajectory(ref_tx, params, grads_fn, steps)
    lrs_new = np.array([float(new_schedule(t)) for t in range(steps)], np.float32)
    lrs_ref = np.array([float(ref_schedule(t)) for t in range(steps)], np.float32)
    assert float(opt_lib.peak_lr_of(new_state)) == np.float32(0.03)
    if final == 0.0:
      # Warmup, cosine and constant: the same float32 operations on the same peak value.
      np.testing.assert_array_equal(lrs_new, lrs_ref)
      for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
      # Linear decay to peak * 0.1: the end value is a float32 product here, a float64 product
      # rounded once in optax's constant path: at most 2 ulp apart per learning rate, and each
      # parameter (|u| <= 1 after Adam normalisation with |g| clipped, x5 group multiplier) by
      # at most 2 ulp of lr x 5 per step, plus its own rounding.
      np.testing.assert_allclose(lrs_new, lrs_ref, rtol=2 * EPS32, atol=0)
      for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
        bound = steps * (2 * EPS32 * 0.03 * 5 + EPS32 * np.abs(np.asarray(b)).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=bound)


def _loss_fn(trainable, frozen, batch, rng):
  return loss_lib.masked_cross_entropy_sum(
    tiny_lm.apply(tiny_lm.combine(trainable, frozen), batch['tokens'], None, batch['segment_ids']),
    batch,
  )


def _setup(peak_lr, seed, plan=None):
  params = tiny_lm.inject_lora(tiny_lm.init_params(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
  return setup_training(
    params,
    tiny_lm.logical_axes(params),
    loss_fn=_loss_fn,
    partition_fn=tiny_lm.partition_lora,
    mesh=parallel.make_mesh((-1, 1, 1)),
    optimizer_kwargs=dict(peak_lr=peak_lr, total_steps=6, warmup_steps=2, clip_norm=1.0),
    seed=seed,
    plan=plan,
  )


def _steps(training, steps=6):
  rng = np.random.default_rng(0)
  state, losses, lrs = training.state, [], []
  for _ in range(steps):
    batch = parallel.global_batch(tiny_lm.random_batch(rng), training.mesh, 8)
    state, metrics = training.train_step(state, training.frozen, batch)
    losses.append(float(metrics['loss']))
    lrs.append(float(metrics['lr']))
  return state, np.array(losses), np.array(lrs, np.float32)


def test_one_compiled_step_serves_every_rate_and_seed():
  first = _setup(1e-2, seed=0)
  _steps(first)
  # Another rate and seed on the first setup's programs: no new compilation ...
  reused = _setup(4e-2, seed=3, plan=first.plan)
  assert reused.train_step is first.train_step
  state, losses, lrs = _steps(reused)
  assert first.train_step._cache_size() == 1  # pylint: disable=protected-access
  # ... and bit-for-bit the run a fresh setup at that rate and seed makes.
  fresh = _setup(4e-2, seed=3)
  fresh_state, fresh_losses, fresh_lrs = _steps(fresh)
  np.testing.assert_array_equal(losses, fresh_losses)
  np.testing.assert_array_equal(lrs, fresh_lrs)
  np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(fresh_state.rng))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fresh_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The logged rate is the runtime one: warmup 0, 4e-2 / 2, then the cosine from 4e-2.
  assert lrs[0] == 0.0 and lrs[1] == np.float32(2e-2) and lrs[2] == np.float32(4e-2)
