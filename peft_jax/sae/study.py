"""The delta-activation SAE study, end to end: ``run_sae_study(config, workdir) -> dict``.

docs/SAE.md describes the study, its files and every number in ``sae_study.json``. In order,
each step skipped when its output is already complete (a killed run resumes where it stopped):

1. ``data/``: the target's SFT rows split into adapter-training rows and held-out activation rows
   (the bundled world regenerates the base's offline suite from its ``suite.json``);
2. ``adapters/<name>/``: one LoRA per rank, trained by ``train_fn`` (``launch.sae`` passes
   ``peft_jax.train.trainer.train``) with a PEFT export, then loaded with ``hub.load_adapter``;
3. ``activations/``: base activations and deltas of every adapter at every site, streamed to
   disk-backed stores within ``memory_budget_mb`` (:mod:`peft_jax.sae.collect`);
4. ``saes/<source>/<site>/``: one SAE per (adapter, site) on the deltas, one base SAE per site on
   the base activations and (``base_reseed``) a second base SAE from another seed, each trained
   by :func:`peft_jax.sae.fit.fit_sae` (batch-sharded over the mesh's ``data`` axis,
   checkpointed); ``metrics.json`` beside each: reconstruction, density, CE-loss recovered;
5. ``sae_study.json``: per (rank, site) rows with the comparisons against the base dictionary
   and a claims dict computed from the rows by stated rules.

The study refuses a workdir whose ``study_config.json`` differs from the config (listing keys).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.optimize
import scipy.stats

from peft_jax import hub
from peft_jax.adapters.core import Adapted
from peft_jax.adapters.lora import LoRA
from peft_jax.common import files
from peft_jax.data import sft
from peft_jax.data import suite as suite_lib
from peft_jax.data.suite import layout
from peft_jax.hub import gguf
from peft_jax.parallel import sharding
from peft_jax.sae import collect as collect_lib
from peft_jax.sae import fit, metrics, splice
from peft_jax.sae import sae as sae_lib
from peft_jax.sae import store as store_lib

STUDY_FILE = 'sae_study.json'
CONFIG_FILE = 'study_config.json'
SCHEMA_VERSION = 1
# Keys that do not change a result (a rerun may change them).
RESUME_SAFE_KEYS = ('progress',)

TrainFn = Callable[[dict, str], Any]


# ---------------------------------------------------------------------------------------------
# Config.


def _plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _flatten(d: Mapping, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _check_config(config: dict, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  semantic = {k: v for k, v in config.items() if k not in RESUME_SAFE_KEYS}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(semantic)))
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
      raise ValueError(
        f'{path}: the workdir holds an SAE study with a different config; differing keys: '
        f'{differ[:12]}. Use another --workdir or delete it.'
      )
  else:
    files.write_json(path, semantic)


def _sae_config(config: Mapping, d: int) -> sae_lib.SAEConfig:
  c = dict(config['sae'])
  return sae_lib.SAEConfig(
    num_features=int(c['expansion']) * d,
    activation=c['activation'],
    k=c.get('k') if c['activation'] == 'topk' else None,
    l1_coeff=float(c['l1_coeff']),
    learning_rate=float(c['learning_rate']),
    num_steps=int(c['num_steps']),
    batch_size=int(c['batch_size']),
    log_every=int(c['log_every']),
    bandwidth=float(c.get('bandwidth', 1e-3)),
    init_threshold=float(c.get('init_threshold', 1e-3)),
    dead_after=int(c['dead_after']),
    resample_every=int(c['resample_every']),
    resample_pool=int(c['resample_pool']),
  )


def adapter_names(config: Mapping) -> list[tuple[str, int]]:
  return [(f'lora_r{int(r)}', int(r)) for r in config['adapters']['ranks']]


def adapter_train_overrides(config: Mapping, rank: int, base_dir: str, data_path: str) -> dict:
  """Overrides of ``peft_jax.train.config.default_config`` for the rank-``rank`` LoRA."""
  a = config['adapters']
  overrides = _plain(config['train'])
  overrides.update(
    seed=int(config['seed']),
    mesh_shape=tuple(config['mesh_shape']),
    progress_bar=False,
  )
  overrides.setdefault('model', {})['path'] = base_dir
  overrides.setdefault('data', {}).update(path=data_path, tokenizer='model')
  overrides['adapter'] = dict(
    method='lora',
    targets=tuple(a['targets']),
    target_regex=a['target_regex'],
    kwargs=dict(rank=rank, alpha=float(a['alpha_over_rank']) * rank),
  )
  overrides.setdefault('export', {})['adapter'] = True
  return overrides


# ---------------------------------------------------------------------------------------------
# Steps.


def _ensure_suite(base_dir: str, workdir: str) -> str:
  meta_path = os.path.join(base_dir, 'suite.json')
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
      f"{meta_path} is missing: world='bundled' needs the base's suite seed and sizes; use "
      "world='custom' with config.data_path"
    )
  with open(meta_path) as f:
    meta = json.load(f)
  suite_dir = os.path.join(workdir, 'suite')
  if not os.path.exists(os.path.join(suite_dir, 'manifest.json')):
    tmp = files.temporary_directory_for(suite_dir)
    os.rmdir(tmp)
    suite_lib.generate_suite(tmp, seed=int(meta['seed']), sizes=dict(meta.get('sizes') or {}))
    files.replace_directory(tmp, suite_dir)
  return suite_dir


def _split_data(config: Mapping, workdir: str) -> tuple[str, list[dict]]:
  """(adapter-training JSONL, held-out activation rows)."""
  if config['world'] == 'bundled':
    source = layout.sft_path(_ensure_suite(_base_dir(config), workdir), config['target'])
  elif config['world'] == 'custom':
    source = config['data_path']
    if not source or not os.path.exists(source):
      raise FileNotFoundError(f"config.data_path={source!r} (world='custom') does not exist")
  else:
    raise ValueError(f"config.world={config['world']!r}; valid: 'bundled', 'custom'")
  rows = sft.read_rows(source).rows
  held = int(config['data']['activation_rows'])
  if not 0 < held < len(rows):
    raise ValueError(
      f'config.data.activation_rows={held} must be in [1, {len(rows) - 1}] ({source} has '
      f'{len(rows)} rows; the rest train the adapters)'
    )
  train_path = os.path.join(workdir, 'data', 'adapter_train.jsonl')
  if not os.path.exists(train_path):
    files.write_jsonl(train_path, rows[:-held])
  return train_path, rows[-held:]


def _base_dir(config: Mapping) -> str:
  """The base's path: a checkpoint directory (``'bundled:NAME'`` resolved), or a GGUF source
  (a ``.gguf`` file or a named base such as ``'smollm2-135m-instruct'``), which
  ``hub.load_pretrained`` and the trainer's ``model.path`` read as they are."""
  found = (
    gguf.find_gguf_file(config['base']) if not str(config['base']).startswith('bundled:') else None
  )
  if found is not None:
    return str(found)
  base_dir = str(hub.resolve_path(config['base']))
  if not os.path.exists(base_dir):
    raise FileNotFoundError(f'config.base={config["base"]!r}: {base_dir} does not exist')
  return base_dir


