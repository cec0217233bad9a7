"""Decoder parity with transformers (PyTorch) and the model-side contracts of CONVENTIONS.md."""

import dataclasses
import functools

import helpers_hf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from peft_jax.adapters.core import Adapted
from peft_jax.models import Decoder, ModelConfig, init_params, param_logical_axes

MODEL_TYPES = helpers_hf.MODEL_TYPES


def _left_padded_batch(seed=0, batch=3, length=12, pad_lengths=(0, 4, 9)):
  return helpers_hf.left_padded_tokens(seed, batch, length, pad_lengths)


@functools.lru_cache(maxsize=None)
def _forward(config):
  model = Decoder(config)
  return jax.jit(lambda p, t, m: model.apply({'params': p}, t, attention_mask=m))


@pytest.mark.parametrize('model_type', MODEL_TYPES)
def test_logits_match_transformers_on_left_padded_batch(tiny_pairs, model_type):
  pair = tiny_pairs[model_type]
  tokens, mask = _left_padded_batch()
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  with torch.no_grad():
    ref = pair.hf_model(
      torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
    ).logits.numpy()
  ours = np.asarray(_forward(pair.config)(pair.params, tokens, mask))
  assert ours.dtype == np.float32 and ours.shape == ref.shape
  real = mask == 1
  max_err = np.abs(ours - ref)[real].max()
  assert max_err < 1e-4, (model_type, max_err)
  assert np.abs(ref[real]).max() > 1.0  # logits are not trivially small


def test_llama3_rope_scaling_changes_the_model(tiny_pairs):
  """The llama3 variant really uses its scaled frequencies (else the two parities prove less)."""
  scaled = tiny_pairs['llama3']
  tokens, mask = _left_padded_batch(length=16, pad_lengths=(0, 0, 0))
  with_scaling = np.asarray(_forward(scaled.config)(scaled.params, tokens, mask))
  unscaled_config = dataclasses.replace(scaled.config, rope_scaling=None, rope_theta=500000.0)
  without = np.asarray(_forward(unscaled_config)(scaled.params, tokens, mask))
  assert np.abs(with_scaling - without).max() > 1e-3


@pytest.mark.parametrize('model_type', ['mistral', 'gemma2'])
def test_packed_segments_equal_documents_alone(tiny_pairs, model_type):
  """Two packed documents (+ padding) give each document's own logits; sliding window included."""
  pair = tiny_pairs[model_type]
  apply = jax.jit(pair.model.apply)
  rng = np.random.default_rng(3)
  doc_a, doc_b = rng.integers(3, 128, 5), rng.integers(3, 128, 7)
  packed = np.concatenate([doc_a, doc_b, [0, 0]])[None]
  segments = np.array([[1] * 5 + [2] * 7 + [0, 0]])
  logits = np.asarray(apply({'params': pair.params}, packed, segment_ids=segments))
  alone_a = np.asarray(apply({'params': pair.params}, doc_a[None]))
  alone_b = np.asarray(apply({'params': pair.params}, doc_b[None]))
  np.testing.assert_allclose(logits[0, :5], alone_a[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits[0, 5:12], alone_b[0], atol=1e-5, rtol=0)


def test_capture_shapes_and_final_norm(tiny_pairs):
  pair = tiny_pairs['llama']
  cfg = pair.config
  tokens, mask = _left_padded_batch()
  apply = jax.jit(pair.model.apply, static_argnames=('capture',))
  logits, captures = apply(
    {'params': pair.params},
    tokens,
    attention_mask=mask,
    capture=('residual', 'q_proj', 'layers_1/mlp/down_proj'),
  )
  batch, length = tokens.shape
  expected_keys = {f'layers_{i}/residual' for i in range(cfg.num_layers)}
  expected_keys |= {
    f'layers_{i}/self_attn/q_proj/{io}' for i in range(cfg.num_layers) for io in ('in', 'out')
  }
  expected_keys |= {'layers_1/mlp/down_proj/in', 'layers_1/mlp/down_proj/out'}
  assert set(captures) == expected_keys
  d, hq = cfg.hidden_size, cfg.num_heads * cfg.head_dim
  assert captures['layers_0/residual'].shape == (batch, length, d)
  assert captures['layers_0/self_attn/q_proj/in'].shape == (batch, length, d)
  assert captures['layers_0/self_attn/q_proj/out'].shape == (batch, length, hq)
  assert captures['layers_1/mlp/down_proj/in'].shape == (batch, length, cfg.intermediate_size)
  q_in = np.asarray(captures['layers_1/self_attn/q_proj/in'], np.float64)
  kernel = np.asarray(pair.params['layers_1']['self_attn']['q_proj']['kernel'], np.float64)
  np.testing.assert_allclose(captures['layers_1/self_attn/q_proj/out'], q_in @ kernel, atol=1e-5)
  # The last residual, RMS-normalised (float64, from the definition), times lm_head = logits.
  residual = np.asarray(captures[f'layers_{cfg.num_layers - 1}/residual'], np.float64)
  normed = residual / np.sqrt(np.mean(residual**2, -1, keepdims=True) + cfg.rms_norm_eps)
  normed = normed * np.asarray(pair.params['norm']['scale'], np.float64)
  expected = normed @ np.asarray(pair.params['lm_head']['kernel'], np.float64)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="'qproj'.*q_proj"):
    apply({'params': pair.params}, tokens, capture=('qproj',))


