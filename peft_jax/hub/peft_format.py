"""Hugging Face PEFT adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``.

Supported: LoRA (incl. rsLoRA, ``rank_pattern``/``alpha_pattern``, DoRA), PiSSA (saved unconverted
with ``init_lora_weights='pissa'``, or converted to plain LoRA), VeRA (with saved projections),
OFT (v2 format, PEFT >= 0.18 Cayley–Neumann) and MiSS (balance, 'bat', 'mini').

Key mapping (PEFT 0.21, default adapter): ``base_model.model.<module>.lora_A.weight [r, d_in]``
-> node param ``lora_a = A^T [d_in, r]``; ``lora_B.weight [d_out, r]`` -> ``lora_b = B^T``;
``lora_magnitude_vector [d_out]`` -> ``magnitude``; ``vera_lambda_b [d_out]``/``vera_lambda_d [r]``
as is; ``base_model.vera_A [r, max_in]`` / ``vera_B [max_out, r]`` -> shared ``vera_a``/``vera_b``
(transposed); ``oft_R.weight [n, b(b-1)/2]`` -> ``oft_r``; ``miss_block`` as is. Module names map to
our param paths by ``peft_jax.adapters.inject.default_module_name``
(``model.layers.3.self_attn.q_proj`` <-> ``layers_3/self_attn/q_proj/kernel``;
``encoder.layer.3.attention.self.query`` <-> ``layers_3/attention/self/query/kernel``). A module name
of a ``*ForSequenceClassification`` model (``bert.encoder.layer.3...``, ``roberta....``) loads onto
the encoder too: the base-model prefix is dropped when the name without it is a module of ours.

``modules_to_save`` (a task head): PEFT stores the trained copy as the module's own tensors,
``base_model.model.classifier.weight [out, in]`` / ``.bias``, and lists the module in the config's
``modules_to_save``; they load as ``ModulesToSave`` nodes (kernel transposed) and save back the same
way.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from peft_jax.adapters.core import Adapted
from peft_jax.adapters.dora import DoRA
from peft_jax.adapters.inject import adapted_nodes, default_module_name, linear_modules
from peft_jax.adapters.lora import LoRA
from peft_jax.adapters.miss import MiSS
from peft_jax.adapters.modules_to_save import ModulesToSave
from peft_jax.adapters.oft import OFT
from peft_jax.adapters.pissa import PiSSA
from peft_jax.adapters.vera import VeRA

# By name: `peft_jax.adapters.inject` is also the re-exported inject function.
from peft_jax.common import stacking
from peft_jax.common.trees import flatten_names as flatten_params
from peft_jax.common.trees import set_path
from peft_jax.hub.checkpoint import read_json, read_safetensors_header

CONFIG_NAME = 'adapter_config.json'
WEIGHTS_NAME = 'adapter_model.safetensors'
_PREFIX = 'base_model.model.'
# PEFT types this module writes (a method object names its own in ``peft_type``).
PEFT_TYPES = ('LORA', 'VERA', 'OFT', 'MISS')
PEFT_VERSION = '0.21.2'

# Per-module tensor suffixes of each PEFT type (after the module name).
_SUFFIXES = {
  'LORA': ('.lora_A.weight', '.lora_B.weight', '.lora_magnitude_vector'),
  'VERA': ('.vera_lambda_b', '.vera_lambda_d'),
  'OFT': ('.oft_R.weight',),
  'MISS': ('.miss_block',),
}


def _pattern_value(pattern: Mapping[str, Any], module_name: str, default: Any) -> Any:
  """PEFT ``get_pattern_key``: first key with ``re.match(rf"(.*\\.)?({key})$", name)``."""
  for key, value in (pattern or {}).items():
    if re.match(rf'(.*\.)?({key})$', module_name):
      return value
  return default


# Prefixes under which a task model holds its base model (``BertForSequenceClassification.bert``).
BASE_MODEL_PREFIXES = ('bert.', 'roberta.')
# Our parameter leaf -> the tensor name's last part in PEFT / transformers files.
_HF_LEAF = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}


def _in_saved_module(name: str, saved: list[str]) -> bool:
  """Whether tensor ``name`` (``classifier.weight``) belongs to a ``modules_to_save`` entry."""
  module = name.rsplit('.', 1)[0]
  return any(
    module == m or module.endswith('.' + m) or module.startswith(m + '.') or f'.{m}.' in module
    for m in saved
  )


def _group_by_module(
  tensors: Mapping[str, np.ndarray], peft_type: str, saved: list[str]
) -> tuple[dict[str, dict], dict[str, tuple[str, np.ndarray]]]:
  """``({module: {suffix: (key, value)}}, {saved tensor name: (key, value)})``."""
  suffixes = _SUFFIXES[peft_type]
  modules: dict[str, dict] = {}
  saved_tensors: dict[str, tuple[str, np.ndarray]] = {}
  for key, value in tensors.items():
    if key in ('base_model.vera_A', 'base_model.vera_B', 'vera_A', 'vera_B'):
      continue
    name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
    for suffix in suffixes:
      if name.endswith(suffix):
        modules.setdefault(name[: -len(suffix)], {})[suffix] = (key, value)
        break
    else:
      if _in_saved_module(name, saved):
        saved_tensors[name] = (key, value)
        continue
      raise ValueError(
        f'adapter tensor {key!r} is not a {peft_type} tensor this loader '
        f'understands; expected names ending in {suffixes}'
        + (f' or a tensor of modules_to_save {saved}' if saved else '')
      )
  return modules, saved_tensors


def _resolve(name: str, available: Mapping[str, Any]) -> Optional[str]:
  """``name`` as a key of ``available``, dropping a task model's base prefix if needed."""
  if name in available:
    return name
  for prefix in BASE_MODEL_PREFIXES:
    if name.startswith(prefix) and name[len(prefix) :] in available:
      return name[len(prefix) :]
  return None


