"""One linen encoder for BERT, RoBERTa and MiniLM (BERT-architecture), switched by ``EncoderConfig``.

Embeddings and layer ``i`` (post-LN, as in the original BERT)::

  e = LN_emb(word[tokens] + position[positions] + token_type[token_type_ids])
  h = LN_attn(x + dense(Attn(x)))                     # layers_{i}/attention/{self,output}
  y = LN_out(h + out_dense(act(intermediate(h))))     # layers_{i}/{intermediate,output}

``Attn`` is multi-head self-attention with biases on q/k/v; every key marked 0 in
``attention_mask`` is hidden from every query (padding queries still see the real keys, as in
Hugging Face, so their hidden states match too). Positions are absolute: BERT counts
``0..T-1``; RoBERTa counts real tokens from ``pad_token_id + 1`` and gives padding
``pad_token_id`` (Hugging Face's ``create_position_ids_from_input_ids``).

Outputs: the last hidden states, their mask-aware mean (the sentence embedding of
sentence-transformers' mean pooling), the BERT pooler (``tanh(dense(h[:, 0]))``) when the
checkpoint has one, and the logits of a classification / regression head when
``num_labels > 0`` (see ``HEAD_TYPES``; docs/ENCODERS.md).

Every linear layer (heads included) goes through :func:`peft_jax.adapters.matmul` and every other
parameter through :func:`peft_jax.adapters.weight_of`, exactly as in the decoder, so each adapter
method, ``Full`` and the geometry metrics apply unchanged. Parameter names follow
docs/CONVENTIONS.md ("Parameter tree of the encoder"). There is no dropout on activations
(evaluation semantics; adapters keep their own input dropout).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models.decoder import _MASK_VALUE, Axes, Dense, _activation, _Captures, _weight

Array = jax.Array

ENCODER_MODEL_TYPES = ('bert', 'roberta')
ENCODER_ACTIVATIONS = ('gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu', 'silu')
# 'bert': classifier(pooler(h[:, 0])) (BertForSequenceClassification); 'roberta':
# classifier.out_proj(tanh(classifier.dense(h[:, 0]))) (RobertaForSequenceClassification);
# 'mean': classifier(mean-pooled h) (a linear probe on the sentence embedding).
HEAD_TYPES = ('bert', 'roberta', 'mean')
PROBLEM_TYPES = ('single_label_classification', 'regression')
ENCODER_LINEAR_NAMES = ('query', 'key', 'value', 'attention_output', 'intermediate', 'output')


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Hyper-parameters of :class:`Encoder` (hashable: static under jit).

  Attributes:
    vocab_size: number of token ids V.
    hidden_size: width d (= heads * head_dim).
    intermediate_size: feed-forward width F.
    num_layers: number of layers L.
    num_heads: attention heads H (``d % H == 0``).
    max_position_embeddings: rows of the position table P.
    type_vocab_size: rows of the token-type table (BERT 2, RoBERTa 1).
    layer_norm_eps: ε of every LayerNorm, ``(x - μ) / sqrt(σ² + ε) · w + b``.
    hidden_act: feed-forward activation (ENCODER_ACTIVATIONS; 'gelu' is the exact erf GELU).
    model_type: 'bert' (positions ``0..T-1``) or 'roberta' (positions from ``pad_token_id + 1``
      over non-padding tokens).
    pad_token_id: padding id (RoBERTa's position offset).
    pooler: the model has BERT's pooler ``pooler/dense`` (``tanh(dense(h[:, 0]))``).
    num_labels: outputs of the head (0: no head; 1 with 'regression').
    head_type: one of HEAD_TYPES ('bert' needs ``pooler``).
    problem_type: 'single_label_classification' (cross-entropy) or 'regression' (MSE).
    dtype: compute dtype name, 'float32' or 'bfloat16' (LayerNorm and softmax in float32).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = 'gelu'
  model_type: str = 'bert'
  pad_token_id: int = 0
  pooler: bool = True
  num_labels: int = 0
  head_type: str = 'bert'
  problem_type: str = 'single_label_classification'
  dtype: str = 'float32'

  def __post_init__(self):
    if self.model_type not in ENCODER_MODEL_TYPES:
      raise ValueError(
        f'EncoderConfig.model_type={self.model_type!r}; supported: {ENCODER_MODEL_TYPES}'
      )
    for name in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_layers', 'num_heads'):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f'EncoderConfig.{name} must be positive, got {getattr(self, name)}')
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f'EncoderConfig.hidden_size={self.hidden_size} is not a multiple of '
        f'num_heads={self.num_heads}'
      )
    if self.hidden_act not in ENCODER_ACTIVATIONS:
      raise ValueError(
        f'EncoderConfig.hidden_act={self.hidden_act!r}; supported: {ENCODER_ACTIVATIONS}'
      )
    if self.head_type not in HEAD_TYPES:
      raise ValueError(f'EncoderConfig.head_type={self.head_type!r}; valid: {HEAD_TYPES}')
    if self.problem_type not in PROBLEM_TYPES:
      raise ValueError(f'EncoderConfig.problem_type={self.problem_type!r}; valid: {PROBLEM_TYPES}')
    if self.num_labels < 0:
      raise ValueError(f'EncoderConfig.num_labels={self.num_labels} must be >= 0')
    if self.num_labels and self.head_type == 'bert' and not self.pooler:
      raise ValueError("EncoderConfig.head_type='bert' classifies the pooler output: pooler=True")
    if self.problem_type == 'regression' and self.num_labels not in (0, 1):
      raise ValueError(f'EncoderConfig: regression has num_labels=1, got {self.num_labels}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"EncoderConfig.dtype={self.dtype!r}; valid: 'float32', 'bfloat16'")
    if self.model_type == 'roberta' and self.max_position_embeddings <= self.pad_token_id + 1:
      raise ValueError(
        f'EncoderConfig: roberta positions start at pad_token_id + 1 = {self.pad_token_id + 1}; '
        f'max_position_embeddings={self.max_position_embeddings} leaves no room'
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_length(self) -> int:
    """The longest sequence the position table covers (RoBERTa loses ``pad_token_id + 1``)."""
    if self.model_type == 'roberta':
      return self.max_position_embeddings - self.pad_token_id - 1
    return self.max_position_embeddings

  def replace(self, **changes: Any) -> 'EncoderConfig':
    return dataclasses.replace(self, **changes)


def _compute_dtype(config: EncoderConfig):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def encoder_positions(config: EncoderConfig, tokens: Array) -> Array:
  """Default absolute positions ``[B, T]`` int32.

  BERT: ``0..T-1``. RoBERTa: ``p = cumsum(m) · m + pad`` with ``m = (tokens != pad)``, so real
  tokens count from ``pad + 1`` and padding sits at ``pad`` (whose table row HF keeps at zero).
  """
  batch, length = tokens.shape
  if config.model_type == 'roberta':
    real = (tokens != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + config.pad_token_id
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def mean_pool(hidden: Array, attention_mask: Optional[Array]) -> Array:
  """Mask-aware mean over tokens: ``Σ_t m_t h_t / max(Σ_t m_t, 1e-9)`` -> ``[B, d]`` float32.

  This is sentence-transformers' mean pooling (its clamp is ``1e-9`` too).
  """
  hidden = hidden.astype(jnp.float32)
  if attention_mask is None:
    return jnp.mean(hidden, axis=1)
  mask = attention_mask.astype(jnp.float32)[..., None]
  return jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """``x / max(||x||_2, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class LayerNorm(nn.Module):
  """``(x - mean) / sqrt(var + ε) · scale + bias`` over the last axis, in float32."""

  eps: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = _weight(self, 'scale', nn.initializers.ones, (d,), ('norm',))
    bias = _weight(self, 'bias', nn.initializers.zeros, (d,), ('norm',))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Table(nn.Module):
  """An embedding table ``[rows, d]`` (float32), read like every other parameter."""

  rows: int
  features: int
  axes: Axes

  @nn.compact
  def __call__(self) -> Array:
    return _weight(
      self, 'embedding', nn.initializers.normal(0.02), (self.rows, self.features), self.axes
    )


class Embeddings(nn.Module):
  """``LayerNorm(word + position + token_type)`` -> ``[B, T, d]``."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, token_type_ids: Array) -> Array:
    cfg = self.config
    d = cfg.hidden_size
    word = Table(cfg.vocab_size, d, ('vocab', 'embed'), name='word_embeddings')()
    position = Table(cfg.max_position_embeddings, d, (None, 'embed'), name='position_embeddings')()
    token_type = Table(cfg.type_vocab_size, d, (None, 'embed'), name='token_type_embeddings')()
    x = (
      jnp.take(word, tokens, axis=0)
      + jnp.take(token_type, token_type_ids, axis=0)
      + jnp.take(position, positions, axis=0)
    )
    return LayerNorm(cfg.layer_norm_eps, name='LayerNorm')(x.astype(jnp.float32))


def _activation_encoder(name: str, x: Array) -> Array:
  if name == 'relu':
    return jax.nn.relu(x)
  return _activation(name, x)


def _linear(name, path, x, features, axes, dtype, deterministic, captures):
  """``Dense(features, name=name)(x)`` with bias, called inside the parent's ``nn.compact`` (so
  the kernel lands at ``<parent>/<name>/kernel``), its input and output recorded under ``path``."""
  y = Dense(features, axes, use_bias=True, dtype=dtype, name=name)(x, deterministic)
  captures.record(path, x, y)
  return y


class SelfAttention(nn.Module):
  """``attention/self``: q/k/v projections and the masked softmax -> context ``[B, T, d]``."""

  config: EncoderConfig
  prefix: str

  @nn.compact
  def __call__(self, x, key_valid, deterministic, captures):
    cfg = self.config
    dtype = _compute_dtype(cfg)
    batch, length, d = x.shape
    heads, hd = cfg.num_heads, cfg.head_dim

    def project(name):
      y = _linear(
        name, self.prefix + name, x, d, ('embed', 'heads'), dtype, deterministic, captures
      )
      return y.reshape(batch, length, heads, hd)

    q, k, v = project('query'), project('key'), project('value')
    scores = jnp.einsum(
      'bthd,bshd->bhts', q.astype(dtype), k.astype(dtype), preferred_element_type=jnp.float32
    ) * jnp.float32(hd**-0.5)
    scores = jnp.where(key_valid[:, None, None, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum(
      'bhts,bshd->bthd', probs.astype(dtype), v.astype(dtype), preferred_element_type=jnp.float32
    )
    return context.astype(dtype).reshape(batch, length, d)


class DenseLayerNorm(nn.Module):
  """``LayerNorm(residual + dense(x))``: HF's ``attention.output`` and ``output`` modules."""

  config: EncoderConfig
  axes: Axes
  prefix: str

  @nn.compact
  def __call__(self, x, residual, deterministic, captures):
    cfg = self.config
    dtype = _compute_dtype(cfg)
    y = _linear(
      'dense', self.prefix + 'dense', x, cfg.hidden_size, self.axes, dtype, deterministic, captures
    )
    return LayerNorm(cfg.layer_norm_eps, name='LayerNorm')(
      residual.astype(jnp.float32) + y.astype(jnp.float32)
    )