def _adapters(config, workdir, base_dir, params, train_path, train_fn, log) -> dict:
  trees = {}
  for name, rank in adapter_names(config):
    paths = dict(config['adapters'].get('paths') or {})
    export = paths.get(name) or os.path.join(workdir, 'adapters', name, 'export', 'adapter')
    if not os.path.exists(os.path.join(export, 'adapter_model.safetensors')):
      if name in paths:
        raise FileNotFoundError(f'config.adapters.paths.{name}={export!r} holds no PEFT adapter')
      if train_fn is None:
        raise FileNotFoundError(
          f'{export} holds no trained adapter and no train_fn was given (launch.sae passes '
          'peft_jax.train.trainer.train)'
        )
      log(f'training {name}')
      run_dir = os.path.join(workdir, 'adapters', name)
      train_fn(adapter_train_overrides(config, rank, base_dir, train_path), run_dir)
    trees[name] = hub.load_adapter(params, export)
  return trees


def common_rank(trees: Mapping[str, Any]) -> dict:
  """The LoRA trees zero-padded to their largest rank, with the scale folded into ``b``.

  ``a' = [a, 0]``, ``b' = [s b; 0]`` under a LoRA with rank ``R`` and ``alpha = R`` (scale 1):
  ``x a' b' = s x a b``, the same function; every tree then has one structure and shape, so the
  collection and splice programs compile once for all ranks. Trees of other methods are
  returned unchanged.
  """
  is_node = lambda n: isinstance(n, Adapted)
  nodes = [n for t in trees.values() for n in jax.tree.leaves(t, is_leaf=is_node) if is_node(n)]
  if not nodes or any(type(n.method) is not LoRA for n in nodes):
    return dict(trees)
  rank = max(n.method.rank for n in nodes)

  def pad(node):
    if not is_node(node):
      return node
    r = node.method.rank
    a = jnp.pad(node.params['lora_a'], ((0, 0), (0, rank - r)))
    b = jnp.pad(node.params['lora_b'] * node.method.scale, ((0, rank - r), (0, 0)))
    method = dataclasses.replace(node.method, rank=rank, alpha=float(rank), use_rslora=False)
    return Adapted(node.base, {'lora_a': a, 'lora_b': b}, node.frozen, method)

  return {name: jax.tree.map(pad, t, is_leaf=is_node) for name, t in trees.items()}