def hf_param_names(
  params: Mapping, module_name_fn: Callable[[str], str] = default_module_name
) -> dict[str, str]:
  """``{HF tensor name: our param path}`` for every parameter (``classifier.weight`` ->
  ``classifier/kernel``); kernels are stored transposed under that name."""
  out = {}
  for path in flatten_params(params):
    module, leaf = path.rsplit('/', 1)
    if leaf in _HF_LEAF:
      out[f'{module_name_fn(module)}.{_HF_LEAF[leaf]}'] = path
  return out


def _check_shape(key: str, value: np.ndarray, expected: tuple, module: str, w_shape) -> None:
  if tuple(value.shape) != tuple(expected):
    raise ValueError(
      f'adapter tensor {key!r} has shape {tuple(value.shape)} but the base weight of {module!r} '
      f'(kernel [d_in, d_out] = {tuple(w_shape)}) needs {tuple(expected)}: this adapter was '
      f'made for a different base model'
    )


def _lora_node(config, module, tensors, w0, key):
  (a_key, a), (b_key, b) = tensors['.lora_A.weight'], tensors['.lora_B.weight']
  d_in, d_out = w0.shape
  rank = int(_pattern_value(config.get('rank_pattern'), module, config['r']))
  alpha = float(_pattern_value(config.get('alpha_pattern'), module, config['lora_alpha']))
  _check_shape(a_key, a, (rank, d_in), module, w0.shape)
  _check_shape(b_key, b, (d_out, rank), module, w0.shape)
  if config.get('lora_bias'):
    raise ValueError('adapter_config.json: lora_bias=True is not supported (valid: false)')
  hyper = dict(
    rank=rank,
    alpha=alpha,
    dropout=float(config.get('lora_dropout', 0.0)),
    use_rslora=bool(config.get('use_rslora', False)),
  )
  params = {'lora_a': jnp.asarray(a.T, jnp.float32), 'lora_b': jnp.asarray(b.T, jnp.float32)}
  init = config.get('init_lora_weights', True)
  if '.lora_magnitude_vector' in tensors:
    m_key, m = tensors['.lora_magnitude_vector']
    _check_shape(m_key, m, (d_out,), module, w0.shape)
    params['magnitude'] = jnp.asarray(m, jnp.float32)
    return Adapted(w0, params, {}, DoRA(**hyper))
  if init == 'pissa':
    node = PiSSA(**hyper).init(key, w0)  # re-derive the residual from the original W0, as PEFT
    return Adapted(node.base, params, node.frozen, node.method)
  if init in (True, False, 'gaussian'):
    return Adapted(w0, params, {}, LoRA(**hyper))
  raise ValueError(
    f'adapter_config.json: init_lora_weights={init!r} is not supported when '
    f"loading (it re-initialises the base weight); valid: true, false, 'gaussian', "
    f"'pissa' (or save with PEFT's conversion to plain LoRA)"
  )


