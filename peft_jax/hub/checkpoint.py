"""Hugging Face checkpoints <-> decoder params: config.json + (sharded) safetensors.

Name and layout mapping (HF linear weights are ``[d_out, d_in]``, ours ``[d_in, d_out]``)::

  model.embed_tokens.weight                [V, d]   -> embed_tokens/embedding
  model.layers.{i}.self_attn.q_proj.weight [Hhd, d] -> layers_{i}/self_attn/q_proj/kernel  (.T)
  model.layers.{i}.self_attn.q_proj.bias   [Hhd]    -> layers_{i}/self_attn/q_proj/bias
  model.layers.{i}.<name>layernorm.weight  [d]      -> layers_{i}/<name>layernorm/scale
  model.norm.weight                        [d]      -> norm/scale
  lm_head.weight                           [V, d]   -> lm_head/kernel                     (.T)

Safetensors files are read tensor by tensor through a read-only memory map (the format is an
8-byte little-endian header size, a JSON header ``{name: {dtype, shape, data_offsets}}``, then
the raw bytes), which also covers bfloat16 (numpy has no bf16: ``ml_dtypes.bfloat16``).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from peft_jax.adapters.core import is_adapted
from peft_jax.common import stacking
from peft_jax.common.files import replace_directory, temporary_directory_for
from peft_jax.common.trees import flatten_dict, unflatten_dict
from peft_jax.hub.paths import resolve_path
from peft_jax.hub.tokenizer import load_tokenizer
from peft_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from peft_jax.models.decoder import Decoder, init_params

_SAFETENSORS_DTYPES = {
  'F64': np.dtype(np.float64),
  'F32': np.dtype(np.float32),
  'F16': np.dtype(np.float16),
  'BF16': np.dtype(ml_dtypes.bfloat16),
  'I64': np.dtype(np.int64),
  'I32': np.dtype(np.int32),
  'I16': np.dtype(np.int16),
  'I8': np.dtype(np.int8),
  'U8': np.dtype(np.uint8),
  'BOOL': np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
_ARCHITECTURES = {
  'llama': 'LlamaForCausalLM',
  'mistral': 'MistralForCausalLM',
  'qwen2': 'Qwen2ForCausalLM',
  'gemma2': 'Gemma2ForCausalLM',
}
_DEFAULT_TIED = {'llama': False, 'mistral': False, 'qwen2': False, 'gemma2': True}
# Checkpoint tensors that carry no parameter of ours.
_IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


# ------------------------------------------------------------------------------------------------
# config.json


def config_from_hf_dict(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
  """``ModelConfig`` from a parsed HF ``config.json`` (transformers 4 or 5 rope fields)."""
  model_type = hf.get('model_type')
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(
      f'config.json model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}'
    )
  for key in (
    'vocab_size',
    'hidden_size',
    'intermediate_size',
    'num_hidden_layers',
    'num_attention_heads',
  ):
    if key not in hf:
      raise KeyError(f'config.json lacks required key {key!r}')
  if hf.get('mlp_bias'):
    raise ValueError('config.json mlp_bias=true is not supported by peft_jax.models.Decoder')
  if model_type in ('llama', 'mistral') and hf.get('attention_bias'):
    raise ValueError(
      f'config.json attention_bias=true for {model_type} (bias on o_proj too) is '
      'not supported; only qwen2 q/k/v biases are'
    )
  num_layers = hf['num_hidden_layers']
  heads = hf['num_attention_heads']

  rope = dict(hf.get('rope_parameters') or {})
  legacy_scaling = dict(hf.get('rope_scaling') or {})
  rope_theta = rope.get('rope_theta', hf.get('rope_theta', 10000.0))
  scaling = {k: v for k, v in {**legacy_scaling, **rope}.items() if k != 'rope_theta'}
  if 'type' in scaling and 'rope_type' not in scaling:
    scaling['rope_type'] = scaling.pop('type')
  scaling.pop('type', None)
  if scaling.get('rope_type', 'default') == 'default':
    scaling = None

  sliding_window = hf.get('sliding_window')
  layer_types = hf.get('layer_types')
  if layer_types is None:
    if model_type == 'gemma2':
      layer_types = [
        'sliding_attention' if i % 2 == 0 else 'full_attention' for i in range(num_layers)
      ]
    elif model_type == 'qwen2':
      start = hf.get('max_window_layers', num_layers)
      layer_types = [
        'sliding_attention'
        if hf.get('use_sliding_window') and sliding_window and i >= start
        else 'full_attention'
        for i in range(num_layers)
      ]
    else:
      kind = 'sliding_attention' if sliding_window else 'full_attention'
      layer_types = [kind] * num_layers
  if 'sliding_attention' not in layer_types:
    sliding_window = None
  gemma = model_type == 'gemma2'
  kwargs = dict(
    vocab_size=hf['vocab_size'],
    hidden_size=hf['hidden_size'],
    intermediate_size=hf['intermediate_size'],
    num_layers=num_layers,
    num_heads=heads,
    num_kv_heads=hf.get('num_key_value_heads') or heads,
    head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
    rope_theta=float(rope_theta),
    rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
    rms_norm_eps=hf.get('rms_norm_eps', 1e-6),
    tie_word_embeddings=hf.get('tie_word_embeddings', _DEFAULT_TIED[model_type]),
    attention_bias=model_type == 'qwen2',
    hidden_act=(hf.get('hidden_activation') or hf.get('hidden_act') or 'gelu_pytorch_tanh')
    if gemma
    else hf.get('hidden_act', 'silu'),
    model_type=model_type,
    query_pre_attn_scalar=hf.get('query_pre_attn_scalar') if gemma else None,
    attn_logit_softcapping=hf.get('attn_logit_softcapping') if gemma else None,
    final_logit_softcapping=hf.get('final_logit_softcapping') if gemma else None,
    sliding_window=sliding_window,
    layer_types=tuple(layer_types),
    sandwich_norms=gemma,
    scale_embeddings=gemma,
    norm_plus_one=gemma,
    bos_token_id=hf.get('bos_token_id'),
    eos_token_id=hf.get('eos_token_id'),
    pad_token_id=hf.get('pad_token_id'),
    max_position_embeddings=hf.get('max_position_embeddings', 4096),
  )
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def load_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
  """Reads ``config.json`` of an HF checkpoint dir (or ``'bundled:NAME'``) into a ModelConfig.

  ``overrides`` replace fields (e.g. ``dtype='bfloat16'``, ``remat=True``).
  """
  config_file = resolve_path(path) / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{config_file} not found (an HF checkpoint dir needs config.json)')
  return config_from_hf_dict(read_json(config_file, 'an HF model config object'), **overrides)


def read_json(file: str | os.PathLike, expected: str) -> Any:
  """Parsed JSON of ``file``; a parse error names the file, line and column, what was expected
  and what was found."""
  text = pathlib.Path(file).read_text(errors='replace')
  try:
    value = json.loads(text)
  except ValueError as error:
    raise ValueError(
      f'{file} line {getattr(error, "lineno", "?")} column '
      f'{getattr(error, "colno", "?")}: not valid JSON '
      f'({getattr(error, "msg", error)}); expected {expected}. Found: '
      f'{text[:80]!r}'
    ) from error
  if not isinstance(value, dict):
    raise ValueError(
      f'{file}: expected {expected} (a JSON object), found {type(value).__name__}: {text[:80]!r}'
    )
  return value


def config_to_hf_dict(config: ModelConfig) -> dict[str, Any]:
  """HF ``config.json`` content (transformers 5 field names) for ``config``."""
  rope_parameters = {'rope_theta': config.rope_theta, 'rope_type': 'default'}
  rope_parameters.update(config.rope_scaling_dict)
  hf = dict(
    architectures=[_ARCHITECTURES[config.model_type]],
    model_type=config.model_type,
    vocab_size=config.vocab_size,
    hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    num_key_value_heads=config.num_kv_heads,
    head_dim=config.head_dim,
    rms_norm_eps=config.rms_norm_eps,
    rope_parameters=rope_parameters,
    rope_theta=config.rope_theta,
    tie_word_embeddings=config.tie_word_embeddings,
    max_position_embeddings=config.max_position_embeddings,
    bos_token_id=config.bos_token_id,
    eos_token_id=(
      list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id
    ),
    pad_token_id=config.pad_token_id,
    dtype='float32',
  )
  if config.model_type == 'gemma2':
    hf.update(
      hidden_activation=config.hidden_act,
      hidden_act=config.hidden_act,
      query_pre_attn_scalar=config.query_pre_attn_scalar,
      attn_logit_softcapping=config.attn_logit_softcapping,
      final_logit_softcapping=config.final_logit_softcapping,
      sliding_window=config.sliding_window,
      layer_types=list(config.layer_types),
    )
  else:
    hf['hidden_act'] = config.hidden_act
  if config.model_type == 'mistral':
    if len(set(config.layer_types)) > 1:
      raise ValueError(
        'mistral checkpoints need the same attention kind on every layer; '
        f'layer_types={config.layer_types}'
      )
    hf['sliding_window'] = config.sliding_window
  if config.model_type == 'qwen2':
    sliding = [i for i, t in enumerate(config.layer_types) if t == 'sliding_attention']
    hf.update(
      use_sliding_window=bool(sliding),
      sliding_window=config.sliding_window,
      max_window_layers=sliding[0] if sliding else config.num_layers,
      layer_types=list(config.layer_types),
    )
  if config.model_type == 'llama' and 'sliding_attention' in config.layer_types:
    raise ValueError(
      f'llama checkpoints have no sliding-window attention; layer_types={config.layer_types}'
    )
  return hf


# ------------------------------------------------------------------------------------------------
# safetensors


def _read_header(file: pathlib.Path) -> tuple[dict[str, Any], int]:
  """``(header, data start)`` of a safetensors file, checked against the file's size, so a
  truncated or foreign file is named with what was expected and what was found."""
  size = file.stat().st_size
  layout = (
    'a safetensors file (an 8-byte little-endian header length, a JSON header, then the '
    'tensor data)'
  )
  with open(file, 'rb') as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise ValueError(f'{file}: {size} bytes, too short for {layout}')
    (header_size,) = struct.unpack('<Q', raw)
    if header_size > size - 8:
      raise ValueError(
        f'{file}: its header length field says {header_size} bytes but only '
        f'{size - 8} bytes follow; expected {layout}: the file is truncated or '
        f'not safetensors'
      )
    header_bytes = f.read(header_size)
  try:
    header = json.loads(header_bytes)
  except (ValueError, UnicodeDecodeError) as error:
    raise ValueError(
      f'{file}: the {header_size}-byte header is not valid JSON ({error}); '
      f'expected {layout}. Found: {header_bytes[:60]!r}'
    ) from error
  if not isinstance(header, dict):
    raise ValueError(
      f'{file}: the header is a JSON {type(header).__name__}; expected an object '
      '{tensor name: {dtype, shape, data_offsets}}'
    )
  header.pop('__metadata__', None)
  data_start = 8 + header_size
  data_size = size - data_start
  spans = {}
  for name, entry in header.items():
    try:
      begin, end = (int(v) for v in entry['data_offsets'])
      shape = [int(d) for d in entry['shape']]
      dtype = entry['dtype']
    except (KeyError, TypeError, ValueError) as error:
      raise ValueError(
        f'{file}: header entry {name!r} = {entry!r}; expected '
        '{"dtype", "shape", "data_offsets": [begin, end]}'
      ) from error
    if dtype in _SAFETENSORS_DTYPES:
      needed = int(np.prod(shape, dtype=np.int64)) * _SAFETENSORS_DTYPES[dtype].itemsize
      if end - begin != needed:
        raise ValueError(
          f'{file}: tensor {name!r} of dtype {dtype} and shape {shape} needs '
          f'{needed} bytes but its data_offsets [{begin}, {end}) span '
          f'{end - begin}'
        )
    spans[name] = (begin, end)
  cut = sorted((begin, name) for name, (begin, end) in spans.items() if end > data_size)
  if cut:
    name = cut[0][1]
    begin, end = spans[name]
    expected = data_start + max(end for _, end in spans.values())
    raise ValueError(
      f'{file} is truncated: tensor {name!r} needs bytes [{begin}, {end}) of the '
      f'data section but the file holds only {data_size} bytes of data '
      f'({len(cut)} of {len(spans)} tensors are cut; expected a file of '
      f'{expected} bytes, found {size})'
    )
  return header, data_start


def read_safetensors_header(file: str | os.PathLike) -> tuple[dict[str, Any], int]:
  """``(header without __metadata__, byte offset of the data)`` of a safetensors file, checked
  against the file's size (errors name the file, what was expected and what was found)."""
  return _read_header(pathlib.Path(file))


