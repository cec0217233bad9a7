"""One linen decoder for Llama 2/3, Mistral, Qwen2/2.5 and Gemma 2, switched by ``ModelConfig``.

Layer ``i`` (pre-norm; Gemma 2 adds the "sandwich" norms in brackets)::

  h = x + [post_attention_layernorm](Attn(input_layernorm(x)))
  y = h + [post_feedforward_layernorm](MLP(pre_feedforward_layernorm(h)))   # Gemma 2
  y = h + MLP(post_attention_layernorm(h))                                  # others

``Attn`` is grouped-query attention with rotary embeddings (half-split ``rotate_half`` layout, as
in Hugging Face), ``MLP(x) = down(act(gate(x)) * up(x))``, and the logits are
``norm(h_L) @ lm_head`` (or ``@ embed_tokensᵀ`` when tied), soft-capped for Gemma 2.

Every linear layer goes through :func:`peft_jax.adapters.matmul`, so a kernel leaf replaced by an
``Adapted`` node runs its adapter's efficient forward. Parameter names follow docs/CONVENTIONS.md.
Activations carry logical names (``('batch', 'length', 'embed')`` for the residual stream, the
kernel's output axis for each projection, ``'vocab'`` for the logits) through
:func:`peft_jax.models.activation_sharding.constrain`: sharding constraints by the rules table
inside an ``activation_sharding`` context, the identity outside one.

The same attention serves training/scoring (keys = this call's tokens, mask from
``attention_mask``/``segment_ids``) and KV-cache decoding (``cache=`` given: this call's keys are
written into the cache at ``cache['index']`` and queries attend to every valid cache slot).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters import core as adapters_core
from peft_jax.common import stacking
from peft_jax.models.activation_sharding import constrain
from peft_jax.models.config import ModelConfig

Array = jax.Array

LINEAR_NAMES = (
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
  'lm_head',
)
# Large negative score for masked keys: finite so a fully masked (padding) query row gives a
# uniform softmax instead of NaN.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _compute_dtype(config: ModelConfig):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies ``[hd/2]`` float32, incl. 'linear' and Llama-3 rope scaling.

  default: ``inv[i] = θ^(-2i/hd)``. linear: ``inv / factor``. llama3 (Llama 3.1): with
  wavelength ``λ = 2π/inv``, ``λ_lo = L0/low_freq_factor``, ``λ_hi = L0/high_freq_factor``
  (``L0 = original_max_position_embeddings``): ``inv`` for ``λ < λ_hi``, ``inv/factor`` for
  ``λ > λ_lo``, and in between ``(1-s)·inv/factor + s·inv`` with
  ``s = (L0/λ - low_freq_factor) / (high_freq_factor - low_freq_factor)``.
  """
  hd = config.head_dim
  exponent = np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / np.float32(hd)
  inv = (np.float32(1.0) / (np.float32(config.rope_theta) ** exponent)).astype(np.float32)
  scaling = config.rope_scaling_dict
  rope_type = scaling.get('rope_type', 'default')
  if rope_type == 'linear':
    inv = (inv / np.float32(scaling['factor'])).astype(np.float32)
  elif rope_type == 'llama3':
    factor = np.float32(scaling['factor'])
    low, high = np.float32(scaling['low_freq_factor']), np.float32(scaling['high_freq_factor'])
    old_len = np.float32(scaling['original_max_position_embeddings'])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv
    inv_scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_scaled / factor + smooth * inv_scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(is_medium, smoothed, inv_scaled).astype(np.float32)
  return inv


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """Rotary embedding, half-split layout. x: [B, T, N, hd]; positions: [B, T] -> [B, T, N, hd].

  ``out = x·cos(pθ) + rotate_half(x)·sin(pθ)`` with ``rotate_half([a, b]) = [-b, a]`` and the
  angle vector ``pθ = [p·inv, p·inv]`` (computed in float32).
  """
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, hd/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def default_positions(
  attention_mask: Optional[Array], segment_ids: Optional[Array], shape: tuple[int, int]
) -> Array:
  """Positions ``[B, T]`` int32: restart at 0 per segment; else count real tokens from 0.

  With segments, ``pos[t] = t - start(segment of t)``. With a mask only,
  ``pos[t] = max(cumsum(mask)[t] - 1, 0)`` (left padding gives the prompt positions 0..n-1).
  """
  batch, length = shape
  index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
    previous = jnp.concatenate([jnp.full((batch, 1), -1, jnp.int32), segment_ids[:, :-1]], 1)
    start = jnp.where(segment_ids != previous, index, 0)
    return index - jax.lax.cummax(start, axis=1)
  if attention_mask is not None:
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)
  return index


