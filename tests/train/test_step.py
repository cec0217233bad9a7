"""Train-step pieces on a tiny self-contained LM: gradient accumulation equals the full batch on a
(2,2,2) mesh; rules resolution; the loss and optimizer math against float64 NumPy written from
the definitions. (The real Decoder on every mesh: tests/parallel/test_sharded_training.py.)"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(__file__))
import tiny_lm  # noqa: E402

from peft_jax import parallel  # noqa: E402
from peft_jax.train import loss as loss_lib  # noqa: E402
from peft_jax.train import optimizer as opt_lib  # noqa: E402
from peft_jax.train.setup import setup_training  # noqa: E402

STEPS = 20
OPT = dict(peak_lr=3e-3, total_steps=STEPS, warmup_steps=3, weight_decay=0.01, clip_norm=1.0)


def _loss_fn(trainable, frozen, batch, rng):
  return loss_lib.masked_cross_entropy_sum(
    tiny_lm.apply(tiny_lm.combine(trainable, frozen), batch['tokens'], None, batch['segment_ids']),
    batch,
  )


def _run(mesh_shape, method, steps=STEPS, accum=1):
  params = tiny_lm.init_params(jax.random.PRNGKey(0))
  if method == 'lora':
    params = tiny_lm.inject_lora(params, jax.random.PRNGKey(1))
  partition = tiny_lm.partition_lora if method == 'lora' else tiny_lm.partition_full
  mesh = parallel.make_mesh(mesh_shape)
  training = setup_training(
    params,
    tiny_lm.logical_axes(params),
    loss_fn=_loss_fn,
    partition_fn=partition,
    mesh=mesh,
    optimizer_kwargs=OPT,
    grad_accum_steps=accum,
  )
  rng = np.random.default_rng(0)
  batches = [tiny_lm.random_batch(rng) for _ in range(steps)]
  state, losses = training.state, []
  for batch in batches:
    batch = parallel.global_batch(batch, mesh, 8)
    state, metrics = training.train_step(state, training.frozen, batch)
    losses.append(float(metrics['loss']))
  return training, state, np.array(losses)


def test_grad_accumulation_equals_full_batch():
  _, state_full, losses_full = _run((2, 2, 2), 'lora', steps=4)
  _, state_acc, losses_acc = _run((2, 2, 2), 'lora', steps=4, accum=2)
  np.testing.assert_allclose(losses_acc, losses_full, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_acc.params), jax.tree.leaves(state_full.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_logical_to_spec_divisibility_and_precedence():
  mesh = parallel.make_mesh((2, 2, 2))
  rules = [('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('embed', 'tensor'), ('mlp', 'tensor')]
  assert parallel.logical_to_spec(('embed', 'mlp'), (4, 6), mesh, rules) == P('fsdp', 'tensor')
  # 3 is not divisible by 2: fall back to replication for that dim
  assert parallel.logical_to_spec(('embed', 'mlp'), (3, 6), mesh, rules) == P(None, 'tensor')
  # embed's first rule taken by... embed twice: the second embed falls back to 'tensor'
  assert parallel.logical_to_spec(('embed', 'embed'), (4, 4), mesh, rules) == P('fsdp', 'tensor')
  # ('data','fsdp') does not divide 2*... 6 % 4 != 0 -> longest dividing prefix ('data',)
  assert parallel.logical_to_spec(('batch', None), (6, 5), mesh, rules) == P('data', None)
  assert parallel.logical_to_spec(('batch', None), (8, 5), mesh, rules) == P(('data', 'fsdp'), None)
  with pytest.raises(ValueError, match='product'):
    parallel.make_mesh((2, 2, 3))
  with pytest.raises(ValueError, match="'model'"):
    parallel.logical_to_spec(('embed',), (4,), mesh, [('embed', 'model')])


def test_masked_loss_matches_numpy_float64():
  rng = np.random.default_rng(3)
  batch = tiny_lm.random_batch(rng, batch=3, seq=10)
  logits = rng.normal(size=(3, 10, 7))
  batch['tokens'] = rng.integers(0, 7, size=(3, 10)).astype(np.int32)
  loss_sum, count = loss_lib.masked_cross_entropy_sum(
    jnp.asarray(logits, jnp.float32), {k: jnp.asarray(v) for k, v in batch.items()}
  )
  total, n = 0.0, 0
  for b in range(3):
    for t in range(9):
      seg, nxt = batch['segment_ids'][b, t], batch['segment_ids'][b, t + 1]
      if batch['loss_mask'][b, t + 1] and nxt == seg and nxt != 0:
        z = logits[b, t]
        total += np.log(np.exp(z).sum()) - z[batch['tokens'][b, t + 1]]
        n += 1
  assert float(count) == n
  np.testing.assert_allclose(float(loss_sum), total, rtol=1e-6)


def test_optimizer_matches_numpy_adamw_with_groups():
  params = {
    'a': {'kernel': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'bias': jnp.array([0.1, -0.2])},
    'gate': {'w': jnp.array([[0.3, 0.4]])},
  }
  grads = jax.tree.map(lambda p: 0.7 * p + 0.05, params)
  tx, schedule = opt_lib.make_optimizer(
    params,
    peak_lr=0.1,
    total_steps=10,
    warmup_steps=2,
    weight_decay=0.5,
    clip_norm=0.5,
    lr_groups=[('gate/.*', 5.0)],
  )
  state = tx.init(params)
  upd, state = jax.jit(tx.update)(grads, state, params)
  upd2, _ = jax.jit(tx.update)(grads, state, params)
  # float64 reference from the definitions
  g = {k: np.asarray(v, np.float64) for k, v in parallel.named_leaves(grads).items()}
  p = {k: np.asarray(v, np.float64) for k, v in parallel.named_leaves(params).items()}
  norm = np.sqrt(sum((x**2).sum() for x in g.values()))
  g = {k: x * min(1.0, 0.5 / norm) for k, x in g.items()}
  for step, got in ((1, upd), (2, upd2)):
    lr = 0.1 * (step - 1) / 2  # warmup: lr(0) = 0, lr(1) = 0.05
    for name, x in parallel.named_leaves(got).items():
      # the same gradient every step: bias-corrected moments are g and g**2
      m_hat, v_hat = g[name], g[name] ** 2
      u = m_hat / (np.sqrt(v_hat) + 1e-8)
      if p[name].ndim >= 2:
        u = u + 0.5 * p[name]
      mult = 5.0 if name.startswith('gate') else 1.0
      np.testing.assert_allclose(np.asarray(x), -lr * mult * u, rtol=1e-5, atol=1e-7)
  assert float(schedule(10)) == pytest.approx(0.0, abs=1e-9)
  assert float(schedule(2)) == pytest.approx(0.1)