class Attention(nn.Module):
  """``attention``: ``self`` then ``output`` (dense, residual, LayerNorm)."""

  config: EncoderConfig
  prefix: str

  @nn.compact
  def __call__(self, x, key_valid, deterministic, captures):
    context = SelfAttention(self.config, self.prefix + 'self/', name='self')(
      x, key_valid, deterministic, captures
    )
    out = DenseLayerNorm(self.config, ('heads', 'embed'), self.prefix + 'output/', name='output')
    return out(context, x, deterministic, captures)


class Intermediate(nn.Module):
  """``intermediate``: ``act(dense(x))`` -> ``[B, T, F]``."""

  config: EncoderConfig
  prefix: str

  @nn.compact
  def __call__(self, x, deterministic, captures):
    cfg = self.config
    dtype = _compute_dtype(cfg)
    y = _linear(
      'dense', self.prefix + 'dense', x, cfg.intermediate_size, ('embed', 'mlp'), dtype,
      deterministic, captures,
    )  # fmt: skip
    return _activation_encoder(cfg.hidden_act, y.astype(jnp.float32)).astype(dtype)


class EncoderLayer(nn.Module):
  """One post-LN block (module docstring). Returns ``(y [B, T, d] float32, captures dict)``."""

  config: EncoderConfig
  layer_index: int
  capture: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x: Array, key_valid: Array, deterministic: bool):
    cfg = self.config
    captures = _Captures(self.capture)
    prefix = f'layers_{self.layer_index}/'
    h = Attention(cfg, prefix + 'attention/', name='attention')(
      x, key_valid, deterministic, captures
    )
    inner = Intermediate(cfg, prefix + 'intermediate/', name='intermediate')(
      h, deterministic, captures
    )
    y = DenseLayerNorm(cfg, ('mlp', 'embed'), prefix + 'output/', name='output')(
      inner, h, deterministic, captures
    )
    return y, captures.store