def _activation(name: str, x: Array) -> Array:
  if name == 'silu':
    return jax.nn.silu(x)
  if name in ('gelu_pytorch_tanh', 'gelu_new'):
    return jax.nn.gelu(x, approximate=True)
  return jax.nn.gelu(x, approximate=False)


def _softcap(x: Array, cap: Optional[float]) -> Array:
  return x if cap is None else cap * jnp.tanh(x / cap)


# An intervention replaces a site's activation: ``fn(y, x) -> y'`` with ``y`` the site's value
# (a linear module's output, or a layer's output residual stream) and ``x`` its input (the module's
# input, or the layer's input residual stream); ``y'`` must have ``y``'s shape.
Intervention = Callable[[Array, Array], Array]


class _Captures:
  """Decides which linear inputs/outputs to record (collected in a flat dict) and applies the
  interventions on module outputs (captures hold the value before the intervention)."""

  def __init__(self, requested: Sequence[str], interventions: Mapping[str, Intervention] = None):
    self.requested = tuple(requested)
    self.interventions = dict(interventions or {})
    self.store: dict[str, Array] = {}

  def wants(self, path: str) -> bool:
    return any(r == 'all' or r == path or path.endswith('/' + r) for r in self.requested)

  def record(self, path: str, x: Array, y: Array) -> Array:
    if self.wants(path):
      self.store[path + '/in'] = x
      self.store[path + '/out'] = y
    fn = self.interventions.get(path + '/out')
    return y if fn is None else _intervene(path + '/out', fn, y, x)


def _intervene(site: str, fn: Intervention, y: Array, x: Array) -> Array:
  out = fn(y, x)
  if out.shape != y.shape:
    raise ValueError(f'intervention at {site!r} returned shape {out.shape}, expected {y.shape}')
  return out.astype(y.dtype)


Axes = tuple[Optional[str], ...]


def _weight(
  module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], axes: Axes
) -> Any:
  """Param ``name`` of ``module`` as the plain weight to compute with.

  The stored leaf is read with ``get_variable`` when it exists, so an ``Adapted`` node (full
  fine-tuning wraps every parameter) passes through linen untouched and is resolved by
  ``adapters.weight_of``. It is created (float32) only at init, with its logical axis names
  declared here (``nn.with_logical_partitioning``); ``param_logical_axes`` reads them back.
  """
  if module.has_variable('params', name):
    return adapters_core.weight_of(module.get_variable('params', name))
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Dense(nn.Module):
  """Linear layer ``y = matmul(x, kernel) (+ bias)``; ``kernel: [d_in, features]``.

  The kernel is read with ``get_variable`` when it exists, so an ``Adapted`` node passes through
  untouched; it is created (lecun-normal) only at init.
  """

  features: int
  kernel_axes: Axes  # logical names of (input, output), e.g. ('embed', 'heads')
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if self.has_variable('params', 'kernel'):
      kernel = self.get_variable('params', 'kernel')
    else:
      kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.kernel_axes),
        (x.shape[-1], self.features),
        jnp.float32,
      )
    # Only adapters use dropout (on their input); plain kernels need no rng.
    dropout_rng = (
      None if deterministic or not adapters_core.is_adapted(kernel) else self.make_rng('dropout')
    )
    y = adapters_core.matmul(x, kernel, dropout_rng=dropout_rng, dtype=self.dtype)
    if self.use_bias:
      bias = _weight(self, 'bias', nn.initializers.zeros, (self.features,), self.kernel_axes[1:])
      y = y + bias.astype(y.dtype)
    return y