@dataclasses.dataclass(frozen=True)
class _ToyLowRank:
  """A stand-in adapter method for the dispatch test: y = x W0 + dropout(x) A B."""

  name: str = 'toy_low_rank'
  rate: float = 0.5

  def apply(self, node, x, *, dropout_rng=None, dtype=None):
    dtype = dtype or x.dtype
    base = x @ node.base.astype(dtype)
    if dropout_rng is not None:
      keep = jax.random.bernoulli(dropout_rng, 1 - self.rate, x.shape)
      x = jnp.where(keep, x / (1 - self.rate), 0.0)
    return base + (x @ node.params['a']) @ node.params['b']

  def merge(self, node):
    return node.base + node.params['a'] @ node.params['b']


@dataclasses.dataclass(frozen=True)
class _DeclaresAxes(_ToyLowRank):
  def param_axes(self, node, in_axis, out_axis):
    del node
    return {'lora_a': (in_axis, out_axis, 'declared')}, {}


def _adapt(params, key):
  """Replaces every q_proj/down_proj kernel by a _ToyLowRank node with random A, B."""
  params = jax.tree.map(lambda x: x, params)
  for i, name in enumerate(['layers_0', 'layers_1']):
    for block, proj in (('self_attn', 'q_proj'), ('mlp', 'down_proj')):
      w0 = params[name][block][proj]['kernel']
      ka, kb = jax.random.split(jax.random.fold_in(key, 2 * i + (proj == 'q_proj')))
      a = 0.3 * jax.random.normal(ka, (w0.shape[0], 3))
      b = 0.3 * jax.random.normal(kb, (3, w0.shape[1]))
      params[name][block][proj]['kernel'] = Adapted(w0, {'a': a, 'b': b}, {}, _ToyLowRank())
  return params


def test_adapted_kernels_pass_through_and_get_dropout_rng(tiny_pairs):
  pair = tiny_pairs['qwen2']
  adapted = _adapt(pair.params, jax.random.key(1))
  merged = jax.tree.map(
    lambda n: n.method.merge(n) if isinstance(n, Adapted) else n,
    adapted,
    is_leaf=lambda n: isinstance(n, Adapted),
  )
  tokens, mask = _left_padded_batch()
  apply = jax.jit(pair.model.apply, static_argnames=('deterministic',))
  out_adapted = apply({'params': adapted}, tokens, attention_mask=mask)
  out_merged = apply({'params': merged}, tokens, attention_mask=mask)
  out_plain = apply({'params': pair.params}, tokens, attention_mask=mask)
  real = mask == 1
  assert np.abs(np.asarray(out_adapted - out_plain))[real].max() > 1e-2
  np.testing.assert_allclose(np.asarray(out_adapted)[real], np.asarray(out_merged)[real], atol=1e-4)
  # deterministic=False hands each linear a 'dropout' key: reproducible per key, differs by key.
  run = lambda k: np.asarray(
    apply(
      {'params': adapted}, tokens, attention_mask=mask, deterministic=False, rngs={'dropout': k}
    )
  )
  first, again, other = run(jax.random.key(5)), run(jax.random.key(5)), run(jax.random.key(6))
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other)[real].max() > 1e-3
  # Plain kernels take no dropout rng: training mode without adapters needs no 'dropout' key.
  np.testing.assert_array_equal(
    apply({'params': pair.params}, tokens, attention_mask=mask, deterministic=False), out_plain
  )
  # Gradients flow to the adapter factors only through the efficient forward.
  grads = jax.grad(lambda p: apply({'params': p}, tokens, attention_mask=mask).sum())(adapted)
  g = grads['layers_0']['self_attn']['q_proj']['kernel']
  assert isinstance(g, Adapted) and np.abs(np.asarray(g.params['a'])).max() > 0