def load_adapter(
  params: Mapping,
  path: str,
  *,
  key: Optional[jax.Array] = None,
  module_name_fn: Callable[[str], str] = default_module_name,
) -> dict:
  """Loads a PEFT adapter directory onto base ``params``; returns the adapted tree.

  Args:
    params: base param tree (kernels ``[d_in, d_out]``).
    path: directory holding ``adapter_config.json`` and ``adapter_model.safetensors``.
    key: unused by the supported formats (every array comes from the file or the base);
      accepted for symmetry with ``inject``.
    module_name_fn: our param path -> HF module name.
  Raises:
    FileNotFoundError: missing files. ValueError: unsupported type/options, unknown module names
      (listing available ones), or tensors whose shapes do not fit the base (naming the tensor).
  """
  del key
  if stacking.is_stacked(params):
    # Files name one module per layer: load onto the unrolled view, stack the nodes back.
    out = load_adapter(stacking.unstack_layers(params), path, module_name_fn=module_name_fn)
    return stacking.stack_layers(out, stacking.stack_period(params))
  config_path = os.path.join(path, CONFIG_NAME)
  weights_path = os.path.join(path, WEIGHTS_NAME)
  for p in (config_path, weights_path):
    if not os.path.exists(p):
      raise FileNotFoundError(
        f'PEFT adapter file {p!r} not found (need {CONFIG_NAME} and '
        f'{WEIGHTS_NAME}; .bin checkpoints are not supported)'
      )
  config = read_json(config_path, 'a PEFT adapter config object (peft_type, r, ...)')
  peft_type = str(config.get('peft_type', '')).upper()
  if peft_type not in _SUFFIXES:
    raise ValueError(
      f'{config_path}: peft_type={config.get("peft_type")!r} is not supported; '
      f'valid: {sorted(_SUFFIXES)}'
    )
  tensors = _load_weights(weights_path)
  saved = config.get('modules_to_save') or []
  if isinstance(saved, str):
    saved = [saved]
  modules, saved_tensors = _group_by_module(tensors, peft_type, list(saved))
  available = linear_modules(params, module_name_fn)
  flat = flatten_params(params)
  shared = None
  if peft_type == 'VERA':
    shared = _vera_shared(
      config,
      tensors,
      [flat[available[_resolve(m, available)]].shape for m in modules if _resolve(m, available)],
    )
  out = dict(params)
  for module, module_tensors in sorted(modules.items()):
    resolved = _resolve(module, available)
    if resolved is None:
      raise ValueError(
        f'adapter module {module!r} (tensors '
        f'{sorted(k for k, _ in module_tensors.values())}) has no matching linear '
        f'weight in the base params; available: {", ".join(sorted(available))}'
      )
    kernel_path = available[resolved]
    w0 = flat[kernel_path]
    if peft_type == 'LORA':
      node = _lora_node(config, module, module_tensors, w0, jax.random.key(0))
    elif peft_type == 'VERA':
      node = _vera_node(config, module, module_tensors, w0, shared)
    elif peft_type == 'OFT':
      node = _oft_node(config, module, module_tensors, w0)
    else:
      node = _miss_node(config, module, module_tensors, w0)
    out = set_path(out, kernel_path, node)
  if saved_tensors:
    out = _load_saved_modules(out, params, saved_tensors, list(saved), module_name_fn)
  return out


def _load_saved_modules(out, params, saved_tensors, saved, module_name_fn):
  """``ModulesToSave`` nodes from the file's copies of the saved modules (kernels transposed)."""
  flat = flatten_params(params)
  names = hf_param_names(params, module_name_fn)
  for name, (key, value) in sorted(saved_tensors.items()):
    resolved = _resolve(name, names)
    if resolved is None:
      raise ValueError(
        f'adapter tensor {key!r} (modules_to_save {saved}) names no parameter of the base '
        f'params; parameters there include: {", ".join(sorted(names)[-12:])}'
      )
    path = names[resolved]
    w0 = flat[path]
    array = value.T if path.endswith('/kernel') else value
    if tuple(array.shape) != tuple(w0.shape):
      raise ValueError(
        f'adapter tensor {key!r} has shape {tuple(value.shape)} but the base parameter {path} '
        f'needs {tuple(w0.shape[::-1]) if path.endswith("/kernel") else tuple(w0.shape)}: the '
        'head was made for a different number of labels or model'
      )
    module = next(m for m in saved if _in_saved_module(resolved, [m]))
    node = Adapted(
      w0, {'weight': jnp.asarray(array, jnp.float32)}, {}, ModulesToSave(module=module)
    )
    out = set_path(out, path, node)
  return out