class RMSNorm(nn.Module):
  """``x / sqrt(mean(x², -1) + ε) · w`` (``· (1 + w)`` when ``plus_one``), in float32.

  Matches HF: Llama casts the normalised x back to the input dtype before scaling; Gemma scales
  in float32 and casts after.
  """

  eps: float
  plus_one: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = _weight(self, 'scale', init, (x.shape[-1],), ('norm',))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class Embedding(nn.Module):
  """The token embedding table ``[vocab, d]`` (float32), read like every other parameter."""

  vocab_size: int
  features: int

  @nn.compact
  def __call__(self) -> Array:
    return _weight(
      self,
      'embedding',
      nn.initializers.normal(0.02),
      (self.vocab_size, self.features),
      ('vocab', 'embed'),
    )


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE, optional soft-capping, sliding window and KV cache."""

  config: ModelConfig
  layer_index: int

  @nn.compact
  def __call__(
    self,
    x: Array,
    positions: Array,
    mask_info: Mapping[str, Array],
    deterministic: bool,
    captures: _Captures,
    layer_cache: Optional[dict],
  ):
    """x: [B, T, d]; positions: [B, T] -> ([B, T, d], updated layer cache or None)."""
    cfg = self.config
    dtype = _compute_dtype(cfg)
    batch, length, _ = x.shape
    heads, kv_heads, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    prefix = f'layers_{self.layer_index}/self_attn/'

    def linear(name, inp, features, bias, axes):
      out = Dense(features, axes, use_bias=bias, dtype=dtype, name=name)(inp, deterministic)
      out = constrain(out, ('batch', 'length', axes[1]))
      return captures.record(prefix + name, inp, out)

    q = linear('q_proj', x, heads * hd, cfg.attention_bias, ('embed', 'heads'))
    k = linear('k_proj', x, kv_heads * hd, cfg.attention_bias, ('embed', 'kv'))
    v = linear('v_proj', x, kv_heads * hd, cfg.attention_bias, ('embed', 'kv'))
    q = q.reshape(batch, length, heads, hd)
    k = k.reshape(batch, length, kv_heads, hd)
    v = v.reshape(batch, length, kv_heads, hd)
    inv_freq = rope_inverse_frequencies(cfg)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    sliding = cfg.layer_types[self.layer_index] == 'sliding_attention'
    if layer_cache is None:
      keys, values = k, v
      allowed = mask_info['allowed']  # [B, T, T]
      key_positions = positions
    else:
      index = mask_info['index']
      keys = jax.lax.dynamic_update_slice(
        layer_cache['k'], k.astype(layer_cache['k'].dtype), (0, index, 0, 0)
      )
      values = jax.lax.dynamic_update_slice(
        layer_cache['v'], v.astype(layer_cache['v'].dtype), (0, index, 0, 0)
      )
      layer_cache = {'k': keys, 'v': values}
      allowed = mask_info['allowed']  # [B, T, S]
      key_positions = mask_info['key_positions']
    if sliding:
      window = (positions[:, :, None] - key_positions[:, None, :]) < cfg.sliding_window
      allowed = allowed & window

    scale = (cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else hd) ** -0.5
    groups = heads // kv_heads
    q = q.reshape(batch, length, kv_heads, groups, hd)
    # Query head h = kv * groups + g reads kv head `kv` (HF repeat_kv order).
    scores = (
      jnp.einsum(
        'btkgd,bskd->bkgts', q.astype(dtype), keys.astype(dtype), preferred_element_type=jnp.float32
      )
      * scale
    )
    scores = _softcap(scores, cfg.attn_logit_softcapping)
    scores = jnp.where(allowed[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(
      'bkgts,bskd->btkgd',
      probs.astype(dtype),
      values.astype(dtype),
      preferred_element_type=jnp.float32,
    ).astype(dtype)
    out = constrain(out.reshape(batch, length, heads * hd), ('batch', 'length', 'heads'))
    return linear('o_proj', out, cfg.hidden_size, False, ('heads', 'embed')), layer_cache


class MLP(nn.Module):
  """Gated MLP ``down(act(gate(x)) * up(x))``: [B, T, d] -> [B, T, d]."""

  config: ModelConfig
  layer_index: int

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, captures: _Captures) -> Array:
    cfg = self.config
    dtype = _compute_dtype(cfg)
    prefix = f'layers_{self.layer_index}/mlp/'

    def linear(name, inp, features, axes):
      out = Dense(features, axes, dtype=dtype, name=name)(inp, deterministic)
      out = constrain(out, ('batch', 'length', axes[1]))
      return captures.record(prefix + name, inp, out)

    gate = linear('gate_proj', x, cfg.intermediate_size, ('embed', 'mlp'))
    up = linear('up_proj', x, cfg.intermediate_size, ('embed', 'mlp'))
    hidden = _activation(cfg.hidden_act, gate.astype(jnp.float32)).astype(dtype) * up
    hidden = constrain(hidden, ('batch', 'length', 'mlp'))
    return linear('down_proj', hidden, cfg.hidden_size, ('mlp', 'embed'))


class DecoderLayer(nn.Module):
  """One pre-norm block (see module docstring). Returns (x', captures dict, layer cache)."""

  config: ModelConfig
  layer_index: int
  capture: tuple[str, ...] = ()
  # ((site, fn), ...) for this layer's module outputs (see ``Intervention``).
  interventions: tuple = ()

  @nn.compact
  def __call__(
    self,
    x: Array,
    positions: Array,
    mask_info: Mapping[str, Array],
    deterministic: bool,
    layer_cache: Optional[dict],
  ):
    cfg = self.config
    captures = _Captures(self.capture, dict(self.interventions))
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one, name=name)
    attn_out, layer_cache = Attention(cfg, self.layer_index, name='self_attn')(
      norm('input_layernorm')(x), positions, mask_info, deterministic, captures, layer_cache
    )
    if cfg.sandwich_norms:
      h = x + norm('post_attention_layernorm')(attn_out)
      mlp_out = MLP(cfg, self.layer_index, name='mlp')(
        norm('pre_feedforward_layernorm')(h), deterministic, captures
      )
      y = h + norm('post_feedforward_layernorm')(mlp_out)
    else:
      h = x + attn_out
      y = h + MLP(cfg, self.layer_index, name='mlp')(
        norm('post_attention_layernorm')(h), deterministic, captures
      )
    return constrain(y, ('batch', 'length', 'embed')), captures.store, layer_cache