def _token_rows(config, tokenizer, rows) -> dict:
  arrays = sft.build_sft_arrays(rows, tokenizer, int(config['data']['seq_len']), packing=False)
  return {k: np.asarray(v, np.int32) for k, v in arrays.items()}


def _norm(store: store_lib.ActivationStore, method: str) -> tuple[np.ndarray, float]:
  if method == 'none':
    return np.zeros(store.d), 1.0
  if method == 'unit_mean_norm':
    return np.zeros(store.d), float(np.sqrt(store.d) / max(store.mean_norm, 1e-12))
  raise ValueError(f"config.sae.normalize={method!r}; valid: 'none', 'unit_mean_norm'")


def _ce(model_config, tree, base_params, params, sae_config, mean, scale, site, mode, tokens, cfg):
  spec = splice.SpliceSpec(site, mode, sae_config.activation, sae_config.k, sae_config.bandwidth)
  program = splice.splice_program(model_config, spec)
  batch_rows = int(cfg['data']['batch_rows'])
  start = int(tokens['eval_start_row'])
  sums = {k: [] for k in ('clean', 'spliced', 'ablated', 'count')}
  sae_params = jax.tree.map(jnp.asarray, params)
  n = tokens['tokens'].shape[0]
  if int(cfg['compare']['ce_sequences']) > 0:  # the first evaluation sequences only
    n = min(n, start + int(cfg['compare']['ce_sequences']))
  for lo in range(start, n, batch_rows):
    batch = {}
    for key in ('tokens', 'positions', 'segment_ids', 'loss_mask'):
      part = tokens[key][lo : lo + batch_rows]
      batch[key] = np.pad(part, ((0, batch_rows - part.shape[0]), (0, 0)))
    out = program(
      tree,
      base_params,
      sae_params,
      jnp.asarray(mean, jnp.float32),
      jnp.asarray(scale, jnp.float32),
      *(jnp.asarray(batch[k]) for k in ('tokens', 'positions', 'segment_ids', 'loss_mask')),
    )
    real = min(batch_rows, n - lo)
    for key in sums:
      sums[key].append(np.asarray(out[key], np.float64)[:real])
  sums = {k: np.concatenate(v) for k, v in sums.items()}
  keep = sums['count'] > 0

  def score(w):  # w: [R, sequences]
    count = w @ sums['count'][keep]
    loss = {k: (w @ sums[k][keep]) / count for k in ('clean', 'spliced', 'ablated')}
    gap = loss['ablated'] - loss['clean']
    return loss, np.where(np.abs(gap) > 0, (loss['ablated'] - loss['spliced']) / gap, np.nan)

  num = int(keep.sum())
  loss, recovered = score(np.ones((1, num)))
  rng = np.random.default_rng(int(cfg['seed']))
  weights = np.zeros((int(cfg['compare']['num_resamples']), num))
  draws = rng.integers(0, num, size=weights.shape)
  np.add.at(weights, (np.arange(weights.shape[0])[:, None], draws), 1.0)
  _, boot = score(weights)
  boot = boot[np.isfinite(boot)]
  level = float(cfg['compare']['level'])
  interval = (
    [float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])]
    if boot.size
    else [float('nan')] * 2
  )
  return {
    'loss_clean': float(loss['clean'][0]),
    'loss_spliced': float(loss['spliced'][0]),
    'loss_ablated': float(loss['ablated'][0]),
    'ce_loss_recovered': {'value': float(recovered[0]), 'interval': interval, 'level': level},
    # The score means something only when ablating the site hurts the model.
    'ablation_hurts': bool(loss['ablated'][0] > loss['clean'][0]),
    'n_sequences': num,
    'n_tokens': int(sums['count'].sum()),
  }