class _SafetensorsIndex:
  """Tensor name -> (file, header entry) over one file or a sharded index; reads lazily."""

  def __init__(self, directory: pathlib.Path):
    index_file = directory / 'model.safetensors.index.json'
    single_file = directory / 'model.safetensors'
    if index_file.is_file():
      index = read_json(index_file, 'a safetensors index object with a "weight_map"')
      if not isinstance(index.get('weight_map'), dict):
        raise ValueError(
          f'{index_file}: expected a "weight_map" object '
          f'{{tensor name: shard file}}, found keys {sorted(index)}'
        )
      weight_map = index['weight_map']
      files = sorted(set(weight_map.values()))
    elif single_file.is_file():
      files = ['model.safetensors']
    else:
      raise FileNotFoundError(
        f'{directory} holds neither model.safetensors nor model.safetensors.index.json '
        f'(found: {sorted(p.name for p in directory.iterdir())})'
      )
    self.entries: dict[str, tuple[pathlib.Path, dict[str, Any], int]] = {}
    for name in files:
      file = directory / name
      if not file.is_file():
        raise FileNotFoundError(f'shard {file} listed in model.safetensors.index.json is missing')
      header, data_start = _read_header(file)
      for tensor_name, entry in header.items():
        self.entries[tensor_name] = (file, entry, data_start)
    self._maps: dict[pathlib.Path, np.memmap] = {}

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name][1]['shape'])

  def read(self, name: str) -> np.ndarray:
    """The tensor as a read-only numpy view of the memory-mapped file (no copy)."""
    file, entry, data_start = self.entries[name]
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'tensor {name!r} in {file} has unsupported dtype {entry["dtype"]}')
    if file not in self._maps:
      self._maps[file] = np.memmap(file, dtype=np.uint8, mode='r')
    begin, end = entry['data_offsets']
    raw = self._maps[file][data_start + begin : data_start + end]
    return raw.view(_SAFETENSORS_DTYPES[entry['dtype']]).reshape(entry['shape'])