class Pooler(nn.Module):
  """``pooler``: ``tanh(dense(h[:, 0]))`` -> ``[B, d]``."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, first, deterministic, captures):
    cfg = self.config
    y = _linear(
      'dense', 'pooler/dense', first, cfg.hidden_size, ('embed', 'mlp'), _compute_dtype(cfg),
      deterministic, captures,
    )  # fmt: skip
    return jnp.tanh(y.astype(jnp.float32))


class RobertaHead(nn.Module):
  """``classifier`` of RobertaForSequenceClassification: ``out_proj(tanh(dense(h[:, 0])))``."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, first, deterministic, captures):
    cfg = self.config
    dtype = _compute_dtype(cfg)
    h = _linear(
      'dense', 'classifier/dense', first, cfg.hidden_size, ('embed', 'mlp'), dtype,
      deterministic, captures,
    )  # fmt: skip
    h = jnp.tanh(h.astype(jnp.float32))
    return _linear(
      'out_proj', 'classifier/out_proj', h, cfg.num_labels, ('mlp', None), dtype, deterministic,
      captures,
    )  # fmt: skip


class Encoder(nn.Module):
  """BERT-style encoder: ``tokens [B, T]`` -> outputs dict (see docs/CONVENTIONS.md).

  Call: ``model.apply({'params': p}, tokens, attention_mask=None, token_type_ids=None,
  positions=None, capture=(), deterministic=True, rngs=...)``.

  Returns ``{'hidden': [B, T, d], 'pooled': [B, d] (mask-aware mean), 'pooler_output': [B, d]
  (with a pooler), 'logits': [B, num_labels] (with a head)}``, all float32; with ``capture``
  non-empty, ``(outputs, captures)`` where captures holds ``'layers_{i}/residual'`` (the
  output of layer i) and ``'<linear path>/in'`` / ``'/out'`` for the requested linear layers
  ('query', 'attention/output/dense', a full path such as 'layers_0/attention/self/query', or
  'all').
  """

  config: EncoderConfig

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    attention_mask: Optional[Array] = None,
    token_type_ids: Optional[Array] = None,
    positions: Optional[Array] = None,
    capture: Sequence[str] = (),
    deterministic: bool = True,
  ):
    cfg = self.config
    dtype = _compute_dtype(cfg)
    capture = tuple([capture] if isinstance(capture, str) else capture)
    _validate_capture(capture, cfg)
    tokens = tokens.astype(jnp.int32)
    if positions is None:
      positions = encoder_positions(cfg, tokens)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(tokens)
    if attention_mask is None:
      key_valid = jnp.ones(tokens.shape, bool)
    else:
      key_valid = attention_mask.astype(bool)

    x = Embeddings(cfg, name='embeddings')(
      tokens, positions.astype(jnp.int32), token_type_ids.astype(jnp.int32)
    )
    captured: dict[str, Array] = {}
    want_residual = any(c in ('residual', 'all') for c in capture)
    for i in range(cfg.num_layers):
      x, layer_captures = EncoderLayer(cfg, i, capture, name=f'layers_{i}')(
        x, key_valid, deterministic
      )
      captured.update(layer_captures)
      if want_residual:
        captured[f'layers_{i}/residual'] = x
    hidden = x.astype(jnp.float32)
    outputs = {'hidden': hidden, 'pooled': mean_pool(hidden, attention_mask)}
    first = hidden[:, 0]
    head_captures = _Captures(capture)
    if cfg.pooler:
      outputs['pooler_output'] = Pooler(cfg, name='pooler')(first, deterministic, head_captures)
    if cfg.num_labels:
      if cfg.head_type == 'roberta':
        logits = RobertaHead(cfg, name='classifier')(first, deterministic, head_captures)
      else:
        features = outputs['pooler_output'] if cfg.head_type == 'bert' else outputs['pooled']
        logits = _linear(
          'classifier', 'classifier', features, cfg.num_labels, ('embed', None), dtype,
          deterministic, head_captures,
        )  # fmt: skip
      outputs['logits'] = logits.astype(jnp.float32)
    captured.update(head_captures.store)
    if capture:
      return outputs, captured
    return outputs