class _LayerBlock(nn.Module):
  """The body of the layer scan: ``period`` consecutive layers (``block_j`` is layer kind ``j``).

  ``(x, xs) -> (x', ys)`` in ``nn.scan``'s carry/scanned form: ``x`` the residual stream (carry),
  the broadcast positions and mask, and this step's slice of the KV cache (``None`` when not
  decoding) in and out.
  """

  config: ModelConfig
  period: int
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, positions, mask_info, block_cache):
    out_cache = [] if block_cache is not None else None
    for j in range(self.period):
      layer_cache = None if block_cache is None else block_cache[j]
      # layer_index j: layer kinds repeat with the period (ModelConfig.scan_plan), so j gives
      # this block member's kind (sliding or full attention).
      x, _, layer_cache = DecoderLayer(self.config, j, name=f'block_{j}')(
        x, positions, mask_info, self.deterministic, layer_cache
      )
      if out_cache is not None:
        out_cache.append(layer_cache)
    return x, out_cache


def _scanned_layers(cfg: ModelConfig, period: int, deterministic: bool) -> nn.Module:
  """``nn.scan`` of :class:`_LayerBlock` over ``L / period`` steps, params stacked on a leading
  axis named ``'layers'`` (``peft_jax.common.stacking``'s form), remat inside the scan body."""
  block = _LayerBlock
  if cfg.remat:
    block = nn.remat(block, prevent_cse=False)
  scanned = nn.scan(
    block,
    variable_axes={'params': 0},
    split_rngs={'params': True, 'dropout': True},
    in_axes=(nn.broadcast, nn.broadcast, 0),
    length=cfg.num_layers // period,
    metadata_params={nn.PARTITION_NAME: 'layers'},
  )
  return scanned(cfg, period, deterministic, name='layers')