def test_remat_gives_same_logits_and_grads(tiny_pairs):
  pair = tiny_pairs['gemma2']
  tokens, mask = _left_padded_batch()
  remat_model = Decoder(dataclasses.replace(pair.config, remat=True))

  def loss(model, params):
    logits = model.apply({'params': params}, tokens, attention_mask=mask)
    return jnp.sum(jnp.where(mask[..., None] == 1, logits, 0.0) ** 2) / logits.size

  value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, pair.model)))(pair.params)
  value_r, grads_r = jax.jit(jax.value_and_grad(functools.partial(loss, remat_model)))(pair.params)
  np.testing.assert_allclose(value, value_r, rtol=1e-6)
  for g, gr in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    # Recomputation reorders float32 sums: compare against each gradient's own scale.
    scale = np.abs(np.asarray(g)).max()
    np.testing.assert_allclose(g, gr, atol=1e-5 * scale, rtol=0)


def test_bfloat16_compute_tracks_float32(tiny_pairs):
  """bf16 compute (f32 params, f32 accumulation) stays within bf16 rounding of the f32 logits."""
  pair = tiny_pairs['llama']
  tokens, mask = _left_padded_batch()
  f32 = np.asarray(_forward(pair.config)(pair.params, tokens, mask))
  bf16 = _forward(dataclasses.replace(pair.config, dtype='bfloat16'))(pair.params, tokens, mask)
  assert bf16.dtype == jnp.float32
  real = mask == 1
  # bf16 has an 8-bit mantissa (relative step 2^-8 ≈ 0.4%); through 2 layers a few steps of
  # the logit scale is the expected error.
  rel = np.abs(np.asarray(bf16) - f32)[real].max() / np.abs(f32[real]).max()
  assert rel < 0.05, rel


def test_init_params_names_and_shapes():
  cfg = ModelConfig(
    vocab_size=50,
    hidden_size=16,
    intermediate_size=24,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    attention_bias=True,
    model_type='qwen2',
  )
  params = init_params(cfg, jax.random.key(0))
  assert set(params) == {'embed_tokens', 'layers_0', 'layers_1', 'norm', 'lm_head'}
  layer = params['layers_0']
  assert params['embed_tokens']['embedding'].shape == (50, 16)
  assert layer['self_attn']['q_proj']['kernel'].shape == (16, 32)
  assert layer['self_attn']['q_proj']['bias'].shape == (32,)
  assert layer['self_attn']['k_proj']['kernel'].shape == (16, 16)
  assert layer['self_attn']['o_proj']['kernel'].shape == (32, 16)
  assert 'bias' not in layer['self_attn']['o_proj']
  assert layer['mlp']['down_proj']['kernel'].shape == (24, 16)
  assert layer['input_layernorm']['scale'].shape == (16,)
  assert params['lm_head']['kernel'].shape == (16, 50)
  tied = init_params(dataclasses.replace(cfg, tie_word_embeddings=True), jax.random.key(0))
  assert 'lm_head' not in tied