# ---------------------------------------------------------------------------------------------
# Comparisons and claims.


def _bootstrap_mean(values: np.ndarray, num: int, level: float, seed: int) -> list[float]:
  if values.size == 0:
    return [float('nan')] * 2
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, values.size, size=(num, values.size))].mean(1)
  return [float(v) for v in np.quantile(means, [(1 - level) / 2, (1 + level) / 2])]


def _unit_rows(a: np.ndarray) -> np.ndarray:
  return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _top_right_singular(a: np.ndarray, k: int) -> np.ndarray:
  """``[d, k]``: the top-``k`` right singular vectors of ``a``, as the top eigenvectors of
  ``aᵀa`` (a ``d x d`` symmetric eigenproblem; much cheaper than the SVD of a tall ``a``)."""
  values, vectors = np.linalg.eigh(a.T @ a)
  return vectors[:, np.argsort(values)[::-1][:k]]


def subspace_angles_deg(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
  """Principal angles (degrees, ascending) between the top-``k`` right singular subspaces of the
  decoders ``a [m_a, d]`` and ``b [m_b, d]`` (float64; as ``compare.decoder_subspace_angles``)."""
  qa, qb = _top_right_singular(a, k), _top_right_singular(b, k)
  cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
  return np.sort(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))))


def compare_to_base(delta_dec, delta_freq, base_dec, base_freq, cfg, seed) -> dict:
  """Decoder comparisons (float64) of the alive delta features with the alive base features:
  MMCS and match fractions (docs/METRICS.md, "Dictionary comparison"), the optimal one-to-one
  matching, principal angles, and a null of random directions."""
  c = cfg['compare']
  level, num = float(c['level']), int(c['num_resamples'])
  dd = np.asarray(delta_dec, np.float64)[np.asarray(delta_freq) > 0]
  bd = np.asarray(base_dec, np.float64)[np.asarray(base_freq) > 0]
  if dd.shape[0] == 0 or bd.shape[0] == 0:
    raise ValueError('a dictionary has no alive features on the evaluation rows; train longer')
  abs_cos = np.abs(_unit_rows(dd) @ _unit_rows(bd).T)
  max_cos = abs_cos.max(1)
  thresholds = [float(t) for t in c['thresholds']]
  rows, cols = scipy.optimize.linear_sum_assignment(-abs_cos)
  matched = abs_cos[rows, cols]
  # Null: as many random directions as alive delta features, against the same base dictionary.
  null = np.random.default_rng(seed).normal(size=dd.shape)
  null_cos = np.abs(_unit_rows(null) @ _unit_rows(bd).T)
  k = min(int(c['subspace_k']), dd.shape[1], dd.shape[0], bd.shape[0])
  angles = subspace_angles_deg(dd, bd, k)
  null_angles = subspace_angles_deg(null, bd, k)
  tau = float(c['match_threshold'])
  return {
    'n_delta_features': int(dd.shape[0]),
    'n_base_features': int(bd.shape[0]),
    'mmcs': {
      'value': float(max_cos.mean()),
      'interval': _bootstrap_mean(max_cos, num, level, seed),
      'level': level,
      'n': int(max_cos.size),
    },
    'mmcs_null': float(null_cos.max(1).mean()),
    'match_fractions': {
      'thresholds': thresholds,
      'values': [float(np.mean(max_cos >= t)) for t in thresholds],
    },
    'one_to_one': {
      'mean_cosine': {
        'value': float(matched.mean()),
        'interval': _bootstrap_mean(matched, num, level, seed + 1),
        'level': level,
        'n': int(matched.size),
      },
      'threshold': tau,
      'fraction_above': float(np.mean(matched >= tau)),
    },
    'principal_angles': {
      'k': int(k),
      'angles_deg': [float(a) for a in angles],
      'mean_deg': float(angles.mean()),
      'null_mean_deg': float(null_angles.mean()),
    },
    'divergence': float(1.0 - max_cos.mean()),
    # Per alive delta feature (the arena report bootstraps its claims over these).
    'per_feature': {
      'max_cos': [float(v) for v in max_cos],
      'matched_cos': [float(v) for v in matched],
    },
  }