def _stack_cache(layers: Sequence[dict], period: int) -> list:
  """Per-layer KV caches -> per block member, stacked over the scan steps."""
  return [jax.tree.map(lambda *xs: jnp.stack(xs), *layers[j::period]) for j in range(period)]


def _unstack_cache(blocks: list, period: int) -> list:
  steps = jax.tree.leaves(blocks[0])[0].shape[0]
  return [
    jax.tree.map(lambda x, i=i: x[i // period], blocks[i % period]) for i in range(steps * period)
  ]


class Decoder(nn.Module):
  """Causal LM: ``tokens [B, T] -> logits [B, T, V]`` float32 (see docs/CONVENTIONS.md).

  Call: ``model.apply({'params': p}, tokens, positions=None, segment_ids=None,
  attention_mask=None, capture=(), deterministic=True, cache=None, rngs=...)``.

  * ``attention_mask [B, T]``: 1 = real token; ``segment_ids [B, T]``: packed documents
    (0 = padding), no attention across segments; key ``s`` is visible to query ``t`` iff
    ``s <= t``, both in the same non-zero segment (or both real tokens), and, on sliding layers,
    ``pos[t] - pos[s] < W``.
  * ``capture``: names to record ('residual', a linear name such as 'q_proj', a full path such as
    'layers_0/self_attn/q_proj', or 'all'); returns ``(logits, captures)`` then.
  * ``interventions``: ``{site: fn}`` with sites ``'layers_{i}/residual'`` (the stream after layer
    ``i``) or ``'<module path>/out'`` (e.g. ``'layers_1/mlp/down_proj/out'``); ``fn(y, x)``
    returns the activation that replaces ``y`` from there on (``x``: the layer's or module's
    input). Traced like the rest of the forward, so it runs under ``jit``; captures record the
    values before the intervention. Used to splice SAE reconstructions in (``peft_jax.sae``).
  * ``cache``: KV cache from :func:`init_cache` for decoding; returns ``(logits, new_cache)``.
    This call's tokens go to cache slots ``[index, index + T)``; ``attention_mask`` then marks
    which of them are real. Positions must be given.
  """

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    positions: Optional[Array] = None,
    segment_ids: Optional[Array] = None,
    attention_mask: Optional[Array] = None,
    capture: Sequence[str] = (),
    deterministic: bool = True,
    cache: Optional[dict] = None,
    interventions: Optional[Mapping[str, Intervention]] = None,
  ):
    cfg = self.config
    dtype = _compute_dtype(cfg)
    capture = tuple([capture] if isinstance(capture, str) else capture)
    _validate_capture(capture, cfg)
    interventions = dict(interventions or {})
    _validate_interventions(interventions, cfg)
    batch, length = tokens.shape
    if positions is None:
      if cache is not None:
        raise ValueError('Decoder: positions must be given when decoding with a cache')
      positions = default_positions(attention_mask, segment_ids, (batch, length))
    positions = positions.astype(jnp.int32)

    mask_info, new_cache = _mask_info(tokens, positions, segment_ids, attention_mask, cache)

    table = Embedding(cfg.vocab_size, cfg.hidden_size, name='embed_tokens')()
    x = jnp.take(table, tokens, axis=0).astype(dtype)
    if cfg.scale_embeddings:
      # HF casts sqrt(d) to the compute dtype first (bf16 rounds sqrt(3072) to 55.5).
      x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
    x = constrain(x, ('batch', 'length', 'embed'))

    period = cfg.scan_period
    captured: dict[str, Array] = {}
    if period:
      if capture or interventions:
        raise ValueError(
          'Decoder: capture and interventions need the unrolled layers; this config scans them '
          '(scan_layers). Use peft_jax.models.unrolled(config, params) for the unrolled model '
          'and params'
        )
      x, block_caches = _scanned_layers(cfg, period, deterministic)(
        x, positions, mask_info, None if cache is None else _stack_cache(cache['layers'], period)
      )
      if cache is not None:
        new_cache['layers'] = _unstack_cache(block_caches, period)
    else:
      layer_cls = nn.remat(DecoderLayer, static_argnums=(4,)) if cfg.remat else DecoderLayer
      want_residual = any(c in ('residual', 'all') for c in capture)
      for i in range(cfg.num_layers):
        layer_cache = None if cache is None else cache['layers'][i]
        prefix = f'layers_{i}/'
        layer_interventions = tuple(
          (site, fn)
          for site, fn in sorted(interventions.items())
          if site.startswith(prefix) and site.endswith('/out')
        )
        x_in = x
        x, layer_captures, layer_cache = layer_cls(
          cfg, i, capture, layer_interventions, name=f'layers_{i}'
        )(x, positions, mask_info, deterministic, layer_cache)
        captured.update(layer_captures)
        if want_residual:
          captured[f'layers_{i}/residual'] = x
        if prefix + 'residual' in interventions:
          x = _intervene(prefix + 'residual', interventions[prefix + 'residual'], x, x_in)
        if cache is not None:
          new_cache['layers'].append(layer_cache)

    h = RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one, name='norm')(x)
    if cfg.tie_word_embeddings:
      logits = adapters_core.dense_matmul(h, table.T, dtype)
    else:
      logits = Dense(cfg.vocab_size, ('embed', 'vocab'), dtype=dtype, name='lm_head')(
        h, deterministic
      )
      if any(c in ('all', 'lm_head') for c in capture):
        captured['lm_head/in'], captured['lm_head/out'] = h, logits
    logits = constrain(logits, ('batch', 'length', 'vocab'))
    logits = _softcap(logits.astype(jnp.float32), cfg.final_logit_softcapping)
    if cache is not None:
      return logits, new_cache
    if capture:
      return logits, captured
    return logits