def _write_safetensors(file: pathlib.Path, tensors: dict[str, np.ndarray]):
  header: dict[str, Any] = {'__metadata__': {'format': 'pt'}}
  offset = 0
  for name, array in tensors.items():
    if array.dtype not in _DTYPE_NAMES:
      raise ValueError(f'cannot save tensor {name!r} of dtype {array.dtype}')
    header[name] = {
      'dtype': _DTYPE_NAMES[array.dtype],
      'shape': list(array.shape),
      'data_offsets': [offset, offset + array.nbytes],
    }
    offset += array.nbytes
  header_bytes = json.dumps(header, separators=(',', ':')).encode()
  header_bytes += b' ' * (-len(header_bytes) % 8)  # keep tensor data 8-byte aligned
  with open(file, 'wb') as f:
    f.write(struct.pack('<Q', len(header_bytes)))
    f.write(header_bytes)
    for array in tensors.values():
      f.write(np.ascontiguousarray(array).tobytes())


# ------------------------------------------------------------------------------------------------
# Parameter name mapping


def _hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """Our param path -> (HF tensor name, whether HF stores the transpose)."""
  *modules, leaf = path
  if modules == ['embed_tokens']:
    return 'model.embed_tokens.weight', False
  if modules == ['lm_head']:
    return 'lm_head.weight', True
  hf_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}[leaf]
  hf_modules = [m.replace('layers_', 'layers.') if m.startswith('layers_') else m for m in modules]
  return '.'.join(['model'] + hf_modules + [hf_leaf]), leaf == 'kernel'


