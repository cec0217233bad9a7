"""Streaming collection of base and delta activations at several sites into disk-backed stores.

docs/SAE.md, "Streaming collection". :func:`collect_activations` runs the base model and every
adapted model over the same token rows, batch by batch, and appends the real tokens' rows to one
store per (source, site) (:class:`peft_jax.sae.store.StoreWriter`):

  <out_dir>/base/<site>/      the base model's activation at the site
  <out_dir>/<adapter>/<site>/ the delta at the site (peft_jax.sae.splice.delta_program)
  <out_dir>/collection.json   token counts, the first evaluation row, the stores

Site names have ``/`` replaced by ``.`` in directory names. Each writer buffers at most
``chunk_rows`` rows, sized from ``budget_bytes`` (:func:`~peft_jax.sae.store.chunk_rows_for`), so
the resident activations are the writers' buffers plus one batch's captures, whatever the number
of tokens. The output is built in a temporary directory and moved into place when complete.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.common import files
from peft_jax.models.config import ModelConfig
from peft_jax.sae import splice
from peft_jax.sae import store as store_lib

COLLECTION_FILE = 'collection.json'
BASE = 'base'


def site_dir(site: str) -> str:
  return site.replace('/', '.')


def store_path(out_dir: str, source: str, site: str) -> str:
  return os.path.join(out_dir, source, site_dir(site))


def site_width(config: ModelConfig, site: splice.Site) -> int:
  if site.kind == 'residual':
    return config.hidden_size
  name = site.module.rsplit('/', 1)[1]
  widths = {
    'q_proj': config.num_heads * config.head_dim,
    'k_proj': config.num_kv_heads * config.head_dim,
    'v_proj': config.num_kv_heads * config.head_dim,
    'o_proj': config.hidden_size,
    'gate_proj': config.intermediate_size,
    'up_proj': config.intermediate_size,
    'down_proj': config.hidden_size,
  }
  return widths[name]


def _batches(rows: Mapping[str, np.ndarray], batch_rows: int):
  """``(start, batch)`` over the rows, the last batch padded with empty rows (segment 0)."""
  n = rows['tokens'].shape[0]
  for start in range(0, n, batch_rows):
    batch = {}
    for key in ('tokens', 'positions', 'segment_ids'):
      part = np.asarray(rows[key][start : start + batch_rows], np.int32)
      pad = batch_rows - part.shape[0]
      batch[key] = np.pad(part, ((0, pad), (0, 0))) if pad else part
    yield start, batch


def collect_activations(
  config: ModelConfig,
  base_params: Any,
  adapted: Mapping[str, Any],
  rows: Mapping[str, np.ndarray],
  sites: Sequence[str],
  out_dir: str,
  *,
  budget_bytes: int,
  batch_rows: int,
  eval_start_row: Optional[int] = None,
) -> dict:
  """Collects base activations and deltas of every adapter at every site (module docstring).

  Args:
    config: the model config.
    base_params: base params tree.
    adapted: ``{adapter name: adapted params tree}`` (names are directory names; not ``'base'``).
    rows: ``tokens``, ``positions``, ``segment_ids`` ``[N, T]`` int (segment 0 = padding).
    sites: site names (:func:`peft_jax.sae.splice.parse_site`).
    out_dir: output directory (replaced when complete).
    budget_bytes: memory for the writers' buffers (half of it; see ``chunk_rows_for``).
    batch_rows: sequences per forward pass.
    eval_start_row: sequences from this index on are evaluation rows (recorded as the first
      evaluation token row of every store); None: all rows are training rows.

  Returns:
    The ``collection.json`` dict: ``n_tokens``, ``eval_start``, ``sites``, ``sources``,
    ``chunk_rows``, ``budget_bytes``.
  """
  if BASE in adapted:
    raise ValueError(f'adapter name {BASE!r} is reserved for the base activations')
  parsed = [splice.parse_site(s, config.num_layers) for s in sites]
  names = tuple(s.name for s in parsed)
  sources = [BASE] + list(adapted)
  widths = {s.name: site_width(config, s) for s in parsed}
  row_bytes = max(widths.values()) * 4
  chunk_rows = store_lib.chunk_rows_for(budget_bytes, row_bytes, len(sources) * len(parsed))
  segment_ids = np.asarray(rows['segment_ids'])
  real = segment_ids != 0
  n_tokens = int(real.sum())
  eval_start = n_tokens if eval_start_row is None else int(real[:eval_start_row].sum())
  tmp = files.temporary_directory_for(out_dir)
  writers = {
    (source, site): store_lib.StoreWriter(
      store_path(tmp, source, site),
      widths[site],
      chunk_rows,
      meta={'source': source, 'site': site, 'eval_start': eval_start},
    )
    for source in sources
    for site in names
  }
  base_fn = splice.base_program(config, names)
  delta_fn = splice.delta_program(config, names)
  for _, batch in _batches(rows, batch_rows):
    mask = batch['segment_ids'].reshape(-1) != 0
    if not mask.any():
      continue
    args = [jnp.asarray(batch[k]) for k in ('tokens', 'positions', 'segment_ids')]
    base_values = base_fn(base_params, *args)
    for site in names:
      value = np.asarray(base_values[site])
      writers[BASE, site].append(value.reshape(-1, value.shape[-1])[mask])
    for source, tree in adapted.items():
      deltas = jax.device_get(delta_fn(tree, base_values, *args))
      for site in names:
        value = np.asarray(deltas[site])
        writers[source, site].append(value.reshape(-1, value.shape[-1])[mask])
      del deltas
    del base_values
  for writer in writers.values():
    writer.close()
  summary = {
    'n_tokens': n_tokens,
    'eval_start': eval_start,
    'sites': list(names),
    'sources': sources,
    'chunk_rows': chunk_rows,
    'budget_bytes': int(budget_bytes),
    'stored_bytes': int(sum(n_tokens * widths[s] * 4 for s in names) * len(sources)),
  }
  files.write_json(os.path.join(tmp, COLLECTION_FILE), summary)
  files.replace_directory(tmp, out_dir)
  return summary


def read_collection(out_dir: str) -> Optional[dict]:
  """The ``collection.json`` of a complete collection, or None."""
  path = os.path.join(out_dir, COLLECTION_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