def _validate_capture(capture: tuple[str, ...], cfg: ModelConfig):
  valid_paths = []
  for i in range(cfg.num_layers):
    valid_paths += [f'layers_{i}/self_attn/{n}' for n in LINEAR_NAMES[:4]]
    valid_paths += [f'layers_{i}/mlp/{n}' for n in LINEAR_NAMES[4:7]]
  valid_paths.append('lm_head')
  for name in capture:
    if name in ('residual', 'all'):
      continue
    if not any(p == name or p.endswith('/' + name) for p in valid_paths):
      raise ValueError(
        f'capture name {name!r} matches no module; valid: residual, all, '
        f'{", ".join(LINEAR_NAMES)} or a full path such as {valid_paths[0]!r}'
      )


def _validate_interventions(interventions: Mapping[str, Any], cfg: ModelConfig):
  valid = []
  for i in range(cfg.num_layers):
    valid.append(f'layers_{i}/residual')
    valid += [f'layers_{i}/self_attn/{n}/out' for n in LINEAR_NAMES[:4]]
    valid += [f'layers_{i}/mlp/{n}/out' for n in LINEAR_NAMES[4:7]]
  for site, fn in interventions.items():
    if site not in valid:
      raise ValueError(
        f'intervention site {site!r} is not a site of this model; valid: '
        f"'layers_{{i}}/residual' for i < {cfg.num_layers} or a module output such as "
        f'{valid[1]!r}'
      )
    if not callable(fn):
      raise TypeError(f'intervention at {site!r} must be a callable fn(y, x), got {type(fn)}')