def load_params(
  path: str | os.PathLike, config: ModelConfig, dtype: Any = jnp.float32, shardings: Any = None
) -> dict[str, Any]:
  """Reads the safetensors of ``path`` into a params tree for ``Decoder(config)``.

  Each tensor is memory-mapped, transposed to ``[d_in, d_out]`` where needed, cast to ``dtype``
  and put on ``shardings`` (a tree of ``jax.sharding.Sharding`` matching the params, or ``None``
  for the default device), one tensor at a time.
  """
  if config.scan_period:
    # The files hold one tensor per layer: read them unrolled, then stack for the scan.
    unrolled = load_params(path, config.replace(scan_layers=False), dtype=dtype)
    return place_stacked(stacking.stack_layers(unrolled, config.scan_period), shardings)
  directory = resolve_path(path)
  index = _SafetensorsIndex(directory)
  expected = flatten_dict(jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
  sharding_flat = flatten_dict(shardings) if shardings is not None else {}
  used = set()
  flat = {}
  for param_path, spec in expected.items():
    hf_name, transposed = _hf_name(param_path)
    if hf_name not in index.entries:
      raise KeyError(
        f'checkpoint {directory} lacks tensor {hf_name!r} (for param '
        f'{"/".join(param_path)}, expected shape '
        f'{tuple(reversed(spec.shape)) if transposed else tuple(spec.shape)})'
      )
    hf_shape = tuple(reversed(spec.shape)) if transposed else tuple(spec.shape)
    if index.shape(hf_name) != hf_shape:
      raise ValueError(
        f'tensor {hf_name!r} in {directory} has shape {index.shape(hf_name)}, '
        f'expected {hf_shape} for config {config.model_type} (param '
        f'{"/".join(param_path)})'
      )
    array = index.read(hf_name)
    if transposed:
      array = array.T
    array = np.asarray(array, dtype=dtype)
    sharding = sharding_flat.get(param_path)
    flat[param_path] = (
      jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)
    )
    del array
    used.add(hf_name)
  unexpected = [
    n
    for n in index.entries
    if n not in used
    and not n.endswith(_IGNORED_SUFFIXES)
    and not (n == 'lm_head.weight' and config.tie_word_embeddings)
  ]
  if unexpected:
    raise ValueError(
      f'checkpoint {directory} has tensors the {config.model_type} decoder does '
      f'not use: {sorted(unexpected)[:10]}'
    )
  return unflatten_dict(flat)


