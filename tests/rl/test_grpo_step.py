"""The GRPO programs on the real tiny Decoder: the reference is the adapter switched off (exactly,
per method), and GRPO updates are the same on one device and on meshes (8,1,1) and (2,4,1) of 8
CPU devices.

The test-owned programs compile without LLVM optimisation (``O0``: half the compile time; the
numbers are checked against each other and against exact identities, which do not depend on it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import models, parallel
from peft_jax.adapters import api as adapters
from peft_jax.rl import objective, rollout
from peft_jax.rl import step as rl_step
from peft_jax.train.setup import setup_training

CONFIG = models.ModelConfig(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=64,
  num_layers=1,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
)
G, PROMPTS, P, N = 4, 2, 8, 6
B = G * PROMPTS
TEMPERATURE = 0.9
TARGETS = ['q_proj', 'v_proj', 'up_proj']
# Hyper-parameters sized for the tiny model (q_proj [32, 32], v_proj [32, 16], up_proj [32, 64]).
METHOD_KWARGS = {
  'full': {},
  'lora': dict(rank=4, alpha=8.0),
  'dora': dict(rank=4, alpha=8.0),
  'pissa': dict(rank=4, alpha=8.0),
  'vera': dict(rank=8, d_initial=0.1),
  'oft': dict(block_size=8),
  'miss': dict(rank=4),
  'disel': dict(rank=4, alpha=8.0),
}
LOSS = dict(
  epsilon_low=0.2, epsilon_high=0.28, beta=0.04, loss_type='grpo', max_completion_length=N
)


@pytest.fixture(scope='module')
def base():
  return models.Decoder(CONFIG), models.init_params(CONFIG, jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def batch():
  """A fixed rollout: left-padded prompts (each G times), completions of varied lengths."""
  rng = np.random.default_rng(0)
  prompt_lengths = np.repeat([5, 8], G)
  prompt_mask = (np.arange(P)[None] >= P - prompt_lengths[:, None]).astype(np.int32)
  prompt_tokens = np.where(prompt_mask, rng.integers(3, 64, (B, P)), 0).astype(np.int32)
  lengths = np.array([6, 3, 1, 6, 2, 5, 6, 4])
  mask = (np.arange(N)[None] < lengths[:, None]).astype(np.float32)
  tokens = np.where(mask > 0, rng.integers(3, 64, (B, N)), 0).astype(np.int32)
  advantages = rng.normal(size=(B, 1)).astype(np.float32)
  return dict(
    prompt_tokens=prompt_tokens,
    prompt_mask=prompt_mask,
    tokens=tokens,
    mask=mask,
    advantages=advantages,
  )


def _inject(params, name):
  method = adapters.make_method(name, **METHOD_KWARGS[name])
  return adapters.inject(params, method, TARGETS, jax.random.PRNGKey(1))


O0 = {'xla_backend_optimization_level': 0}


def _log_probs(tree, batch):
  return rl_step.completion_log_probs(models.Decoder(CONFIG), tree, batch, TEMPERATURE)[0]


def _policy_and_reference(tree, batch):
  return _log_probs(tree, batch), _log_probs(rl_step.reference_params(tree), batch)


# Methods whose identity at init is exact in floating point: zero factors or scales (LoRA, VeRA,
# MiSS, DISeL), an identity rotation (OFT), a copied weight (Full). PiSSA's init splits W0 into
# W_res + s a0 b0 (its forward computes x W_res + s (x a0) b0, its reference x (W_res + s a0 b0));
# DoRA's magnitude is the column norm of W0 computed at init, its forward divides by the norm
# computed again in another program: both are the identity to float32 rounding only.
ROUNDING_IDENTITY = ('pissa', 'dora')


def test_adapter_switched_off_is_the_reference(base, batch):
  """At initialisation every method is the identity, so the policy's log-probs equal the
  reference's (the tree at its methods' base points, ``reference_params``) and the KL is 0: bit
  for bit where the method's identity is exact, to float32 rounding (1e-5 after a log-softmax
  of O(1) logits) otherwise. The reference is the pretrained model (to float32 rounding: a
  separately compiled program may order the sums differently)."""
  _, params = base
  names = adapters.method_names()
  trees = [_inject(params, name) for name in names]
  every = jax.jit(
    lambda ts, plain, b: ([_policy_and_reference(t, b) for t in ts], _log_probs(plain, b)),
    compiler_options=O0,
  )
  both, pretrained = jax.device_get(every(trees, params, batch))
  mask = batch['mask'] > 0
  for name, (policy, reference) in zip(names, both):
    kl = float(objective.masked_mean(objective.k3_kl(policy, reference), batch['mask']))
    np.testing.assert_allclose(reference[mask], pretrained[mask], atol=1e-5, err_msg=name)
    if name in ROUNDING_IDENTITY:
      np.testing.assert_allclose(policy[mask], reference[mask], atol=1e-5, err_msg=name)
      assert 0.0 <= kl < 1e-9, name
    else:
      np.testing.assert_array_equal(policy[mask], reference[mask], err_msg=name)
      assert kl == 0.0, name


def _lora_tree(params):
  return adapters.inject(params, adapters.LoRA(rank=4, alpha=8.0), TARGETS, jax.random.PRNGKey(1))


@pytest.fixture(scope='module')
def prepared(base, batch):
  """The batch with the sampling policy's and the reference's log-probs (one device)."""
  model, params = base
  trainable, frozen = adapters.partition(_lora_tree(params))
  old = jax.jit(rl_step.make_prepare(model, TEMPERATURE), compiler_options=O0)(
    trainable, frozen, batch
  )
  return dict(batch, old_log_probs=jax.device_get(old))


def _grpo_updates(base, prepared, mesh, updates=2, skip_no_signal=False, with_state=False):
  model, params = base
  tree = _lora_tree(params)
  training = setup_training(
    tree,
    models.param_logical_axes(tree, CONFIG),
    loss_fn=None,
    partition_fn=adapters.partition,
    mesh=mesh,
    optimizer_kwargs=dict(peak_lr=1e-2, total_steps=updates, clip_norm=1.0),
    batch_keys=rl_step.BATCH_KEYS,
    step_builder=rl_step.make_grpo_step(
      model, LOSS, temperature=TEMPERATURE, reuse_batch=True, skip_no_signal=skip_no_signal
    ),
  )
  initial = jax.device_get((training.state.params, training.state.opt_state))
  placed = parallel.global_batch(prepared, mesh, B)
  step = training.train_step.lower(training.state, training.frozen, placed).compile(O0)
  state, history = training.state, []
  for _ in range(updates):
    state, metrics = step(state, training.frozen, placed)
    history.append(jax.device_get(metrics))
  if with_state:
    return history, initial, jax.device_get((state.params, state.opt_state, state.step))
  return history, jax.device_get(state.params)


@pytest.fixture(scope='module')
def single_device(base, prepared):
  return _grpo_updates(base, prepared, parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1]))


@pytest.mark.parametrize('shape', [(8, 1, 1), (2, 4, 1)])
def test_sharded_grpo_update_matches_one_device(base, prepared, single_device, shape):
  """Two updates on one generation batch (the second with a ratio != 1 against the sampling
  log-probs): loss, KL, clip fraction, norms and the new adapter weights agree with one device
  to 1e-5 (float32 sums reordered across devices)."""
  history, params = _grpo_updates(base, prepared, parallel.make_mesh(shape))
  ref_history, ref_params = single_device
  assert ref_history[0]['ratio_mean'] == pytest.approx(1.0, abs=1e-6)
  assert ref_history[1]['ratio_mean'] != pytest.approx(1.0, abs=1e-4)
  for got, expected in zip(history, ref_history):
    for key in ('loss', 'policy_loss', 'kl', 'clip_fraction', 'entropy', 'grad_norm'):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_skip_no_signal_leaves_a_batch_without_signal_unapplied(base, prepared, single_device):
  """Every advantage 0 (all groups' rewards equal): unflagged, the optimizer still takes the
  step (its state advances; in the arena the KL term's rounding noise, |g| ~ 1e-7, then becomes
  an Adam step of about lr per coordinate); ``skip_no_signal`` leaves params and optimizer state
  bit-identical and still advances the step counter. With signal the flag changes nothing."""
  silent = dict(prepared, advantages=np.zeros_like(prepared['advantages']))
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])

  def changed(before, after):
    return any(
      not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
    )

  _, initial, (params, opt_state, _) = _grpo_updates(base, silent, mesh, with_state=True)
  assert changed(initial[1], opt_state)  # unflagged: Adam's moments / count advanced
  history, initial, (params, opt_state, step) = _grpo_updates(
    base, silent, mesh, skip_no_signal=True, with_state=True
  )
  assert [h['skipped'] for h in history] == [1.0, 1.0] and int(step) == 2
  assert [float(h['update_norm']) for h in history] == [0.0, 0.0]
  assert not changed(initial, (params, opt_state))
  flagged, flagged_params = _grpo_updates(base, prepared, mesh, skip_no_signal=True)
  plain, plain_params = single_device
  assert [h['skipped'] for h in flagged] == [0.0, 0.0] and plain[0]['update_norm'] > 0
  for got, expected in zip(flagged, plain):
    for key in ('loss', 'kl', 'grad_norm', 'update_norm'):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)
  for got, expected in zip(jax.tree.leaves(flagged_params), jax.tree.leaves(plain_params)):
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
