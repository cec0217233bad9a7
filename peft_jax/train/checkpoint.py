"""Checkpoints of the train state (orbax), trajectory snapshots and the run's resolved config.

A state is saved as a flat ``{leaf name: array}`` dict (names from the pytree paths, so custom
nodes such as ``Adapted`` need no orbax support) plus a JSON item with the data-iterator state.
Restoring builds the abstract target (shape, dtype, sharding) from the live state, so arrays come
back already placed and the jitted step does not recompile. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save keeps its last
complete checkpoint.

Saves run in the background; :meth:`StateCheckpointer.check` (called every step) turns a failed
save into a :class:`CheckpointSaveError` naming the step and path, and orbax deletes old steps
only after a new one is complete, so the last complete checkpoint survives. Resuming
(:meth:`StateCheckpointer.restore_latest`) reads the newest checkpoint in full (orbax checks its
checksums); an unreadable one is moved aside to ``<workdir>/checkpoints.corrupt/`` (never
deleted) with a warning naming its step and path, and the previous intact one is used.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from peft_jax.common.errors import RunFailure
from peft_jax.common.trees import path_name

PyTree = Any
CONFIG_FILE = 'config.json'
# Keys that may change between a run and its resumption: they do not change the numbers.
# (total_steps is not among them: it shapes the learning-rate schedule.)
RESUME_SAFE_KEYS = (
  'log_every',
  'checkpoint.every_steps',
  'checkpoint.keep',
  'export',
  'progress_bar',
  'throttle_s',
  'peak_flops_per_device',
  'guard',
  'metric_timeout_s',
  'data.allow_changed_data',
  'stop_step',  # where a call stops, not what the run computes
)
# Keys added to the config after runs were already written, with the value that reproduces the
# older behaviour: a config (saved or new) lacking one of them is read as holding this value.
ADDED_KEYS = {
  'data.drop_truncated': False,
  'stop_step': 0,
  'model.scan_layers': False,
  'data.num_shards': 0,
}
# Keys added after the arena's stage digests were in use, left out of a stage's config slice while
# they hold their default (peft_jax.arena.pipeline), so an older study's stages are still reused.
SLICE_NEUTRAL_DEFAULTS = {'model.scan_layers': False, 'data.num_shards': 0}
# The fingerprint of the training data (path, size, content hash) the trainer adds to the config
# it guards: a changed data file is refused like a changed config key.
FINGERPRINT_KEY = 'data_fingerprint'
CORRUPT_DIR = 'checkpoints.corrupt'


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


class CheckpointSaveError(RunFailure, RuntimeError):
  """A checkpoint could not be written; the run stops, older complete checkpoints are kept."""


class CheckpointCorruptError(RunFailure, RuntimeError):
  """No checkpoint of the workdir can be read."""


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or one it was raised from) is ENOSPC, as an ``OSError`` or as the
  tensorstore/orbax message carrying ``os_error_code='28'``."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    text = str(error)
    if 'No space left on device' in text or "os_error_code='28'" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def _save_error(
  step: int, directory: str, error: BaseException, kept: Optional[int]
) -> CheckpointSaveError:
  path = os.path.join(directory, str(step))
  what = 'disk full / cannot write' if is_disk_full(error) else 'cannot write'
  detail = str(error)
  if len(detail) > 400:
    detail = detail[:400] + '...'
  kept_text = (
    f'the last complete checkpoint (step {kept}) is kept in {directory}, and a '
    'rerun of the same command resumes from it'
    if kept is not None
    else f'no complete checkpoint exists yet in {directory}, so a rerun starts afresh'
  )
  return CheckpointSaveError(
    f'checkpoint save of step {step} failed: {what} {path}: '
    f'{type(error).__name__}: {detail}. The run stops; {kept_text}.'
  )


# The two iterator states: data.sft.SFTIterator's and (per-process loading)
# data.sft.ShardedSFTIterator's.
_DATA_STATE_KEYS = (('epoch', 'index', 'seed'), ('step', 'seed', 'num_shards'))


def _valid_data_state(data: Any) -> bool:
  return isinstance(data, Mapping) and any(
    all(isinstance(data.get(k), int) for k in keys) for keys in _DATA_STATE_KEYS
  )


class StateCheckpointer:
  """Periodic, keep-N checkpoints of ``(state, iterator state)`` under ``directory``."""

  def __init__(self, directory: str, *, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._saving: Optional[int] = None  # step of the background save not yet checked

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: PyTree, data_state: Mapping[str, Any]) -> None:
    if self._saving is not None:
      self.wait()  # orbax waits for the previous save anyway; this names its step if it failed
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(_flat(state)), data=ocp.args.JsonSave(dict(data_state))
        ),
      )
    except Exception as error:  # pylint: disable=broad-except
      raise _save_error(step, self.directory, error, self.manager.latest_step()) from error
    self._saving = step

  def check(self) -> None:
    """Raises :class:`CheckpointSaveError` when the last background save has failed (a save
    still running is checked on a later call)."""
    if self._saving is None or self.manager.is_saving_in_progress():
      return
    self.wait()

  def save_now(self, step: int, state: PyTree, data_state: Mapping[str, Any]) -> None:
    """Saves ``step`` unless it is already saved, and waits until it is complete."""
    if step not in self.manager.all_steps():
      self.save(step, state, data_state)
    self.wait()

  def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict]:
    """Restores step ``step`` onto the shapes/shardings of the live state ``like``."""
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(_flat(like))), data=ocp.args.JsonRestore()
      ),
    )
    return _unflat(restored['state'], like), dict(restored['data'])

  def restore_latest(self, like: PyTree) -> tuple[int, PyTree, Optional[dict]]:
    """``(step, state, data_state)`` of the newest checkpoint that reads back intact, or
    ``(0, like, None)`` when there is none.

    Every unreadable newer checkpoint is moved to ``<workdir>/checkpoints.corrupt/`` (kept for
    inspection, never deleted) with a warning naming its step, path and error.

    Raises:
      CheckpointCorruptError: checkpoints exist but none reads back (each one named).
    """
    bad = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      path = os.path.join(self.directory, str(step))
      try:
        state, data_state = self.restore(step, like)
        if not _valid_data_state(data_state):
          raise ValueError(
            f'its data-iterator state {data_state!r} lacks integer "epoch", "index", "seed" '
            '(or "step", "seed", "num_shards")'
          )
      except Exception as error:  # pylint: disable=broad-except
        bad.append((step, path, f'{type(error).__name__}: {str(error)[:300]}'))
        continue
      if bad:
        self._quarantine(bad, step)
      return step, state, data_state
    if bad:
      details = '; '.join(f'step {s} at {p}: {e}' for s, p, e in bad)
      raise CheckpointCorruptError(
        f'no checkpoint in {self.directory} can be read ({details}). Nothing was changed; '
        'move the directory aside to start afresh, or restore it from a backup.'
      )
    return 0, like, None

  def _quarantine(self, bad, good_step: int) -> None:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices('peft_jax_restore_latest')  # all have read
    target_root = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
    for step, path, error in bad:
      target = os.path.join(target_root, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      if jax.process_index() == 0:
        os.makedirs(target_root, exist_ok=True)
        shutil.move(path, target)
      logging.warning(
        'checkpoint step %d at %s is unreadable (%s); falling back to the previous '
        'intact checkpoint, step %d. The bad one is moved (not deleted) to %s.',
        step,
        path,
        error,
        good_step,
        target,
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices('peft_jax_quarantine')
    self.manager.reload()

  def latest_complete_step(self) -> Optional[int]:
    """The newest complete checkpoint, after any save in flight ends (a failed one is not
    counted)."""
    try:
      self.manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # orbax drops the failed step from its list; check() reports the failure
    return self.manager.latest_step()

  def wait(self) -> None:
    """Waits for the save in flight; raises :class:`CheckpointSaveError` if it failed."""
    step, self._saving = self._saving, None
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      raise _save_error(step, self.directory, error, self.manager.latest_step()) from error

  def close(self) -> None:
    try:
      self.wait()
    except CheckpointSaveError:
      try:
        self.manager.close()  # re-raises the same failed save: already reported
      except Exception:  # pylint: disable=broad-except
        pass
      raise
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
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
    _flat(like),
  )
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


def _read_json(path: str, what: str) -> Any:
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as error:
    line = getattr(error, 'lineno', '?')
    column = getattr(error, 'colno', '?')
    raise ValueError(
      f'{path} line {line} column {column}: not valid JSON '
      f'({getattr(error, "msg", error)}); expected {what}. Found: '
      f'{text[:80]!r}'
    ) from error


def check_or_write_config(
  workdir: str, config_dict: Mapping[str, Any], *, allow_changed: tuple[str, ...] = ()
) -> None:
  """Writes ``<workdir>/config.json`` or, when one exists, refuses a resume with another config.

  ``config_dict`` may hold a :data:`FINGERPRINT_KEY` entry (the training data's path, size and
  content hash): a changed data file is then refused like a changed key.

  Args:
    workdir: the run directory.
    config_dict: the resolved config (plus the data fingerprint).
    allow_changed: key prefixes that may differ anyway (logged as a warning), e.g.
      ``('data_fingerprint',)`` with ``config.data.allow_changed_data``.
  Raises:
    ValueError: listing every key (outside :data:`RESUME_SAFE_KEYS`) whose value differs, with
      the saved and the new value; or a saved config.json that is not JSON (naming it).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(json.dumps(config_dict, default=str))
  if os.path.exists(path):
    saved = _read_json(path, 'the JSON object launch.train wrote for this run')
    if not isinstance(saved, Mapping):
      raise ValueError(
        f'{path}: expected a JSON object (the run config), found {type(saved).__name__}'
      )
    old_flat, new_flat = _flatten_config(saved), _flatten_config(new)
    for key, value in ADDED_KEYS.items():  # absent (an older run, or a config built without
      old_flat.setdefault(key, value)  # the key) reads as the behaviour-preserving value
      new_flat.setdefault(key, value)
    if not any(k.startswith(FINGERPRINT_KEY + '.') for k in old_flat):
      # A run written before data fingerprints existed: record this one from now on.
      for key in [k for k in new_flat if k.startswith(FINGERPRINT_KEY + '.')]:
        old_flat[key] = new_flat[key]
    differing = sorted(
      k
      for k in set(old_flat) | set(new_flat)
      if not _safe(k) and old_flat.get(k, '<absent>') != new_flat.get(k, '<absent>')
    )
    allowed = [k for k in differing if any(k == a or k.startswith(a + '.') for a in allow_changed)]
    if allowed:
      logging.warning(
        'workdir %s: resuming although %s changed (allowed by the config): %s',
        workdir,
        ', '.join(allowed),
        '; '.join(
          f'{k}: saved {old_flat.get(k, "<absent>")!r} -> new {new_flat.get(k, "<absent>")!r}'
          for k in allowed
        ),
      )
    differing = [k for k in differing if k not in allowed]
    if differing:
      details = '; '.join(
        f'{k}: saved {old_flat.get(k, "<absent>")!r} != new {new_flat.get(k, "<absent>")!r}'
        for k in differing
      )
      hint = ''
      if any(k.startswith(FINGERPRINT_KEY + '.') for k in differing):
        hint = (
          ' The training data changed since this run started (path, size or content '
          'hash); pass --config.data.allow_changed_data=True to resume on the new data '
          'anyway.'
        )
      raise ValueError(
        f'workdir {workdir!r} holds a run with a different config; refusing to '
        f'resume. Differing keys: {details}.{hint} Use a new workdir (keys that '
        f'may change on resume: {RESUME_SAFE_KEYS})'
      )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