def test_param_logical_axes_plain_and_adapted(tiny_pairs):
  pair = tiny_pairs['qwen2']
  axes = param_logical_axes(pair.params, pair.model.config)
  assert axes['embed_tokens']['embedding'] == ('vocab', 'embed')
  attn = axes['layers_0']['self_attn']
  assert attn['q_proj'] == {'kernel': ('embed', 'heads'), 'bias': ('heads',)}
  assert attn['k_proj']['kernel'] == ('embed', 'kv') and attn['k_proj']['bias'] == ('kv',)
  assert attn['o_proj']['kernel'] == ('heads', 'embed')
  assert axes['layers_1']['mlp']['down_proj']['kernel'] == ('mlp', 'embed')
  assert axes['layers_0']['input_layernorm']['scale'] == ('norm',)
  assert axes['norm']['scale'] == ('norm',)
  w0 = pair.params['layers_0']['mlp']['up_proj']['kernel']  # [64, 96]
  d_in, d_out = w0.shape
  node = Adapted(
    w0,
    {
      'lora_a': jnp.zeros((d_in, 4)),
      'lora_b': jnp.zeros((4, d_out)),
      'magnitude': jnp.zeros((d_out,)),
      'gate': jnp.zeros((4,)),
    },
    {'blocks': jnp.zeros((8, 12, 12))},
    _ToyLowRank(),
  )
  params = jax.tree.map(lambda x: x, pair.params)
  params['layers_0']['mlp']['up_proj']['kernel'] = node
  got = param_logical_axes(params, pair.model.config)['layers_0']['mlp']['up_proj']['kernel']
  assert isinstance(got, Adapted) and got.method == node.method
  assert got.base == ('embed', 'mlp')
  assert got.params == {
    'lora_a': ('embed', 'rank'),
    'lora_b': ('rank', 'mlp'),
    'magnitude': ('mlp',),
    'gate': ('rank',),
  }
  assert got.frozen == {'blocks': ('blocks', None, None)}
  # A method that declares its own layout (param_axes) is asked instead of the shape rule.
  declared = Adapted(w0, {'lora_a': jnp.zeros((d_in, 4))}, {}, _DeclaresAxes())
  params_declared = jax.tree.map(lambda x: x, pair.params)
  params_declared['layers_0']['mlp']['up_proj']['kernel'] = declared
  got_declared = param_logical_axes(params_declared, pair.model.config)['layers_0']['mlp'][
    'up_proj'
  ]['kernel']
  assert got_declared.params == {'lora_a': ('embed', 'mlp', 'declared')}
  # Abstract params (eval_shape) work too, so shardings can be planned before allocation.
  abstract = jax.eval_shape(lambda: params)
  assert (
    param_logical_axes(abstract, pair.model.config)['layers_0']['mlp']['up_proj']['kernel'] == got
  )


def test_logical_axes_are_declared_at_creation(tiny_pairs):
  """Axes come from the modules' declarations; a parameter the decoder lacks is an error."""
  pair = tiny_pairs['llama']
  boxed = jax.eval_shape(
    lambda: Decoder(pair.model.config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))[
      'params'
    ]
  )
  assert boxed['layers_0']['self_attn']['q_proj']['kernel'].names == ('embed', 'heads')
  assert boxed['layers_0']['mlp']['down_proj']['kernel'].names == ('mlp', 'embed')
  params = jax.tree.map(lambda x: x, pair.params)
  params['layers_0']['mlp']['extra'] = {'kernel': jnp.zeros((4, 4))}
  with pytest.raises(KeyError, match="'layers_0/mlp/extra/kernel' is not a parameter"):
    param_logical_axes(params, pair.model.config)


def test_config_validation_names_the_field():
  base = dict(
    vocab_size=10,
    hidden_size=8,
    intermediate_size=8,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=2,
  )
  with pytest.raises(ValueError, match='num_kv_heads=3'):
    ModelConfig(**dict(base, num_kv_heads=3))
  with pytest.raises(ValueError, match="model_type='gpt2'.*llama"):
    ModelConfig(**dict(base, model_type='gpt2'))
  with pytest.raises(ValueError, match='layer_types has 1 entries'):
    ModelConfig(**dict(base, layer_types=('full_attention',)))
  with pytest.raises(ValueError, match="rope_type='yarn'"):
    ModelConfig(**dict(base, rope_scaling=(('rope_type', 'yarn'), ('factor', 2.0))))


def test_qwen2_sliding_window_layers_match_transformers(tmp_path):
  """Qwen2's use_sliding_window + max_window_layers: layers >= max_window_layers slide."""
  from peft_jax import hub  # pylint: disable=g-import-not-at-top

  hf_model = helpers_hf.tiny_hf_model(
    'qwen2', seed=4, use_sliding_window=True, sliding_window=3, max_window_layers=1
  )
  hf_model.save_pretrained(tmp_path / 'qwen2_sliding')
  model, params, _ = hub.load_pretrained(tmp_path / 'qwen2_sliding')
  assert model.config.layer_types == ('full_attention', 'sliding_attention')
  tokens, mask = _left_padded_batch(seed=5)
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  with torch.no_grad():
    ref = hf_model(
      torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
    ).logits.numpy()
  ours = np.asarray(_forward(model.config)(params, tokens, mask))
  assert np.abs(ours - ref)[mask == 1].max() < 1e-4


def test_init_params_first_called_under_a_trace_caches_no_tracer():
  """``init_params`` caches its jitted initialiser per config; a first call inside
  ``jax.eval_shape`` (the planner, sharding tests) must not leave a tracer in that cache."""
  config = ModelConfig(
    vocab_size=61,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
  )
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  params = init_params(config, jax.random.PRNGKey(0))  # leaked a tracer before the fix
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
    lambda x: (x.shape, x.dtype), shapes
  )