def _load_weights(path: str) -> dict[str, np.ndarray]:
  """The adapter's tensors; a truncated or foreign file is named with what is wrong in it."""
  read_safetensors_header(path)
  try:
    return load_file(path)
  except Exception as error:  # pylint: disable=broad-except  (safetensors raises its own type)
    raise ValueError(f'{path}: cannot read it as safetensors: {error}') from error


def _vera_shared(config, tensors, shapes):
  a = tensors.get('base_model.vera_A', tensors.get('vera_A'))
  b = tensors.get('base_model.vera_B', tensors.get('vera_B'))
  if a is None or b is None:
    raise ValueError(
      'VeRA adapter without saved projections (save_projection=False): PEFT '
      "regenerates them with torch's RNG, which JAX cannot reproduce; re-save "
      'the adapter with save_projection=True'
    )
  rank = int(config['r'])
  max_in = max(s[0] for s in shapes)
  max_out = max(s[1] for s in shapes)
  if a.shape[0] != rank or a.shape[1] < max_in:
    raise ValueError(
      f"adapter tensor 'base_model.vera_A' has shape {a.shape}; needs "
      f'({rank}, >= {max_in}) for r={rank} and the targeted base weights'
    )
  if b.shape[1] != rank or b.shape[0] < max_out:
    raise ValueError(
      f"adapter tensor 'base_model.vera_B' has shape {b.shape}; needs "
      f'(>= {max_out}, {rank}) for r={rank} and the targeted base weights'
    )
  return {'vera_a': jnp.asarray(a.T, jnp.float32), 'vera_b': jnp.asarray(b.T, jnp.float32)}


def _vera_node(config, module, tensors, w0, shared):
  rank = int(config['r'])
  d_out = w0.shape[1]
  (lb_key, lb), (ld_key, ld) = tensors['.vera_lambda_b'], tensors['.vera_lambda_d']
  _check_shape(lb_key, lb, (d_out,), module, w0.shape)
  _check_shape(ld_key, ld, (rank,), module, w0.shape)
  method = VeRA(
    rank=rank,
    dropout=float(config.get('vera_dropout', 0.0)),
    d_initial=float(config.get('d_initial', 0.1)),
    projection_prng_key=int(config.get('projection_prng_key', 0)),
  )
  return Adapted(
    w0,
    {'lambda_d': jnp.asarray(ld, jnp.float32), 'lambda_b': jnp.asarray(lb, jnp.float32)},
    {'vera_a': shared['vera_a'], 'vera_b': shared['vera_b']},
    method,
  )