def _spearman(x, y) -> dict:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
    return {'rho': float('nan'), 'p': float('nan'), 'n': int(x.size)}
  result = scipy.stats.spearmanr(x, y)
  return {'rho': float(result.statistic), 'p': float(result.pvalue), 'n': int(x.size)}


def derive_claims(rows: list[dict], base_rows: dict, alpha: float = 0.05) -> dict:
  """The three claims of the study, each from the rows by the rule stated with it."""
  delta = rows
  residual = [r for r in delta if r['kind'] == 'residual']

  def col(rs, path):
    out = []
    for r in rs:
      v = r
      for p in path:
        v = v[p]
      out.append(v)
    return np.asarray(out, np.float64)

  # 1. Weak alignment.
  mmcs = col(delta, ('comparison', 'mmcs', 'value'))
  null = col(delta, ('comparison', 'mmcs_null'))
  ceiling = np.asarray(
    [base_rows[r['site']].get('reseed_mmcs', {}).get('value', 1.0) for r in delta], np.float64
  )
  normalised = (mmcs - null) / np.maximum(ceiling - null, 1e-12)
  weak = {
    'claim': 'delta features align weakly with the base dictionary',
    'rule': (
      'a = (MMCS - MMCS_null) / (MMCS_reseed - MMCS_null) per (rank, site) row, with MMCS_null '
      'for random directions and MMCS_reseed for a base SAE from another seed (1 when absent); '
      'holds when the median of a over rows is below 0.5'
    ),
    'median_normalised_alignment': float(np.median(normalised)),
    'median_mmcs': float(np.median(mmcs)),
    'n': int(normalised.size),
    'holds': bool(np.median(normalised) < 0.5),
  }
  # 2. Density rising with rank and with depth.
  density_rank = _spearman(col(delta, ('rank',)), col(delta, ('sae', 'mean_density')))
  density_depth = _spearman(col(residual, ('layer',)), col(residual, ('sae', 'mean_density')))
  rising = {
    'claim': 'delta-feature density rises with rank and with depth',
    'rule': (
      'Spearman rho of the delta SAE mean density (L0 / m on the evaluation tokens) against '
      f'rank (all rows) and against layer (residual rows); each holds when rho > 0 and p < '
      f'{alpha}'
    ),
    'rank': {**density_rank, 'holds': bool(density_rank['rho'] > 0 and density_rank['p'] < alpha)},
    'depth': {
      **density_depth,
      'holds': bool(density_depth['rho'] > 0 and density_depth['p'] < alpha),
    },
  }
  rising['holds'] = bool(rising['rank']['holds'] and rising['depth']['holds'])
  # 3. Divergence stable across ranks.
  divergence = col(delta, ('comparison', 'divergence'))
  trend = _spearman(col(delta, ('rank',)), divergence)
  spreads = []
  for site in sorted({r['site'] for r in delta}):
    values = np.asarray([r['comparison']['divergence'] for r in delta if r['site'] == site])
    spreads.append(float((values.max() - values.min()) / max(values.mean(), 1e-12)))
  stable = {
    'claim': 'geometric divergence (1 - MMCS) is stable across ranks',
    'rule': (
      f'Spearman rho of 1 - MMCS against rank over all rows has p >= {alpha} and the median '
      'over sites of the relative spread (max - min) / mean across ranks is at most 0.25'
    ),
    'rank_trend': trend,
    'median_relative_spread': float(np.median(spreads)) if spreads else float('nan'),
    'n_sites': len(spreads),
  }
  stable['holds'] = bool(not (trend['p'] < alpha) and stable['median_relative_spread'] <= 0.25)
  return {'weak_alignment': weak, 'density_rises': rising, 'divergence_stable': stable}


# ---------------------------------------------------------------------------------------------
# The study.