def place_stacked(params: dict, shardings: Any) -> dict:
  """Stacked params on their ``shardings`` (a matching tree, or ``None``: left as they are)."""
  if shardings is None:
    return params
  return jax.device_put(params, shardings)


def _load_tokenizer_if_present(directory: pathlib.Path):
  if not any(
    (directory / f).is_file()
    for f in ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model')
  ):
    return None
  return load_tokenizer(directory)


def load_hf_directory(
  path: str | os.PathLike, dtype: Any = jnp.float32, shardings: Any = None, **config_overrides: Any
):
  """``(model, params, tokenizer or None)`` of an HF checkpoint directory (or ``'bundled:NAME'``);
  ``peft_jax.hub.load_pretrained`` also takes GGUF files and named bases."""
  directory = resolve_path(path)
  config = load_config(directory, **config_overrides)
  params = load_params(directory, config, dtype=dtype, shardings=shardings)
  return Decoder(config), params, _load_tokenizer_if_present(directory)


def save_pretrained(
  config: ModelConfig, params: Any, path: str | os.PathLike, tokenizer: Any = None
) -> pathlib.Path:
  """Writes ``config.json`` + ``model.safetensors`` (+ tokenizer files) that transformers loads.

  Params must be plain arrays (``peft_jax.merge`` adapted trees first). Files are written into a
  temporary sibling directory that then replaces ``path``, so a crash never leaves half a
  checkpoint.
  """
  # Stacked (scanned) layers are written one tensor per layer, as the unrolled model's.
  params = stacking.unstack_layers(params)
  config = config.replace(scan_layers=False)
  leaves = jax.tree.leaves(params, is_leaf=is_adapted)
  if any(is_adapted(leaf) for leaf in leaves):
    raise ValueError(
      'params still hold Adapted nodes; merge them first (peft_jax.merge(tree)) '
      'or save the adapter with peft_jax.hub.save_adapter'
    )
  expected = flatten_dict(jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
  flat = flatten_dict(params)
  missing = sorted('/'.join(p) for p in expected if p not in flat)
  extra = sorted('/'.join(p) for p in flat if p not in expected)
  if missing or extra:
    raise ValueError(
      f'params do not match the {config.model_type} config: missing {missing[:8]}, '
      f'unexpected {extra[:8]}'
    )
  tensors = {}
  for param_path, spec in expected.items():
    array = np.asarray(jax.device_get(flat[param_path]))
    if array.shape != tuple(spec.shape):
      raise ValueError(
        f'param {"/".join(param_path)} has shape {array.shape}, expected {tuple(spec.shape)}'
      )
    hf_name, transposed = _hf_name(param_path)
    tensors[hf_name] = np.ascontiguousarray(array.T if transposed else array)
  target = pathlib.Path(path)
  staging = pathlib.Path(temporary_directory_for(target))
  try:
    hf_config = config_to_hf_dict(config)
    # transformers loads into the dtype config.json names: record what the tensors hold.
    hf_config['dtype'] = str(tensors['model.embed_tokens.weight'].dtype)
    (staging / 'config.json').write_text(json.dumps(hf_config, indent=2))
    _write_safetensors(staging / 'model.safetensors', tensors)
    if tokenizer is not None:
      tokenizer.save_pretrained(str(staging))
    replace_directory(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target
