"""Sparse autoencoders (SAEs) as pure functions over a params dict.

An SAE with ``d`` input dims and ``m`` features (docs/METRICS.md, "SAE architectures and loss") maps a token activation
``x: [..., d]`` to a sparse code ``f: [..., m]`` and back:

.. math::

  z = (x - b_{dec}) W_{enc} + b_{enc}, \\qquad f = \\sigma(z), \\qquad
  \\hat x = f W_{dec} + b_{dec},

with ``W_enc: [d, m]``, ``b_enc: [m]``, ``W_dec: [m, d]`` (row ``i`` is feature ``i``'s unit-norm
decoder direction) and ``b_dec: [d]``. Three encoders ``σ``:

* ``'relu'`` (Anthropic, "Towards Monosemanticity", 2023): ``f = ReLU(z)``, trained with
  ``L = ||x - x̂||² + λ ||f||₁``.
* ``'topk'`` (Gao et al. 2024, arXiv:2406.04093): ``f = ReLU(TopK_k(z))`` (the ``k`` largest entries
  of ``z`` kept, the rest zeroed), trained on the MSE alone (``λ`` optional).
* ``'jumprelu'`` (Rajamanoharan et al. 2024, arXiv:2407.14435; the Gemma Scope SAEs,
  arXiv:2408.05147): ``f = z ⊙ H(z - θ)`` with a learned per-feature threshold
  ``θ = exp(log_threshold) > 0``, trained with ``L = ||x - x̂||² + λ ||f||₀`` through
  straight-through estimators whose pseudo-derivatives wrt ``θ`` use a rectangle kernel of width
  ``ε`` (``bandwidth``).

.. note::
  Every encoder subtracts ``b_dec`` before encoding (the "pre-encoder bias" of Anthropic and Gao et
  al.). Gemma Scope's JumpReLU encodes ``z = x W_enc + b_enc``; to load such weights here use
  ``b_enc' = b_enc + b_dec W_enc`` (:func:`from_uncentered_encoder`).

Decoder rows are kept at unit norm during training: the gradient component parallel to each row is
projected out before the optimizer step (:func:`remove_parallel_decoder_grad`) and the rows are
renormalised after it (:func:`normalize_decoder`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
# {'W_enc': [d, m], 'b_enc': [m], 'W_dec': [m, d], 'b_dec': [d]} (+ 'log_threshold': [m], JumpReLU)
SAEParams = dict

ACTIVATIONS = ('relu', 'topk', 'jumprelu')
_EPS = 1e-12


def _check_activation(activation: str, k: Optional[int], m: Optional[int] = None) -> None:
  if activation not in ACTIVATIONS:
    raise ValueError(f'activation={activation!r} is not supported; valid: {ACTIVATIONS}.')
  if activation == 'topk':
    if k is None or int(k) < 1:
      raise ValueError(f"activation='topk' needs k >= 1, got k={k!r}.")
    if m is not None and k > m:
      raise ValueError(f'TopK k={k} exceeds the number of features m={m}.')


def _check_params(params: SAEParams, activation: str) -> None:
  required = ('W_enc', 'b_enc', 'W_dec', 'b_dec')
  if activation == 'jumprelu':
    required += ('log_threshold',)
  if not isinstance(params, dict):
    raise TypeError(f'SAE params must be a dict with keys {required}, got {type(params).__name__}.')
  missing = [name for name in required if name not in params]
  if missing:
    raise ValueError(
      f'SAE params lack {missing} for activation={activation!r}; they have {sorted(params)}.'
    )
  d, m = params['W_enc'].shape
  if (
    params['W_dec'].shape != (m, d)
    or params['b_enc'].shape != (m,)
    or params['b_dec'].shape != (d,)
  ):
    raise ValueError(
      'inconsistent SAE shapes: W_enc '
      f'{params["W_enc"].shape} (want [d, m]), b_enc {params["b_enc"].shape} (want '
      f'[m]), W_dec {params["W_dec"].shape} (want [m, d]), b_dec '
      f'{params["b_dec"].shape} (want [d]).'
    )


def _check_x(params: SAEParams, x: Array) -> None:
  d = params['W_enc'].shape[0]
  if x.ndim < 1 or x.shape[-1] != d:
    raise ValueError(f"x must be [..., d] with d={d} (the SAE's input width), got shape {x.shape}.")


# ---------------------------------------------------------------------------------------------
# Parameters.


def init_sae(
  key: Array,
  d: int,
  m: int,
  *,
  activation: str = 'relu',
  init_threshold: float = 1e-3,
  b_dec: Optional[Array] = None,
  dtype: Any = jnp.float32,
) -> SAEParams:
  """Initialises an SAE with ``d`` input dims and ``m`` features.

  Decoder rows are independent Gaussian directions scaled to unit norm; the encoder is tied at
  init, ``W_enc = W_decᵀ`` (Gao et al. 2024; Anthropic, Apr. 2024), and ``b_enc = 0``.

  Args:
    key: PRNG key.
    d: input width.
    m: number of features (dictionary size).
    activation: one of ``'relu'``, ``'topk'``, ``'jumprelu'``; ``'jumprelu'`` adds
      ``log_threshold: [m]`` set to ``log(init_threshold)``.
    init_threshold: JumpReLU's initial threshold ``θ`` (> 0).
    b_dec: optional initial decoder bias ``[d]`` (e.g. the data mean); zeros otherwise.
    dtype: float dtype of the params.

  Returns:
    ``{'W_enc': [d, m], 'b_enc': [m], 'W_dec': [m, d], 'b_dec': [d]}`` (+ ``'log_threshold': [m]``).
  """
  if activation not in ACTIVATIONS:
    raise ValueError(f'activation={activation!r} is not supported; valid: {ACTIVATIONS}.')
  if int(d) < 1 or int(m) < 1:
    raise ValueError(f'd and m must be >= 1, got d={d}, m={m}.')
  w_dec = jax.random.normal(key, (m, d), jnp.float32)
  w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
  if b_dec is None:
    b_dec = jnp.zeros((d,), jnp.float32)
  elif jnp.shape(b_dec) != (d,):
    raise ValueError(f'b_dec must have shape [d]=({d},), got {jnp.shape(b_dec)}.')
  params = {
    'W_enc': w_dec.T.astype(dtype),
    'b_enc': jnp.zeros((m,), dtype),
    'W_dec': w_dec.astype(dtype),
    'b_dec': jnp.asarray(b_dec, dtype),
  }
  if activation == 'jumprelu':
    if init_threshold <= 0:
      raise ValueError(f'init_threshold must be > 0, got {init_threshold}.')
    params['log_threshold'] = jnp.full((m,), np.log(init_threshold), dtype)
  return params


def from_uncentered_encoder(
  w_enc: Array, b_enc: Array, w_dec: Array, b_dec: Array, threshold: Optional[Array] = None
) -> SAEParams:
  """Params for an SAE whose encoder is ``z = x W_enc + b_enc`` (e.g. Gemma Scope's JumpReLU).

  Folds the decoder bias so that :func:`encode` (which subtracts ``b_dec``) gives the same ``z``:
  ``b_enc' = b_enc + b_dec W_enc``. Decoder rows are used as given (not renormalised).

  Args:
    w_enc: ``[d, m]``; b_enc: ``[m]``; w_dec: ``[m, d]``; b_dec: ``[d]``.
    threshold: optional JumpReLU thresholds ``θ: [m]`` (> 0), stored as ``log_threshold``.
  """
  w_enc, b_enc, w_dec, b_dec = (jnp.asarray(a) for a in (w_enc, b_enc, w_dec, b_dec))
  params = {'W_enc': w_enc, 'b_enc': b_enc + b_dec @ w_enc, 'W_dec': w_dec, 'b_dec': b_dec}
  if threshold is not None:
    threshold = jnp.asarray(threshold)
    if bool(jnp.any(threshold <= 0)):
      raise ValueError('JumpReLU thresholds must be > 0 to be stored as log_threshold.')
    params['log_threshold'] = jnp.log(threshold)
  _check_params(params, 'jumprelu' if threshold is not None else 'relu')
  return params


def normalize_decoder(params: SAEParams) -> SAEParams:
  """Rescales every decoder row to unit L2 norm: ``W_dec[i] ← W_dec[i] / ||W_dec[i]||``."""
  w_dec = params['W_dec']
  norms = jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
  return {**params, 'W_dec': w_dec / jnp.maximum(norms, _EPS)}


def remove_parallel_decoder_grad(params: SAEParams, grads: SAEParams) -> SAEParams:
  """Projects out of ``∂L/∂W_dec`` the component parallel to each (unit) decoder row.

  .. math::

    g_i \\leftarrow g_i - (g_i \\cdot w_i)\\, w_i, \\qquad w_i = W_{dec}[i] / ||W_{dec}[i]||.

  So a step moves each row along the sphere's tangent plane and only rotates it; the row norm is
  then restored by :func:`normalize_decoder`.
  """
  w = params['W_dec']
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), _EPS)
  g = grads['W_dec']
  return {**grads, 'W_dec': g - jnp.sum(g * w, axis=-1, keepdims=True) * w}


# ---------------------------------------------------------------------------------------------
# JumpReLU with straight-through estimators (Rajamanoharan et al. 2024).


def _rectangle(u: Array) -> Array:
  return (jnp.abs(u) < 0.5).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _jumprelu(z: Array, threshold: Array, bandwidth: float) -> Array:
  return z * (z > threshold).astype(z.dtype)


def _jumprelu_fwd(z, threshold, bandwidth):
  return _jumprelu(z, threshold, bandwidth), (z, threshold)


def _jumprelu_bwd(bandwidth, residuals, g):
  z, threshold = residuals
  dz = g * (z > threshold).astype(z.dtype)
  # ∂/∂θ [z H(z-θ)] ≈ -(θ/ε) K((z-θ)/ε)
  dtheta = g * (-(threshold / bandwidth) * _rectangle((z - threshold) / bandwidth))
  return dz, jnp.sum(dtheta.reshape(-1, z.shape[-1]), axis=0)


_jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _heaviside(z: Array, threshold: Array, bandwidth: float) -> Array:
  return (z > threshold).astype(z.dtype)


def _heaviside_fwd(z, threshold, bandwidth):
  return _heaviside(z, threshold, bandwidth), (z, threshold)


def _heaviside_bwd(bandwidth, residuals, g):
  z, threshold = residuals
  # ∂/∂θ H(z-θ) ≈ -(1/ε) K((z-θ)/ε); no gradient to z (the L0 term only trains θ).
  dtheta = g * (-(1.0 / bandwidth) * _rectangle((z - threshold) / bandwidth))
  return jnp.zeros_like(z), jnp.sum(dtheta.reshape(-1, z.shape[-1]), axis=0)


_heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)


# ---------------------------------------------------------------------------------------------
# Forward.


def pre_activations(params: SAEParams, x: Array) -> Array:
  """``z = (x - b_dec) W_enc + b_enc``: ``x: [..., d]`` → ``[..., m]``."""
  _check_x(params, x)
  lead = x.shape[:-1]
  x2 = (x - params['b_dec']).reshape(-1, x.shape[-1])
  z = x2 @ params['W_enc'] + params['b_enc']
  return z.reshape(*lead, z.shape[-1])


def _topk(z: Array, k: int) -> Array:
  values, indices = jax.lax.top_k(z, k)
  return jnp.put_along_axis(jnp.zeros_like(z), indices, jax.nn.relu(values), axis=-1, inplace=False)


def activate(
  params: SAEParams,
  z: Array,
  activation: str = 'relu',
  *,
  k: Optional[int] = None,
  bandwidth: float = 1e-3,
) -> Array:
  """Applies the encoder non-linearity ``σ`` to pre-activations ``z: [..., m]``."""
  _check_activation(activation, k, z.shape[-1])
  if activation == 'relu':
    return jax.nn.relu(z)
  if activation == 'topk':
    return _topk(z, int(k))
  return _jumprelu(z, jnp.exp(params['log_threshold']), bandwidth)


def encode(
  params: SAEParams,
  x: Array,
  activation: str = 'relu',
  *,
  k: Optional[int] = None,
  bandwidth: float = 1e-3,
) -> Array:
  """Feature activations ``f = σ((x - b_dec) W_enc + b_enc)``.

  Args:
    params: SAE params (:func:`init_sae`).
    x: ``[..., d]`` activations.
    activation: ``'relu'``, ``'topk'`` or ``'jumprelu'``.
    k: number of active features for ``'topk'``.
    bandwidth: JumpReLU's straight-through kernel width ``ε`` (affects gradients only).

  Returns:
    ``f: [..., m]``, non-negative; TopK keeps at most ``k`` non-zeros per token (exactly ``k`` when
    the ``k`` largest pre-activations are positive).
  """
  _check_params(params, activation)
  return activate(params, pre_activations(params, x), activation, k=k, bandwidth=bandwidth)


def decode(params: SAEParams, f: Array) -> Array:
  """Reconstruction ``x̂ = f W_dec + b_dec``: ``f: [..., m]`` → ``[..., d]``."""
  m, d = params['W_dec'].shape
  if f.ndim < 1 or f.shape[-1] != m:
    raise ValueError(f'f must be [..., m] with m={m} features, got shape {f.shape}.')
  lead = f.shape[:-1]
  x_hat = f.reshape(-1, m) @ params['W_dec'] + params['b_dec']
  return x_hat.reshape(*lead, d)


def fraction_of_variance_unexplained(x: Array, x_hat: Array) -> Array:
  """FVU ``= Σ_t ||x_t - x̂_t||² / Σ_t ||x_t - x̄||²`` over tokens; ``x, x_hat: [n, d]``."""
  x = x.reshape(-1, x.shape[-1])
  x_hat = x_hat.reshape(-1, x_hat.shape[-1])
  residual = jnp.sum((x - x_hat) ** 2)
  total = jnp.sum((x - jnp.mean(x, axis=0)) ** 2)
  return residual / jnp.maximum(total, _EPS)


def sae_loss(
  params: SAEParams,
  x: Array,
  l1_coeff: float,
  activation: str = 'relu',
  *,
  k: Optional[int] = None,
  bandwidth: float = 1e-3,
) -> tuple[Array, dict[str, Array]]:
  """SAE training loss on a batch of tokens, with diagnostics.

  With per-token means over the ``n`` tokens of ``x``:

  .. math::

    \\mathrm{mse} = \\tfrac1n \\sum_t \\lVert x_t - \\hat x_t \\rVert_2^2, \\quad
    \\ell_1 = \\tfrac1n \\sum_t \\sum_i |f_{ti}|\\, \\lVert W_{dec}[i] \\rVert_2, \\quad
    \\ell_0 = \\tfrac1n \\sum_t \\#\\{i: f_{ti} > 0\\},

  and ``loss = mse + λ ℓ1`` for ``'relu'``/``'topk'``, ``loss = mse + λ ℓ0`` for ``'jumprelu'``
  (ℓ0 through the straight-through Heaviside, so only ``θ`` feels it).

  Args:
    params: SAE params.
    x: ``[n, d]`` (or ``[..., d]``) activations.
    l1_coeff: sparsity coefficient ``λ`` (L1 for relu/topk, L0 for jumprelu).
    activation, k, bandwidth: as in :func:`encode`.

  Returns:
    ``(loss, aux)`` with scalar ``aux['mse']``, ``aux['l1']``, ``aux['l0']``, ``aux['fvu']``
    (fraction of variance unexplained), and the dead-feature inputs ``aux['feature_fired']: [m]``
    (bool, fired on some token of the batch) and ``aux['feature_count']: [m]`` (tokens fired on).
  """
  _check_params(params, activation)
  x2 = x.reshape(-1, x.shape[-1])
  z = pre_activations(params, x2)
  f = activate(params, z, activation, k=k, bandwidth=bandwidth)
  x_hat = decode(params, f)
  n = x2.shape[0]
  mse = jnp.sum((x2 - x_hat) ** 2) / n
  dec_norms = jnp.linalg.norm(params['W_dec'], axis=-1)
  l1 = jnp.sum(jnp.abs(f) * dec_norms) / n
  active = f > 0
  l0 = jnp.sum(active) / n
  if activation == 'jumprelu':
    sparsity = jnp.sum(_heaviside(z, jnp.exp(params['log_threshold']), bandwidth)) / n
  else:
    sparsity = l1
  loss = mse + l1_coeff * sparsity
  count = jnp.sum(active, axis=0)
  aux = {
    'mse': mse,
    'l1': l1,
    'l0': l0.astype(mse.dtype),
    'fvu': jax.lax.stop_gradient(fraction_of_variance_unexplained(x2, x_hat)),
    'feature_fired': count > 0,
    'feature_count': count,
  }
  return loss, aux


# ---------------------------------------------------------------------------------------------
# Training.


@dataclasses.dataclass(frozen=True)
class SAEConfig:
  """Hyper-parameters of an SAE and its training run (hashable: static under jit).

  Attributes:
    num_features: dictionary size ``m``.
    activation: ``'relu'``, ``'topk'`` or ``'jumprelu'``.
    k: active features per token for ``'topk'``.
    l1_coeff: sparsity coefficient ``λ`` (L1 for relu/topk, L0 for jumprelu).
    learning_rate: Adam step size.
    num_steps: optimizer steps.
    batch_size: tokens per step, drawn uniformly with replacement.
    log_every: steps per jitted ``lax.scan`` chunk; one history row per chunk.
    bandwidth: JumpReLU straight-through kernel width ``ε``.
    init_threshold: JumpReLU initial threshold ``θ``.
    dead_after: a feature that has not fired for this many steps counts as dead.
    resample_every: every this many steps (a multiple of ``log_every``; 0 = never) dead features are
      re-initialised towards badly reconstructed inputs (Anthropic 2023).
    resample_pool: candidate tokens scored for resampling.
    init_b_dec: ``'mean'`` (data mean) or ``'zeros'``.
  """

  num_features: int
  activation: str = 'topk'
  k: Optional[int] = 8
  l1_coeff: float = 0.0
  learning_rate: float = 1e-3
  num_steps: int = 1000
  batch_size: int = 256
  log_every: int = 100
  bandwidth: float = 1e-3
  init_threshold: float = 1e-3
  dead_after: int = 200
  resample_every: int = 0
  resample_pool: int = 1024
  init_b_dec: str = 'mean'

  def __post_init__(self):
    _check_activation(self.activation, self.k, self.num_features)
    for name in (
      'num_features',
      'num_steps',
      'batch_size',
      'log_every',
      'dead_after',
      'resample_pool',
    ):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'SAEConfig.{name} must be >= 1, got {getattr(self, name)}.')
    if self.num_steps % self.log_every:
      raise ValueError(
        f'SAEConfig.num_steps={self.num_steps} must be a multiple of log_every={self.log_every}.'
      )
    if self.resample_every < 0 or (self.resample_every and self.resample_every % self.log_every):
      raise ValueError(
        f'SAEConfig.resample_every={self.resample_every} must be 0 or a positive '
        f'multiple of log_every={self.log_every}.'
      )
    if self.learning_rate <= 0 or self.l1_coeff < 0 or self.bandwidth <= 0:
      raise ValueError(
        'SAEConfig needs learning_rate > 0, l1_coeff >= 0 and bandwidth > 0, got '
        f'{self.learning_rate}, {self.l1_coeff}, {self.bandwidth}.'
      )
    if self.init_b_dec not in ('mean', 'zeros'):
      raise ValueError(f"SAEConfig.init_b_dec={self.init_b_dec!r}; valid: ('mean', 'zeros').")

  @property
  def encoder_kwargs(self) -> dict[str, Any]:
    """``activation``/``k``/``bandwidth`` keywords for :func:`encode` and :func:`sae_loss`."""
    return {'activation': self.activation, 'k': self.k, 'bandwidth': self.bandwidth}


class StepSpec(NamedTuple):
  """The static part of a training step (what changes the compiled program)."""

  activation: str
  k: Optional[int]
  batch_size: int
  log_every: int
  bandwidth: float
  dead_after: int


def step_spec(config: SAEConfig) -> StepSpec:
  return StepSpec(
    config.activation,
    config.k,
    config.batch_size,
    config.log_every,
    config.bandwidth,
    config.dead_after,
  )


# Adam without the learning rate, so the rate stays a traced scalar and a new rate (or a new λ, or a
# new step count) reuses the compiled chunk.
ADAM = optax.scale_by_adam()


def _train_step(spec: StepSpec, acts, learning_rate, l1_coeff, carry, step_key):
  idx = jax.random.randint(step_key, (spec.batch_size,), 0, acts.shape[0])
  return update_step(spec, learning_rate, l1_coeff, carry, jnp.take(acts, idx, axis=0))


def update_step(spec: StepSpec, learning_rate, l1_coeff, carry, x):
  """One Adam step on the batch ``x: [batch, d]``; ``carry = (params, opt_state, since_fired)``.

  The decoder gradient is projected onto the rows' tangent planes, the rows renormalised after
  the update; ``since_fired`` counts steps since each feature last fired.
  """
  params, opt_state, since_fired = carry
  (loss, aux), grads = jax.value_and_grad(sae_loss, has_aux=True)(
    params, x, l1_coeff, spec.activation, k=spec.k, bandwidth=spec.bandwidth
  )
  grads = remove_parallel_decoder_grad(params, grads)
  updates, opt_state = ADAM.update(grads, opt_state, params)
  updates = jax.tree.map(lambda u: -learning_rate * u, updates)
  params = normalize_decoder(optax.apply_updates(params, updates))
  since_fired = jnp.where(aux['feature_fired'], 0, since_fired + 1)
  metrics = {'loss': loss, 'mse': aux['mse'], 'l1': aux['l1'], 'l0': aux['l0'], 'fvu': aux['fvu']}
  return (params, opt_state, since_fired), metrics


@functools.partial(jax.jit, static_argnames=('spec',))
def _train_chunk(
  params, opt_state, since_fired, acts, key, learning_rate, l1_coeff, *, spec: StepSpec
):
  """``spec.log_every`` steps under one ``lax.scan``; returns the carry and chunk-mean metrics."""
  keys = jax.random.split(key, spec.log_every)
  step = functools.partial(_train_step, spec, acts, learning_rate, l1_coeff)
  (params, opt_state, since_fired), metrics = jax.lax.scan(
    step, (params, opt_state, since_fired), keys
  )
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics['dead_fraction'] = jnp.mean(since_fired >= spec.dead_after)
  return params, opt_state, since_fired, metrics


def _zero_feature_entries(path, leaf, dead):
  """Zeros the entries of one params-shaped optimizer leaf that belong to dead features."""
  name = getattr(path[-1], 'key', None) if path else None
  if name == 'W_dec':
    return jnp.where(dead[:, None], 0, leaf)
  if name == 'W_enc':
    return jnp.where(dead[None, :], 0, leaf)
  if name in ('b_enc', 'log_threshold'):
    return jnp.where(dead, 0, leaf)
  return leaf


@functools.partial(jax.jit, static_argnames=('spec', 'num_features', 'pool'))
def resample_dead(
  params, opt_state, since_fired, acts, key, *, spec: StepSpec, num_features: int, pool: int
):
  """Re-initialises dead features towards badly reconstructed inputs (Anthropic, 2023).

  Candidates ``x`` are drawn from ``acts`` and scored by ``||x - x̂||²``; each dead feature gets
  the unit residual direction ``e/||e||`` of a candidate drawn with probability ∝ ``||e||⁴`` as its
  decoder row, ``0.2 · mean alive encoder norm · e/||e||`` as its encoder column, ``b_enc = 0``;
  its Adam moments are zeroed.
  """
  dead = since_fired >= spec.dead_after
  pool_key, pick_key = jax.random.split(key)
  idx = jax.random.randint(pool_key, (pool,), 0, acts.shape[0])
  x = jnp.take(acts, idx, axis=0)
  residual = x - decode(params, encode(params, x, spec.activation, k=spec.k))
  sq = jnp.sum(residual**2, axis=-1)
  picks = jax.random.categorical(pick_key, jnp.log(sq**2 + _EPS), shape=(num_features,))
  dirs = residual[picks] / jnp.maximum(jnp.sqrt(sq[picks]), _EPS)[:, None]
  enc_norms = jnp.linalg.norm(params['W_enc'], axis=0)
  alive = ~dead
  alive_mean = jnp.sum(enc_norms * alive) / jnp.maximum(jnp.sum(alive), 1)
  alive_norm = jnp.where(jnp.any(alive), alive_mean, 1.0)
  new = dict(params)
  new['W_dec'] = jnp.where(dead[:, None], dirs, params['W_dec'])
  new['W_enc'] = jnp.where(dead[None, :], dirs.T * 0.2 * alive_norm, params['W_enc'])
  new['b_enc'] = jnp.where(dead, 0.0, params['b_enc'])
  opt_state = jax.tree_util.tree_map_with_path(
    lambda p, leaf: _zero_feature_entries(p, leaf, dead), opt_state
  )
  return new, opt_state, jnp.where(dead, 0, since_fired), jnp.sum(dead)


def train_sae(acts: Array, config: SAEConfig, key: Array) -> tuple[SAEParams, dict[str, list]]:
  """Trains an SAE on token activations with Adam.

  Each step draws ``batch_size`` tokens, takes the gradient of :func:`sae_loss`, projects the
  decoder gradient onto the rows' tangent planes, applies Adam and renormalises the decoder rows.
  ``log_every`` steps run as one jitted ``lax.scan``; the Python loop only iterates over chunks.
  Features that have not fired for ``dead_after`` steps are tracked and, if ``resample_every``,
  resampled.

  Args:
    acts: ``[n, d]`` activations (leading dims are flattened).
    config: :class:`SAEConfig`.
    key: PRNG key.

  Returns:
    ``(params, history)``; ``history`` holds JSON-ready lists, one entry per chunk: ``'step'``
    (steps done), chunk means of ``'loss'``, ``'mse'``, ``'l1'``, ``'l0'``, ``'fvu'``, the
    ``'dead_fraction'`` at the chunk's end, and ``'resampled'`` (features resampled there).
  """
  if not isinstance(config, SAEConfig):
    raise TypeError(f'config must be an SAEConfig, got {type(config).__name__}.')
  acts = jnp.asarray(acts)
  if acts.ndim < 2 or acts.shape[0] == 0:
    raise ValueError(f'acts must be [n, d] with n >= 1, got shape {acts.shape}.')
  acts = acts.reshape(-1, acts.shape[-1])
  if not jnp.issubdtype(acts.dtype, jnp.floating):
    raise TypeError(f'acts must be floating point, got {acts.dtype}.')
  if not bool(jnp.all(jnp.isfinite(acts))):
    raise ValueError('acts contain NaN or inf.')
  acts = acts.astype(jnp.float32)
  d = acts.shape[-1]
  init_key, key = jax.random.split(key)
  b_dec = jnp.mean(acts, axis=0) if config.init_b_dec == 'mean' else None
  params = init_sae(
    init_key,
    d,
    config.num_features,
    activation=config.activation,
    init_threshold=config.init_threshold,
    b_dec=b_dec,
  )
  opt_state = ADAM.init(params)
  spec = step_spec(config)
  learning_rate = jnp.asarray(config.learning_rate, jnp.float32)
  l1_coeff = jnp.asarray(config.l1_coeff, jnp.float32)
  since_fired = jnp.zeros((config.num_features,), jnp.int32)
  history: dict[str, list] = {
    name: [] for name in ('step', 'loss', 'mse', 'l1', 'l0', 'fvu', 'dead_fraction', 'resampled')
  }
  for chunk in range(config.num_steps // config.log_every):
    step = (chunk + 1) * config.log_every
    chunk_key = jax.random.fold_in(key, chunk)
    params, opt_state, since_fired, metrics = _train_chunk(
      params, opt_state, since_fired, acts, chunk_key, learning_rate, l1_coeff, spec=spec
    )
    resampled = 0
    if config.resample_every and step % config.resample_every == 0 and step < config.num_steps:
      params, opt_state, since_fired, count = resample_dead(
        params,
        opt_state,
        since_fired,
        acts,
        jax.random.fold_in(chunk_key, 1),
        spec=spec,
        num_features=config.num_features,
        pool=config.resample_pool,
      )
      resampled = int(count)
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics['loss']):
      raise FloatingPointError(
        f'SAE loss became {metrics["loss"]} in steps {step - config.log_every}..{step}.'
      )
    history['step'].append(step)
    for name in ('loss', 'mse', 'l1', 'l0', 'fvu', 'dead_fraction'):
      history[name].append(float(metrics[name]))
    history['resampled'].append(resampled)
  return params, history