def _validate_capture(capture: tuple[str, ...], cfg: EncoderConfig):
  paths = linear_paths(cfg)
  for name in capture:
    if name in ('residual', 'all'):
      continue
    if not any(p == name or p.endswith('/' + name) for p in paths):
      raise ValueError(
        f'capture name {name!r} matches no encoder module; valid: residual, all, query, key, '
        f'value, attention/output/dense, intermediate/dense, output/dense or a full path such '
        f'as {paths[0]!r}'
      )


def linear_paths(cfg: EncoderConfig) -> list[str]:
  """Module paths of the linear layers: ``layers_{i}/attention/self/query`` ..., then the
  pooler's and the head's."""
  names = (
    'attention/self/query',
    'attention/self/key',
    'attention/self/value',
    'attention/output/dense',
    'intermediate/dense',
    'output/dense',
  )
  paths = [f'layers_{i}/{n}' for i in range(cfg.num_layers) for n in names]
  if cfg.pooler:
    paths.append('pooler/dense')
  if cfg.num_labels:
    paths += (
      ['classifier/dense', 'classifier/out_proj'] if cfg.head_type == 'roberta' else ['classifier']
    )
  return paths


def sentence_embeddings(
  model: Encoder, params: Any, tokens: Array, attention_mask: Array, normalize: bool = True
) -> Array:
  """Mean-pooled (and by default L2-normalised) embeddings ``[B, d]`` float32: the sentence
  vectors of sentence-transformers' ``all-MiniLM-L6-v2`` (Transformer -> mean -> Normalize)."""
  pooled = model.apply({'params': params}, tokens, attention_mask=attention_mask)['pooled']
  return l2_normalize(pooled) if normalize else pooled