def _mask_info(tokens, positions, segment_ids, attention_mask, cache):
  """Boolean visibility ``allowed [B, T, S]`` (and cache bookkeeping when decoding)."""
  batch, length = tokens.shape
  if cache is None:
    if segment_ids is not None:
      seg = segment_ids.astype(jnp.int32)
    elif attention_mask is not None:
      seg = attention_mask.astype(jnp.int32)
    else:
      seg = jnp.ones((batch, length), jnp.int32)
    index = jnp.arange(length)
    causal = index[None, :, None] >= index[None, None, :]
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    return {'allowed': causal & same}, None
  index = cache['index']
  real = (
    jnp.ones((batch, length), jnp.int32)
    if attention_mask is None
    else attention_mask.astype(jnp.int32)
  )
  key_valid = jax.lax.dynamic_update_slice(cache['key_valid'], real.astype(bool), (0, index))
  key_positions = jax.lax.dynamic_update_slice(cache['key_positions'], positions, (0, index))
  slots = cache['key_valid'].shape[1]
  query_slot = index + jnp.arange(length)
  causal = query_slot[None, :, None] >= jnp.arange(slots)[None, None, :]
  allowed = causal & key_valid[:, None, :]
  new_cache = {
    'index': index + length,
    'key_valid': key_valid,
    'key_positions': key_positions,
    'layers': [],
  }
  return {'allowed': allowed, 'index': index, 'key_positions': key_positions}, new_cache


def init_cache(config: ModelConfig, batch: int, max_length: int, dtype: Any = None) -> dict:
  """Empty KV cache for ``max_length`` slots.

  Returns ``{'index': int32 scalar (next free slot), 'key_valid': [B, S] bool,
  'key_positions': [B, S] int32, 'layers': [{'k': [B, S, K, hd], 'v': [B, S, K, hd]}] * L}``.
  """
  dtype = dtype or _compute_dtype(config)
  shape = (batch, max_length, config.num_kv_heads, config.head_dim)
  return {
    'index': jnp.zeros((), jnp.int32),
    'key_valid': jnp.zeros((batch, max_length), bool),
    'key_positions': jnp.zeros((batch, max_length), jnp.int32),
    'layers': [
      {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)} for _ in range(config.num_layers)
    ],
  }


def init_params(config: ModelConfig, key: Array, batch: int = 1, length: int = 8) -> dict:
  """Random params of ``Decoder(config)`` (``{'embed_tokens': ..., 'layers_0': ..., ...}``).

  A config that scans its layers gets the same values as the unrolled one, stacked
  (``peft_jax.common.stacking``), so a seed gives one model whichever way it runs.
  """
  period = config.scan_period
  if period:
    unrolled = _jitted_init(config.replace(scan_layers=False), batch, length)(key)
    return stacking.stack_layers(unrolled, period)
  return _jitted_init(config, batch, length)(key)


def unrolled(config: ModelConfig, params: Mapping[str, Any]) -> tuple[ModelConfig, dict]:
  """The unrolled equivalent ``(config, params)`` of a model (identity when it does not scan):
  what capture, interventions and per-layer analysis need."""
  return config.replace(scan_layers=False), stacking.unstack_layers(params)


def scanned(config: ModelConfig, params: Mapping[str, Any]) -> dict:
  """``params`` in the form ``Decoder(config)`` reads: stacked when the config scans its
  layers, unrolled otherwise (either form may come in)."""
  period = config.scan_period
  if period:
    params = stacking.unstack_layers(params)
    return stacking.stack_layers(params, period)
  return stacking.unstack_layers(params)


@functools.lru_cache(maxsize=32)
def _jitted_init(config: ModelConfig, batch: int, length: int):
  # Jitted (and cached per config): op-by-op initialisation of every layer is slow on CPU.
  # NumPy, not jnp: a first call under a trace (eval_shape) must not cache a tracer.
  tokens = np.zeros((batch, length), np.int32)
  return jax.jit(lambda key: nn.meta.unbox(Decoder(config).init(key, tokens)['params']))


@functools.lru_cache(maxsize=32)
def declared_axes(config: ModelConfig) -> dict:
  """``{'/'-joined param path: logical axis names}`` as the modules declare them at creation."""
  tokens = np.zeros((1, 8), np.int32)
  boxed = jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), tokens)['params'])
  flat = jax.tree_util.tree_flatten_with_path(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )[0]
  out = {}
  for path, leaf in flat:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    if not isinstance(leaf, nn.LogicallyPartitioned):
      raise TypeError(f'decoder param {name} was created without logical axis names')
    out[name] = tuple(leaf.names)
  return out