def _oft_node(config, module, tensors, w0):
  d_in = w0.shape[0]
  block_size = int(config.get('oft_block_size') or 0)
  r = int(config.get('r') or 0)
  if not block_size:
    if not r:
      raise ValueError('adapter_config.json: OFT needs oft_block_size or r (both are 0/missing)')
    block_size = d_in // r
  method = OFT(
    block_size=block_size,
    use_cayley_neumann=bool(config.get('use_cayley_neumann', True)),
    num_neumann_terms=int(config.get('num_cayley_neumann_terms', 5)),
    block_share=bool(config.get('block_share', False)),
    coft=bool(config.get('coft', False)),
    eps=float(config.get('eps', 6e-5)),
  )
  w_key, w = tensors['.oft_R.weight']
  if d_in % block_size:
    raise ValueError(
      f'adapter tensor {w_key!r}: oft_block_size={block_size} does not divide '
      f'd_in={d_in} of {module!r}: this adapter was made for a different base'
    )
  rows = 1 if method.block_share else d_in // block_size
  _check_shape(w_key, w, (rows, block_size * (block_size - 1) // 2), module, w0.shape)
  return Adapted(w0, {'oft_r': jnp.asarray(w, jnp.float32)}, {}, method)


def _miss_node(config, module, tensors, w0):
  init = config.get('init_weights', True)
  mode = {True: 'balance', False: 'balance', 'bat': 'bat', 'mini': 'mini'}.get(init)
  if mode is None:
    raise ValueError(
      f'adapter_config.json: MiSS init_weights={init!r} is not supported; valid: '
      f"true, false, 'bat', 'mini'"
    )
  method = MiSS(
    rank=int(config['r']),
    mode=mode,
    mini_r=int(config.get('mini_r', 1)),
    dropout=float(config.get('miss_dropout', 0.0)),
  )
  w_key, w = tensors['.miss_block']
  expected = method.init(None, w0).params['miss_block'].shape
  _check_shape(w_key, w, expected, module, w0.shape)
  return Adapted(w0, {'miss_block': jnp.asarray(w, jnp.float32)}, {}, method)


# ---------------------------------------------------------------------------------------------
# Saving.


def _base_config(peft_type: str, targets: list[str], base_model_name_or_path, task_type):
  return {
    'peft_type': peft_type,
    'task_type': task_type,
    'inference_mode': True,
    'base_model_name_or_path': base_model_name_or_path,
    'revision': None,
    'auto_mapping': None,
    'peft_version': PEFT_VERSION,
    'target_modules': targets,
    'layers_to_transform': None,
    'layers_pattern': None,
    'modules_to_save': None,
    'bias': 'none',
  }


def _np(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def save_adapter(
  tree: Mapping,
  path: str,
  base_model_name_or_path: Optional[str] = None,
  *,
  task_type: Optional[str] = 'CAUSAL_LM',
  module_name_fn: Callable[[str], str] = default_module_name,
) -> None:
  """Writes the adapted nodes of ``tree`` in PEFT's format (so ``PeftModel.from_pretrained`` loads
  them on the original base model).

  All nodes must be one PEFT type: LoRA (LoRA nodes may differ in rank/alpha, written as
  ``rank_pattern``/``alpha_pattern``), DoRA, PiSSA (converted to plain LoRA of rank ``2r`` on the
  original base, alpha doubled, or times sqrt(2) with rsLoRA, as PEFT's conversion), VeRA, OFT or
  MiSS. DISeL and Full have no PEFT format. ``ModulesToSave`` nodes (a trained task head) are
  written as PEFT's ``modules_to_save``: the module's tensors under their HF names.

  For an encoder with a head, give ``task_type='SEQ_CLS'`` and ``module_name_fn=
  functools.partial(adapters.encoder_module_name, base_prefix='bert.')`` (``'roberta.'``) so the
  names are those of ``BertForSequenceClassification``, the model PEFT then loads it onto.
  """
  tree = stacking.unstack_layers(tree)  # files name one module per layer
  all_nodes = adapted_nodes(tree)
  saved_nodes = {p: n for p, n in all_nodes.items() if getattr(n.method, 'saved_module', False)}
  nodes = {p: n for p, n in all_nodes.items() if p not in saved_nodes}
  if not nodes:
    raise ValueError('save_adapter: the tree holds no adapted weights (run inject first)')
  names = {p: module_name_fn(p[: -len('/kernel')]) for p in nodes}
  # The method object says which PEFT type it saves as (``peft_type``; the LoRA family adds its
  # factors through ``lora_factors`` and DoRA its magnitude through ``use_dora``).
  kinds = {type(n.method).__name__ for n in nodes.values()}
  unsupported = sorted(
    {
      type(n.method).__name__
      for n in nodes.values()
      if getattr(n.method, 'peft_type', None) not in PEFT_TYPES
    }
  )
  if unsupported:
    raise ValueError(
      f'save_adapter: methods {unsupported} have no PEFT file format (their '
      f'peft_type is not one of {PEFT_TYPES})'
    )
  peft_types = {n.method.peft_type for n in nodes.values()}
  use_dora = {bool(getattr(n.method, 'use_dora', False)) for n in nodes.values()}
  if len(peft_types) != 1 or len(use_dora) != 1:
    raise ValueError(f'save_adapter: one PEFT adapter holds one method, got {sorted(kinds)}')
  peft_type = peft_types.pop()
  targets = sorted(names.values())
  config = _base_config(peft_type, targets, base_model_name_or_path, task_type)
  tensors: dict[str, np.ndarray] = {}
  ordered = sorted(nodes.items())
  methods = [n.method for _, n in ordered]

  def single(field_fn, what):
    values = {field_fn(m) for m in methods}
    if len(values) != 1:
      raise ValueError(f'save_adapter: all {peft_type} nodes must share {what}, got {values}')
    return values.pop()

  if peft_type == 'LORA':
    entries = []
    for p, node in ordered:
      m = node.method
      a, b, rank, alpha = m.lora_factors(node)
      key = _PREFIX + names[p]
      tensors[key + '.lora_A.weight'] = _np(a).T
      tensors[key + '.lora_B.weight'] = _np(b).T
      if m.use_dora:
        tensors[key + '.lora_magnitude_vector'] = _np(node.params['magnitude'])
      entries.append((names[p], rank, alpha))
    base_rank, base_alpha = entries[0][1], entries[0][2]
    config.update(
      r=base_rank,
      lora_alpha=base_alpha,
      rank_pattern={re.escape(n): r for n, r, _ in entries if r != base_rank},
      alpha_pattern={re.escape(n): a for n, _, a in entries if a != base_alpha},
      lora_dropout=single(lambda m: m.dropout, 'dropout'),
      use_rslora=single(lambda m: m.use_rslora, 'use_rslora'),
      use_dora=use_dora.pop(),
      exclude_modules=None,
      fan_in_fan_out=False,
      init_lora_weights=True,
      lora_bias=False,
      layer_replication=None,
      loftq_config={},
      megatron_config=None,
      megatron_core='megatron.core',
      target_parameters=None,
      trainable_token_indices=None,
    )
  elif peft_type == 'VERA':
    first = ordered[0][1]
    for _, node in ordered:
      for k in ('vera_a', 'vera_b'):
        if node.frozen[k] is not first.frozen[k] and not bool(
          jnp.array_equal(node.frozen[k], first.frozen[k])
        ):
          raise ValueError(
            f'save_adapter: VeRA nodes hold different shared projections {k!r}; '
            f'PEFT stores one pair per model'
          )
    tensors['base_model.vera_A'] = _np(first.frozen['vera_a']).T
    tensors['base_model.vera_B'] = _np(first.frozen['vera_b']).T
    for p, node in ordered:
      key = _PREFIX + names[p]
      tensors[key + '.vera_lambda_b'] = _np(node.params['lambda_b'])
      tensors[key + '.vera_lambda_d'] = _np(node.params['lambda_d'])
    config.update(
      r=single(lambda m: m.rank, 'rank'),
      vera_dropout=single(lambda m: m.dropout, 'dropout'),
      d_initial=single(lambda m: m.d_initial, 'd_initial'),
      projection_prng_key=single(lambda m: m.projection_prng_key, 'projection_prng_key'),
      save_projection=True,
      init_weights=True,
      fan_in_fan_out=False,
    )
  elif peft_type == 'OFT':
    for p, node in ordered:
      tensors[_PREFIX + names[p] + '.oft_R.weight'] = _np(node.params['oft_r'])
    config.update(
      r=0,
      oft_block_size=single(lambda m: m.block_size, 'block_size'),
      use_cayley_neumann=single(lambda m: m.use_cayley_neumann, 'use_cayley_neumann'),
      num_cayley_neumann_terms=single(lambda m: m.num_neumann_terms, 'num_neumann_terms'),
      block_share=single(lambda m: m.block_share, 'block_share'),
      coft=single(lambda m: m.coft, 'coft'),
      eps=single(lambda m: m.eps, 'eps'),
      module_dropout=0.0,
      init_weights=True,
      exclude_modules=None,
      fan_in_fan_out=False,
    )
  else:
    for p, node in ordered:
      tensors[_PREFIX + names[p] + '.miss_block'] = _np(node.params['miss_block'])
    mode = single(lambda m: m.mode, 'mode')
    config.update(
      r=single(lambda m: m.rank, 'rank'),
      mini_r=single(lambda m: m.mini_r, 'mini_r'),
      miss_dropout=single(lambda m: m.dropout, 'dropout'),
      init_weights=True if mode == 'balance' else mode,
      exclude_modules=None,
    )
  if saved_nodes:
    for p, node in sorted(saved_nodes.items()):
      module, leaf = p.rsplit('/', 1)
      weight = _np(node.params['weight'])
      tensors[f'{_PREFIX}{module_name_fn(module)}.{_HF_LEAF[leaf]}'] = (
        weight.T if leaf == 'kernel' else weight
      )
    config['modules_to_save'] = sorted({n.method.module for n in saved_nodes.values()})
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_NAME), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  save_file(
    {k: np.ascontiguousarray(v) for k, v in tensors.items()},
    os.path.join(path, WEIGHTS_NAME),
    metadata={'format': 'pt'},
  )
