"""Resumable, fingerprinted stages: each stage writes its outputs into its own folder, atomically,
and is reused on a rerun only when what it was computed from is unchanged.

A stage ``name`` owns ``<workdir>/stages/<name>/``. It declares what it depends on: a *config
slice* (exactly the settings it reads, a JSON-able dict) and its *input stages*. Its record,
``stage.json``, holds that slice, its digest and the digest of every input stage's
``result.json``. A rerun reuses a completed stage only when its config digest and every input
digest are unchanged; otherwise it recomputes it, and so everything downstream (whose input
digests then change), and says which and why. :meth:`StageRunner.plan` predicts this without
running anything (``launch.arena --dry_run``).

Non in-place stages run in a temporary sibling folder renamed into place when they return, so a
stage folder either holds a complete result or does not exist. Stages that manage their own
resumable state (training, which resumes from its orbax checkpoints) run in place with
``in_place=True``: an unfinished folder with the same record is resumed, one with another record
is deleted first (never resume a run made under another config). ``result.json`` is written
atomically last and is the completion marker. Temporary folders left by a killed run are removed
when the next runner starts (a workdir has one writer: ``peft_jax.common.lock``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from peft_jax.common import files, memory

RESULT_FILE = 'result.json'
RECORD_FILE = 'stage.json'
TMP_MARK = '.tmp-'


def check_keys(
  node: Mapping[str, Any], keys: Sequence[str], where: str, also: Sequence[str] = ('enabled',)
) -> None:
  """Raises ``KeyError`` naming ``where`` when ``node`` has keys outside ``keys`` and ``also``
  or lacks any of ``keys``."""
  given = set(node.keys()) - set(also)
  unknown, missing = sorted(given - set(keys)), [k for k in keys if k not in given]
  if unknown or missing:
    optional = ''.join(f" and '{k}'" for k in also)
    raise KeyError(
      f'{where}: unknown keys {unknown}, missing keys {missing}; valid: {list(keys)}{optional}'
    )


def canonical_json(value: Any) -> str:
  """Deterministic JSON (sorted keys, tuples as lists) of a config slice."""
  return json.dumps(value, sort_keys=True, separators=(',', ':'), default=_jsonable)


def _jsonable(value):
  if hasattr(value, 'to_dict'):
    return value.to_dict()
  if isinstance(value, (set, frozenset)):
    return sorted(value)
  if hasattr(value, 'tolist'):
    return value.tolist()
  return str(value)


def digest(value: Any) -> str:
  return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def config_changes(old: Any, new: Any, prefix: str = '', limit: int = 6) -> list[str]:
  """``['key.path: old -> new', ...]`` between two JSON-able values (at most ``limit``)."""
  out: list[str] = []

  def walk(a, b, path):
    if len(out) >= limit:
      return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      for key in sorted(set(a) | set(b), key=str):
        sub = f'{path}.{key}' if path else str(key)
        if key not in a:
          out.append(f'{sub}: (absent) -> {_short(b[key])}')
        elif key not in b:
          out.append(f'{sub}: {_short(a[key])} -> (absent)')
        else:
          walk(a[key], b[key], sub)
    elif canonical_json(a) != canonical_json(b):
      out.append(f'{path or "(value)"}: {_short(a)} -> {_short(b)}')

  walk(json.loads(canonical_json(old)), json.loads(canonical_json(new)), prefix)
  return out


def _short(value: Any, width: int = 60) -> str:
  text = canonical_json(value)
  return text if len(text) <= width else text[: width - 3] + '...'


@dataclasses.dataclass(frozen=True)
class Decision:
  """What a runner does with a stage: ``action`` is 'reuse', 'run' or 'resume'."""

  name: str
  action: str
  reason: str

  def line(self) -> str:
    return f'{self.name:<24} {self.action:<7} {self.reason}'


class StageRunner:
  """Runs named stages under ``<workdir>/stages``; reuses completed ones whose record matches.

  Attributes:
    timings: ``{stage: seconds}`` of the stages run (or reused) so far.
    ran / skipped: names of stages executed and reused by this runner.
    decisions: the :class:`Decision` of every stage met, in order.
  """

  def __init__(
    self,
    workdir: str,
    progress: Optional[Any] = None,
    log: Optional[Callable[[str], None]] = None,
    *,
    readonly: bool = False,
  ):
    """``readonly``: only :meth:`decide` / :meth:`result` (planning); creates and removes
    nothing."""
    self.root = os.path.join(workdir, 'stages')
    if not readonly:
      os.makedirs(self.root, exist_ok=True)
    self.progress = progress
    self.log = log
    self.timings: dict[str, float] = {}
    self.ran: list[str] = []
    self.skipped: list[str] = []
    self.decisions: list[Decision] = []
    self.removed_orphans = [] if readonly else self._remove_orphans()

  def _remove_orphans(self) -> list[str]:
    """Deletes ``.<stage>.tmp-<pid>`` folders a killed run left (this runner is the only writer)."""
    removed = []
    for entry in sorted(os.listdir(self.root)):
      if entry.startswith('.') and TMP_MARK in entry:
        shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)
        removed.append(entry)
    return removed

  def path(self, name: str) -> str:
    return os.path.join(self.root, name)

  def done(self, name: str) -> bool:
    return os.path.exists(os.path.join(self.path(name), RESULT_FILE))

  def result(self, name: str) -> dict:
    """The saved result of a completed stage."""
    path = os.path.join(self.path(name), RESULT_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f'stage {name!r} has not completed (no {path})')
    with open(path) as f:
      return json.load(f)

  def record(self, name: str) -> Optional[dict]:
    path = os.path.join(self.path(name), RECORD_FILE)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def _input_digests(self, inputs: Sequence[str]) -> dict[str, Optional[str]]:
    out = {}
    for name in inputs:
      path = os.path.join(self.path(name), RESULT_FILE)
      out[name] = file_digest(path) if os.path.exists(path) else None
    return out

  def decide(
    self,
    name: str,
    config: Mapping[str, Any],
    inputs: Sequence[str] = (),
    *,
    in_place: bool = False,
    rerunning: Sequence[str] = (),
  ) -> Decision:
    """What :meth:`run` would do now. ``rerunning``: input stages known to be recomputed first
    (used by :meth:`plan`, where they have not run yet)."""
    record = self.record(name)
    exists = os.path.isdir(self.path(name))
    if not exists:
      return Decision(name, 'run', 'new')
    if record is None:
      return Decision(name, 'run', 'no stage record (made by an older version): recomputed')
    if record.get('config_digest') != digest(config):
      changes = config_changes(record.get('config', {}), config)
      return Decision(name, 'run', 'config changed: ' + '; '.join(changes or ['(digest)']))
    changed = [i for i in inputs if i in rerunning]
    stored = record.get('inputs', {})
    if set(stored) != set(inputs):
      return Decision(name, 'run', f'inputs changed: {sorted(stored)} -> {sorted(inputs)}')
    now = self._input_digests(inputs)
    changed += [i for i in inputs if i not in changed and now[i] != stored.get(i)]
    if changed:
      return Decision(name, 'run', f'input stage changed: {", ".join(changed)}')
    if not self.done(name):
      if in_place:
        return Decision(name, 'resume', 'unfinished, same config: resumed')
      return Decision(name, 'run', 'unfinished')
    return Decision(name, 'reuse', 'unchanged')

  def run(
    self,
    name: str,
    fn: Callable[[str], Mapping[str, Any]],
    *,
    config: Mapping[str, Any],
    inputs: Sequence[str] = (),
    in_place: bool = False,
  ) -> dict:
    """Runs ``fn(out_dir) -> result`` unless stage ``name`` completed under the same record.

    Args:
      name: stage name (a folder name; '/' is not allowed).
      fn: writes any files into ``out_dir`` and returns a JSON-serialisable dict.
      config: the config slice the stage depends on (JSON-able).
      inputs: names of the stages whose results it reads (completed before this one).
      in_place: run directly in the final folder (for stages that resume by themselves).
    Returns:
      The stage result (loaded from disk when reused), with ``'seconds'`` added.
    """
    if '/' in name or not name or name.startswith('.'):
      raise ValueError(f'invalid stage name {name!r}')
    missing = [i for i in inputs if not self.done(i)]
    if missing:
      raise RuntimeError(f'stage {name!r} runs before its input stages {missing} completed')
    decision = self.decide(name, config, inputs, in_place=in_place)
    self.decisions.append(decision)
    if self.log is not None and decision.action != 'reuse':
      self.log(f'stage {decision.line()}')
    final = self.path(name)
    if decision.action == 'reuse':
      self.skipped.append(name)
      result = self.result(name)
      self.timings[name] = float(result.get('seconds', 0.0))
      self._tick(name, skipped=True)
      return result
    record = {
      'stage': name,
      'config': json.loads(canonical_json(config)),
      'config_digest': digest(config),
      'inputs': self._input_digests(inputs),
      'reason': decision.reason,
      'started': time.time(),
    }
    if in_place:
      if decision.action != 'resume':
        shutil.rmtree(final, ignore_errors=True)  # never resume a run made under another record
      work = final
    else:
      work = os.path.join(self.root, f'.{name}{TMP_MARK}{os.getpid()}')
      shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    if in_place and decision.action == 'resume':
      record['resumed'] = int((self.record(name) or {}).get('resumed', 0)) + 1
    files.write_json(os.path.join(work, RECORD_FILE), record)
    start = time.perf_counter()
    try:
      result = dict(fn(work))
    except BaseException:
      if not in_place:  # a failed stage leaves nothing behind; in-place stages resume
        shutil.rmtree(work, ignore_errors=True)
      raise
    result['seconds'] = time.perf_counter() - start
    memory.release()  # what the stage freed goes back to the OS before the next one loads
    result['memory'] = memory.snapshot()
    files.write_json(os.path.join(work, RESULT_FILE), result)
    if not in_place:
      shutil.rmtree(final, ignore_errors=True)
      os.replace(work, final)
    self.ran.append(name)
    self.timings[name] = result['seconds']
    self._tick(name, skipped=False)
    return result

  def _tick(self, name: str, skipped: bool) -> None:
    if self.progress is not None:
      self.progress.set_postfix_str(f'{name} ({"reused" if skipped else "done"})')
      self.progress.update(1)


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """A stage of a study: its name, config slice and input stages (for planning)."""

  name: str
  config: Mapping[str, Any]
  inputs: Sequence[str] = ()
  in_place: bool = False
  always: bool = False  # rebuilt on every run (the report)


def plan(runner: StageRunner, specs: Sequence[StageSpec]) -> list[Decision]:
  """The decision for every stage, in order, without running anything: a stage whose input is
  recomputed is recomputed too."""
  rerunning: set[str] = set()
  out = []
  for spec in specs:
    if spec.always:
      decision = Decision(spec.name, 'run', 'rebuilt on every run')
    else:
      decision = runner.decide(
        spec.name, spec.config, spec.inputs, in_place=spec.in_place, rerunning=tuple(rerunning)
      )
    if decision.action != 'reuse':
      rerunning.add(spec.name)
    out.append(decision)
  return out
