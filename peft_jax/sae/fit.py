"""SAE training from a token sampler: batch-sharded over the mesh, checkpointed, resumable.

docs/SAE.md, "Training". :func:`fit_sae` runs the same optimisation as
:func:`peft_jax.sae.sae.train_sae` (Adam, tangent-plane decoder gradient, unit decoder rows,
dead-feature tracking and resampling) but takes its batches from the host: every chunk of
``log_every`` steps draws ``log_every × batch_size`` rows from a sampler
(:class:`peft_jax.sae.store.TokenSampler`: the rows in memory, or a shuffle buffer of
disk-backed chunks within a memory budget), normalises them, and places them on the mesh as
``[steps, batch, d]`` with the batch dimension split over the ``'data'`` axis; params and
optimizer state are replicated, so the gradient is the all-reduced mean over the shards. One
jitted ``lax.scan`` runs the chunk.

Draws depend only on ``(seed, chunk)``. After every ``checkpoint_every`` chunks the state (params,
Adam moments, steps since each feature fired, history, chunk count) is written atomically to
``<checkpoint_dir>/state.npz``; a rerun with the same arguments resumes from it and ends with the
same params as an uninterrupted run. A checkpoint written under different arguments is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from peft_jax.common import files
from peft_jax.sae import sae as sae_lib

STATE_FILE = 'state.npz'
HISTORY_KEYS = ('step', 'loss', 'mse', 'l1', 'l0', 'fvu', 'dead_fraction', 'resampled')


@functools.partial(jax.jit, static_argnames=('spec',))
def _fit_chunk(params, opt_state, since_fired, batches, learning_rate, l1_coeff, *, spec):
  """``batches: [steps, batch, d]`` under one ``lax.scan``; returns the carry and chunk means."""
  step = functools.partial(sae_lib.update_step, spec, learning_rate, l1_coeff)
  (params, opt_state, since_fired), metrics = jax.lax.scan(
    step, (params, opt_state, since_fired), batches
  )
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics['dead_fraction'] = jnp.mean(since_fired >= spec.dead_after)
  return params, opt_state, since_fired, metrics


def _fingerprint(**parts) -> str:
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_state(path: str, fingerprint: str, chunk: int, carry, history: dict) -> None:
  leaves = jax.tree.leaves(jax.device_get(carry))
  arrays = {f'leaf_{i:04d}': np.asarray(leaf) for i, leaf in enumerate(leaves)}
  meta = json.dumps({'fingerprint': fingerprint, 'chunk': chunk, 'history': history})
  buffer = io.BytesIO()
  np.savez(buffer, meta=np.asarray(meta), **arrays)
  files.write_bytes(path, buffer.getvalue())


def _load_state(path: str, fingerprint: str, like):
  with np.load(path) as data:
    meta = json.loads(str(data['meta']))
    if meta['fingerprint'] != fingerprint:
      raise ValueError(
        f'{path} was written by an SAE run with different settings (fingerprint '
        f'{meta["fingerprint"]}, this run {fingerprint}); delete it to start over'
      )
    treedef = jax.tree.structure(like)
    leaves = [data[f'leaf_{i:04d}'] for i in range(treedef.num_leaves)]
  like_leaves = jax.tree.leaves(like)
  for i, (leaf, ref) in enumerate(zip(leaves, like_leaves)):
    if leaf.shape != np.shape(ref):
      raise ValueError(f'{path}: leaf {i} has shape {leaf.shape}, expected {np.shape(ref)}')
  carry = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves])
  return int(meta['chunk']), carry, meta['history']


def fit_sae(
  sampler,
  config: sae_lib.SAEConfig,
  seed: int,
  *,
  mean: Optional[np.ndarray] = None,
  scale: float = 1.0,
  mesh: Optional[Mesh] = None,
  checkpoint_dir: Optional[str] = None,
  checkpoint_every: int = 1,
  on_chunk: Optional[Callable[[int], Any]] = None,
) -> tuple[dict, dict]:
  """Trains an SAE on rows drawn from ``sampler`` (``.draw(index, count) -> [count, d]``; indices used: ``(0, chunk)`` training batches, ``(1, chunk)`` resampling pools, ``(2, 0)`` the init rows).

  Args:
    sampler: row source; ``d`` is read from its first draw.
    config: :class:`~peft_jax.sae.sae.SAEConfig`.
    seed: PRNG seed of the init (the draws are the sampler's own).
    mean, scale: the SAE sees ``(x - mean) * scale`` (:class:`~peft_jax.sae.delta.NormStats`).
    mesh: a mesh with a ``'data'`` axis; batches split over it (``batch_size`` must divide).
    checkpoint_dir: where ``state.npz`` is kept (None: no checkpoints).
    checkpoint_every: chunks between checkpoints.
    on_chunk: called with the number of finished chunks after each one (and its checkpoint).

  Returns:
    ``(params as NumPy arrays, history)``; history as in :func:`~peft_jax.sae.sae.train_sae`.
  """
  if not isinstance(config, sae_lib.SAEConfig):
    raise TypeError(f'config must be an SAEConfig, got {type(config).__name__}')
  spec = sae_lib.step_spec(config)
  sharding = replicated = None
  if mesh is not None:
    if 'data' not in mesh.axis_names:
      raise ValueError(f"mesh axes {mesh.axis_names} have no 'data' axis to split batches over")
    if config.batch_size % mesh.shape['data']:
      raise ValueError(
        f'SAEConfig.batch_size={config.batch_size} is not divisible by the mesh data axis '
        f'({mesh.shape["data"]} devices)'
      )
    sharding = NamedSharding(mesh, PartitionSpec(None, 'data', None))
    replicated = NamedSharding(mesh, PartitionSpec())

  def normalise(rows):
    rows = np.asarray(rows, np.float32)
    if mean is not None:
      rows = rows - np.asarray(mean, np.float32)
    return rows * np.float32(scale)

  init_rows = normalise(sampler.draw((2, 0), config.resample_pool))
  d = init_rows.shape[1]
  b_dec = jnp.asarray(init_rows.mean(0)) if config.init_b_dec == 'mean' else None
  params = sae_lib.init_sae(
    jax.random.key(seed),
    d,
    config.num_features,
    activation=config.activation,
    init_threshold=config.init_threshold,
    b_dec=b_dec,
  )
  carry = (params, sae_lib.ADAM.init(params), jnp.zeros((config.num_features,), jnp.int32))
  fingerprint = _fingerprint(
    config=dataclasses.asdict(config),
    seed=seed,
    d=d,
    scale=float(scale),
    mean=None if mean is None else np.asarray(mean, np.float64).round(10).tolist(),
    init=hashlib.sha256(init_rows.tobytes()).hexdigest(),
  )
  history = {name: [] for name in HISTORY_KEYS}
  start = 0
  state_path = os.path.join(checkpoint_dir, STATE_FILE) if checkpoint_dir else None
  if state_path and os.path.exists(state_path):
    start, carry, history = _load_state(state_path, fingerprint, carry)
  if replicated is not None:
    carry = jax.device_put(carry, replicated)
  learning_rate = jnp.asarray(config.learning_rate, jnp.float32)
  l1_coeff = jnp.asarray(config.l1_coeff, jnp.float32)
  num_chunks = config.num_steps // config.log_every
  for chunk in range(start, num_chunks):
    rows = normalise(sampler.draw((0, chunk), config.log_every * config.batch_size))
    batches = rows.reshape(config.log_every, config.batch_size, d)
    batches = jax.device_put(batches, sharding) if sharding is not None else jnp.asarray(batches)
    params, opt_state, since_fired, metrics = _fit_chunk(
      *carry, batches, learning_rate, l1_coeff, spec=spec
    )
    step = (chunk + 1) * config.log_every
    resampled = 0
    if config.resample_every and step % config.resample_every == 0 and step < config.num_steps:
      pool = jnp.asarray(normalise(sampler.draw((1, chunk), config.resample_pool)))
      params, opt_state, since_fired, count = sae_lib.resample_dead(
        params,
        opt_state,
        since_fired,
        pool,
        jax.random.fold_in(jax.random.key(seed), chunk),
        spec=spec,
        num_features=config.num_features,
        pool=config.resample_pool,
      )
      resampled = int(count)
    carry = (params, opt_state, since_fired)
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics['loss']):
      raise FloatingPointError(
        f'SAE loss became {metrics["loss"]} in steps {step - config.log_every}..{step}'
      )
    history['step'].append(step)
    for name in ('loss', 'mse', 'l1', 'l0', 'fvu', 'dead_fraction'):
      history[name].append(float(metrics[name]))
    history['resampled'].append(resampled)
    done = chunk + 1
    if state_path and (done % checkpoint_every == 0 or done == num_chunks):
      _save_state(state_path, fingerprint, done, carry, history)
    if on_chunk is not None:
      on_chunk(done)
  params = {name: np.asarray(v) for name, v in jax.device_get(carry[0]).items()}
  return params, history


def save_params(path: str, params: dict) -> None:
  """SAE params as an ``.npz`` (atomic)."""
  buffer = io.BytesIO()
  np.savez(buffer, **{name: np.asarray(v) for name, v in params.items()})
  files.write_bytes(path, buffer.getvalue())


def load_params(path: str) -> dict:
  with np.load(path) as data:
    return {name: np.asarray(data[name]) for name in data.files}
