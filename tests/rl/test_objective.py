"""The GRPO objective against float64 NumPy written from the definitions (TRL's GRPOTrainer
loss): advantages for every ``scale_rewards``, the loss and its diagnostics for every loss
normalisation, and the gradient w.r.t. the logits in closed form.

Tolerances: the JAX side runs in float32 (unit roundoff 6e-8); each value passes through a
log-softmax over 7 logits, an exp and sums of at most 60 terms, so relative errors stay below
~1e-6. 1e-5 (relative to the largest entry) leaves an order of magnitude of headroom while a
wrong sign, branch or normaliser changes entries by O(1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax.rl import objective

G, PROMPTS, N, V = 4, 3, 5, 7
B = G * PROMPTS
TEMPERATURE = 0.7
EPS_LOW, EPS_HIGH, BETA = 0.2, 0.28, 0.05


@pytest.fixture(scope='module')
def batch():
  return _make_batch()


def _make_batch():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(B, N, V)) * 1.5
  targets = rng.integers(0, V, size=(B, N))
  lengths = np.array([5, 3, 1, 0, 5, 5, 2, 4, 3, 5, 1, 2])  # row 3: an empty completion
  mask = (np.arange(N)[None] < lengths[:, None]).astype(np.float64)
  logp = _np_log_probs(logits, targets)[0]
  # Sampling and reference log-probs away from the policy's, so ratios land on both sides of
  # the clip range (several updates per generation batch) and the KL is not 0.
  old = logp + rng.normal(size=(B, N)) * 0.3
  ref = logp + rng.normal(size=(B, N)) * 0.5
  rewards = np.array([1, 0, 0, 1, 1, 1, 1, 1, 0.5, 0, 1, 0.25])  # group 1: zero variance
  return dict(logits=logits, targets=targets, mask=mask, old=old, ref=ref, rewards=rewards)


def _np_log_probs(logits, targets):
  z = logits / TEMPERATURE
  z = z - z.max(-1, keepdims=True)
  log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
  entropy = -(np.exp(log_softmax) * log_softmax).sum(-1)
  return picked, entropy, np.exp(log_softmax)


def _np_advantages(rewards, scale):
  grouped = rewards.reshape(-1, G)
  centred = (grouped - grouped.mean(1, keepdims=True)).reshape(-1)
  if scale == 'none':
    return centred
  if scale == 'group':
    return centred / (np.repeat(grouped.std(1, ddof=1), G) + 1e-4)
  return centred / (rewards.std(ddof=1) + 1e-4)


def _np_weights(mask, loss_type):
  """d loss / d (per-token loss) of each normalisation."""
  if loss_type == 'grpo':
    return mask / np.maximum(mask.sum(1, keepdims=True), 1) / B
  if loss_type in ('bnpo', 'dapo'):
    return mask / max(mask.sum(), 1)
  return mask / (B * N)


def _np_loss_and_grad(b, advantages, loss_type):
  logp, _, probs = _np_log_probs(b['logits'], b['targets'])
  a = advantages[:, None]
  ratio = np.exp(logp - b['old'])
  clipped = np.clip(ratio, 1 - EPS_LOW, 1 + EPS_HIGH)
  policy = -np.minimum(ratio * a, clipped * a)
  diff = b['ref'] - logp
  kl = np.exp(diff) - diff - 1
  weights = _np_weights(b['mask'], loss_type)
  loss = np.sum(weights * (policy + BETA * kl))
  region = ((ratio < 1 - EPS_LOW) & (a < 0)) | ((ratio > 1 + EPS_HIGH) & (a > 0))
  # d l / d log π: -A ρ where the unclipped term is the min, 0 where the clip cuts; the k3 term
  # gives β (1 - exp(q - p)).
  dl = np.where(region, 0.0, -a * ratio) + BETA * (1 - np.exp(diff))
  dlogp = weights * dl
  onehot = np.eye(V)[b['targets']]
  grad = dlogp[..., None] * (onehot - probs) / TEMPERATURE
  m = b['mask']
  stats = {
    'kl': (kl * m).sum() / m.sum(),
    'clip_fraction': (region * m).sum() / m.sum(),
    'ratio_mean': (ratio * m).sum() / m.sum(),
  }
  return loss, grad, stats, region


def _close(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = max(np.abs(expected).max(), 1e-30)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize('scale', objective.SCALE_REWARDS)
def test_advantages_match_numpy(batch, scale):
  got = objective.group_advantages(jnp.asarray(batch['rewards']), G, scale_rewards=scale)
  expected = _np_advantages(batch['rewards'], scale)
  _close(got, expected)
  assert np.all(np.asarray(got)[4:8] == 0.0)  # the zero-variance group carries no signal


def test_group_reward_stats(batch):
  stats = objective.group_reward_stats(jnp.asarray(batch['rewards']), G)
  grouped = batch['rewards'].reshape(-1, G)
  _close(stats['reward_mean'], grouped.mean())
  _close(stats['reward_std'], grouped.std(1, ddof=1).mean())
  assert float(stats['zero_variance_fraction']) == pytest.approx(1 / 3)


def test_token_log_probs_and_entropy(batch):
  logp, entropy = objective.token_log_probs(
    jnp.asarray(batch['logits'], jnp.float32), jnp.asarray(batch['targets']), TEMPERATURE
  )
  ref_logp, ref_entropy, _ = _np_log_probs(batch['logits'], batch['targets'])
  _close(logp, ref_logp)
  _close(entropy, ref_entropy)


@pytest.mark.parametrize('loss_type', objective.LOSS_TYPES)
def test_loss_gradient_and_stats_match_numpy(batch, loss_type):
  advantages = _np_advantages(batch['rewards'], 'group')
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  def loss_of_logits(logits):
    logp, _ = objective.token_log_probs(logits, jnp.asarray(batch['targets']), TEMPERATURE)
    return objective.grpo_loss(
      logp,
      f32(batch['old']),
      f32(batch['ref']),
      f32(advantages),
      f32(batch['mask']),
      epsilon_low=EPS_LOW,
      epsilon_high=EPS_HIGH,
      beta=BETA,
      loss_type=loss_type,
      max_completion_length=N,
    )

  (loss, stats), grad = jax.jit(jax.value_and_grad(loss_of_logits, has_aux=True))(
    f32(batch['logits'])
  )
  ref_loss, ref_grad, ref_stats, region = _np_loss_and_grad(batch, advantages, loss_type)
  # The fixed batch exercises both clip sides and unclipped tokens, so every branch is tested
  # (and the clip counts differ from those with the advantage's sign flipped).
  assert 0 < region[batch['mask'] > 0].sum() < (batch['mask'] > 0).sum()
  _close(loss, ref_loss)
  _close(grad, ref_grad)
  for name, value in ref_stats.items():
    _close(stats[name], value)
  assert np.all(np.asarray(grad)[3] == 0.0)  # the empty completion gets no gradient


def test_one_update_per_batch_has_ratio_one_and_no_clipping(batch):
  """``π_old = π`` (the first update on a fresh batch): ratio 1, nothing clipped, and the
  gradient is the plain policy gradient ``-A ∇ log π`` (plus the KL term)."""
  logp = jnp.asarray(_np_log_probs(batch['logits'], batch['targets'])[0], jnp.float32)
  advantages = jnp.asarray(_np_advantages(batch['rewards'], 'group'), jnp.float32)
  _, stats = objective.grpo_loss(
    logp, logp, logp, advantages, jnp.asarray(batch['mask'], jnp.float32), beta=BETA
  )
  assert float(stats['ratio_mean']) == 1.0
  assert float(stats['clip_fraction']) == 0.0
  assert float(stats['kl']) == 0.0


def test_bad_options_are_named():
  with pytest.raises(ValueError, match='loss_type'):
    objective.grpo_loss(*(jnp.zeros((2, 3)),) * 3, jnp.zeros(2), jnp.ones((2, 3)), loss_type='x')
  with pytest.raises(ValueError, match='scale_rewards'):
    objective.group_advantages(jnp.zeros(4), 2, scale_rewards='x')
  with pytest.raises(ValueError, match='group_size'):
    objective.group_advantages(jnp.zeros(5), 2)