def init_encoder_params(config: EncoderConfig, key: Array, batch: int = 1, length: int = 8) -> dict:
  """Random params of ``Encoder(config)`` (``{'embeddings': ..., 'layers_0': ..., ...}``)."""
  return _jitted_init(config, batch, min(length, config.max_length))(key)


@functools.lru_cache(maxsize=32)
def _jitted_init(config: EncoderConfig, batch: int, length: int):
  # NumPy, not jnp: a first call under a trace (eval_shape) must not cache a tracer.
  tokens = np.full((batch, length), (config.pad_token_id + 1) % config.vocab_size, np.int32)
  return jax.jit(lambda key: nn.meta.unbox(Encoder(config).init(key, tokens)['params']))


@functools.lru_cache(maxsize=32)
def declared_encoder_axes(config: EncoderConfig) -> dict:
  """``{'/'-joined param path: logical axis names}`` as the encoder's modules declare them."""
  tokens = np.zeros((1, 4), np.int32)
  boxed = jax.eval_shape(lambda: Encoder(config).init(jax.random.key(0), tokens)['params'])
  flat = jax.tree_util.tree_flatten_with_path(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )[0]
  out = {}
  for path, leaf in flat:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    if not isinstance(leaf, nn.LogicallyPartitioned):
      raise TypeError(f'encoder param {name} was created without logical axis names')
    out[name] = tuple(leaf.names)
  return out