def run_sae_study(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  train_fn: Optional[TrainFn] = None,
  log: Callable[[str], Any] = print,
) -> dict:
  """Runs (or resumes) the study in ``workdir``; returns the ``sae_study.json`` dict.

  Args:
    config: the study config (``configs/sae/quick.py``).
    workdir: the study directory.
    train_fn: ``(train-config overrides, run_dir) -> any``; trains an adapter resumably with a
      PEFT export under ``run_dir/export/adapter`` (``launch.sae``: ``trainer.train`` on
      ``default_config()`` with the overrides). Needed only for adapters not trained yet.
    log: progress messages.
  """
  started = time.time()
  cfg = _plain(config)
  os.makedirs(workdir, exist_ok=True)
  _check_config(cfg, workdir)
  timings = {}

  def timed(name, fn):
    t = time.time()
    out = fn()
    timings[name] = round(time.time() - t, 2)
    return out

  base_dir = _base_dir(cfg)
  train_path, held_rows = timed('data', lambda: _split_data(cfg, workdir))
  model, params, tokenizer = hub.load_pretrained(base_dir)
  if tokenizer is None:
    raise FileNotFoundError(f'{base_dir} has no tokenizer files; the study tokenizes SFT rows')
  model_config = model.config
  trees = timed(
    'adapters', lambda: _adapters(cfg, workdir, base_dir, params, train_path, train_fn, log)
  )
  trees = common_rank(trees)
  tokens = _token_rows(cfg, tokenizer, held_rows)
  num_rows = tokens['tokens'].shape[0]
  tokens['eval_start_row'] = num_rows - max(1, int(round(cfg['data']['eval_fraction'] * num_rows)))
  sites = [splice.parse_site(s, model_config.num_layers).name for s in cfg['sites']]
  acts_dir = os.path.join(workdir, 'activations')
  budget = int(float(cfg['memory_budget_mb']) * 2**20)

  def collect():
    summary = collect_lib.read_collection(acts_dir)
    if summary is None:
      log(f'collecting activations at {len(sites)} sites for {len(trees)} adapters')
      summary = collect_lib.collect_activations(
        model_config,
        params,
        trees,
        tokens,
        sites,
        acts_dir,
        budget_bytes=budget,
        batch_rows=int(cfg['data']['batch_rows']),
        eval_start_row=int(tokens['eval_start_row']),
      )
    return summary

  collection = timed('collect', collect)
  eval_start = int(collection['eval_start'])
  mesh = sharding.make_mesh(tuple(cfg['mesh_shape']))
  stores = {
    (source, site): store_lib.ActivationStore(collect_lib.store_path(acts_dir, source, site))
    for source in collection['sources']
    for site in sites
  }

  def train_and_evaluate(source, site, seed, tag, mode):
    st = stores[source, site]
    sae_config = _sae_config(cfg, st.d)
    mean, scale = _norm(st, cfg['sae']['normalize'])
    out_dir = os.path.join(workdir, 'saes', tag, collect_lib.site_dir(site))
    params_path = os.path.join(out_dir, 'params.npz')
    metrics_path = os.path.join(out_dir, 'metrics.json')
    if os.path.exists(params_path):
      sae_params = fit.load_params(params_path)
    else:
      log(f'SAE {tag} @ {site}')
      sampler = store_lib.TokenSampler(st, eval_start, budget // 2, seed)
      sae_params, history = fit.fit_sae(
        sampler,
        sae_config,
        seed,
        mean=mean,
        scale=scale,
        mesh=mesh,
        checkpoint_dir=os.path.join(out_dir, 'checkpoint'),
        checkpoint_every=int(cfg['sae']['checkpoint_every']),
      )
      files.write_json(os.path.join(out_dir, 'history.json'), history)
      fit.save_params(params_path, sae_params)
    if os.path.exists(metrics_path):
      with open(metrics_path) as f:
        summary = json.load(f)
    else:
      summary, frequency = metrics.sae_metrics(
        sae_params,
        sae_config,
        st,
        eval_start,
        st.n,
        mean=mean,
        scale=scale,
        block_rows=int(cfg['compare']['block_rows']),
        dense_threshold=float(cfg['compare']['dense_threshold']),
        num_resamples=int(cfg['compare']['num_resamples']),
        level=float(cfg['compare']['level']),
        seed=seed,
      )
      summary['frequency'] = [float(v) for v in frequency]
      summary['num_features'] = sae_config.num_features
      summary['activation'] = sae_config.activation
      if mode is not None:
        tree = params if mode == 'base' else trees[source]
        summary['ce'] = _ce(
          model_config, tree, params, sae_params, sae_config, mean, scale, site, mode, tokens, cfg
        )
      files.write_json(metrics_path, summary)
    return sae_params, sae_config, (mean, scale), summary

  seed = int(cfg['seed'])

  def all_saes():
    out = {}
    for i, site in enumerate(sites):
      out['base', site] = train_and_evaluate('base', site, seed + 1000 * i, 'base', 'base')
      if cfg['base_reseed']:
        out['reseed', site] = train_and_evaluate(
          'base', site, seed + 1000 * i + 500, 'base_reseed', None
        )
      for j, (name, _) in enumerate(adapter_names(cfg)):
        out[name, site] = train_and_evaluate(name, site, seed + 1000 * i + j + 1, name, 'delta')
    return out

  saes = timed('saes', all_saes)

  def comparisons():
    base_rows, rows = {}, []
    for site in sites:
      parsed = splice.parse_site(site, model_config.num_layers)
      b_params, b_config, b_norm, b_summary = saes['base', site]
      base_row = {
        'site': site,
        'kind': parsed.kind,
        'layer': parsed.layer,
        'sae': {k: v for k, v in b_summary.items() if k != 'frequency'},
        'mean_norm': stores['base', site].mean_norm,
      }
      if ('reseed', site) in saes:
        r_params, _, _, r_summary = saes['reseed', site]
        reseed = compare_to_base(
          r_params['W_dec'], r_summary['frequency'], b_params['W_dec'], b_summary['frequency'],
          cfg, seed,
        )  # fmt: skip
        base_row['reseed_mmcs'] = reseed['mmcs']
        base_row['reseed_one_to_one'] = reseed['one_to_one']['mean_cosine']
      base_rows[site] = base_row
      for name, rank in adapter_names(cfg):
        d_params, d_config, d_norm, d_summary = saes[name, site]
        comparison = compare_to_base(
          d_params['W_dec'], d_summary['frequency'], b_params['W_dec'], b_summary['frequency'],
          cfg, seed,
        )  # fmt: skip
        comparison['code_cka'] = metrics.code_cka(
          d_params, d_config, stores[name, site], b_params, b_config, stores['base', site],
          eval_start, stores[name, site].n, norm_a=d_norm, norm_b=b_norm,
          block_rows=int(cfg['compare']['block_rows']), level=float(cfg['compare']['level']),
        )  # fmt: skip
        rows.append(
          {
            'adapter': name,
            'rank': rank,
            'site': site,
            'kind': parsed.kind,
            'layer': parsed.layer,
            'depth': parsed.layer / max(model_config.num_layers - 1, 1),
            'delta_norm_ratio': stores[name, site].mean_norm / stores['base', site].mean_norm,
            'sae': {k: v for k, v in d_summary.items() if k != 'frequency'},
            'comparison': comparison,
          }
        )
    return base_rows, rows

  base_rows, rows = timed('compare', comparisons)
  result = {
    'schema_version': SCHEMA_VERSION,
    'base': cfg['base'],
    'model': {
      'num_layers': model_config.num_layers,
      'hidden_size': model_config.hidden_size,
      'model_type': model_config.model_type,
    },
    'adapters': [{'name': n, 'rank': r} for n, r in adapter_names(cfg)],
    'sites': sites,
    'tokens': {
      'total': int(collection['n_tokens']),
      'train': eval_start,
      'eval': int(collection['n_tokens']) - eval_start,
      'sequences': num_rows,
      'eval_sequences': num_rows - int(tokens['eval_start_row']),
    },
    'collection': collection,
    'sae_config': dict(cfg['sae']),
    'devices': {'count': len(jax.devices()), 'mesh': dict(mesh.shape)},
    'base_rows': base_rows,
    'rows': rows,
    'claims': derive_claims(rows, base_rows),
    'timings_s': {**timings, 'total': round(time.time() - started, 2)},
  }
  files.write_json(os.path.join(workdir, STUDY_FILE), result)
  return result
