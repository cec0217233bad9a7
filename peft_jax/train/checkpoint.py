"""Checkpoints of the train state (orbax), trajectory snapshots and the run's resolved config.

A state is saved as a flat ``{leaf name: array}`` dict (names from the pytree paths, so custom
nodes such as ``Adapted`` need no orbax support) plus a JSON item with the data-iterator state.
Restoring builds the abstract target (shape, dtype, sharding) from the live state, so arrays come
back already placed and the jitted step does not recompile. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save keeps its last
complete checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp

from peft_jax.common.trees import path_name

PyTree = Any
CONFIG_FILE = 'config.json'
# Keys that may change between a run and its resumption: they do not change the numbers.
# (total_steps is not among them: it shapes the learning-rate schedule.)
RESUME_SAFE_KEYS = ('log_every', 'checkpoint.every_steps', 'checkpoint.keep', 'export',
                    'progress_bar', 'throttle_s', 'peak_flops_per_device')


def _flat(tree: PyTree) -> dict[str, Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = path_name(path).replace('/', '.') or 'leaf'
    if name in flat:
      raise ValueError(f'two leaves share the checkpoint name {name!r}')
    flat[name] = leaf
  return flat


def _unflat(flat: Mapping[str, Any], like: PyTree) -> PyTree:
  names = list(_flat(like))
  missing = [n for n in names if n not in flat]
  if missing:
    raise KeyError(f'checkpoint lacks {missing[:10]}; it holds {sorted(flat)[:10]}...')
  return jax.tree.unflatten(jax.tree.structure(like), [flat[n] for n in names])


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class StateCheckpointer:
  """Periodic, keep-N checkpoints of ``(state, iterator state)`` under ``directory``."""

  def __init__(self, directory: str, *, keep: int = 3):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: PyTree, data_state: Mapping[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_flat(state)), data=ocp.args.JsonSave(dict(data_state))))

  def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict]:
    """Restores step ``step`` onto the shapes/shardings of the live state ``like``."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(_flat(like))), data=ocp.args.JsonRestore()))
    return _unflat(restored['state'], like), dict(restored['data'])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class TrajectoryWriter:
  """Snapshots of the trainable (adapter) params every K steps, all kept, for path/drift analysis.

  Read back with :func:`load_trajectory`.
  """

  def __init__(self, directory: str):
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def save(self, step: int, params: PyTree) -> None:
    if step not in self.manager.all_steps():
      self.manager.save(step, args=ocp.args.StandardSave(_flat(params)))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_trajectory(directory: str, like: PyTree) -> dict[int, PyTree]:
  """``{step: trainable params}`` of every snapshot, shaped like ``like`` (live or abstract)."""
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  out = {}
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, 'sharding', None)),
                        _flat(like))
  for step in manager.all_steps():
    out[step] = _unflat(manager.restore(step, args=ocp.args.StandardRestore(target)), like)
  manager.close()
  return out


def _flatten_config(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(_flatten_config(value, name + '.'))
    else:
      out[name] = value
  return out


def _safe(key: str) -> bool:
  return any(key == k or key.startswith(k + '.') for k in RESUME_SAFE_KEYS)


def check_or_write_config(workdir: str, config_dict: Mapping[str, Any]) -> None:
  """Writes ``<workdir>/config.json`` or, when one exists, refuses a resume with another config.

  Raises:
    ValueError: listing every key (outside :data:`RESUME_SAFE_KEYS`) whose value differs, with
      the saved and the new value.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(json.dumps(config_dict, default=str))
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    old_flat, new_flat = _flatten_config(saved), _flatten_config(new)
    differing = sorted(k for k in set(old_flat) | set(new_flat)
                       if not _safe(k) and old_flat.get(k, '<absent>') != new_flat.get(k, '<absent>'))
    if differing:
      details = '; '.join(f'{k}: saved {old_flat.get(k, "<absent>")!r} != new '
                          f'{new_flat.get(k, "<absent>")!r}' for k in differing)
      raise ValueError(f'workdir {workdir!r} holds a run with a different config; refusing to '
                       f'resume. Differing keys: {details}. Use a new workdir (keys that may '
                       f'change on resume: {RESUME_SAFE_KEYS})')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
