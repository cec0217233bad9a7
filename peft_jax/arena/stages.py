"""Resumable stages: each stage writes its outputs into its own folder, atomically.

A stage ``name`` owns ``<workdir>/stages/<name>/``. It runs in a temporary sibling folder and is
renamed into place only when it returns, with its JSON result as ``result.json``; so a stage
folder either holds a complete result or does not exist, and rerunning the pipeline skips every
stage whose folder exists. Stages that manage their own resumable state (training, which resumes
from its orbax checkpoints) run in place with ``in_place=True``; their ``result.json`` is still
written atomically last and is the only completion marker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional

from peft_jax.common import files

RESULT_FILE = 'result.json'


class StageRunner:
  """Runs named stages under ``<workdir>/stages`` and skips completed ones.

  Attributes:
    timings: ``{stage: seconds}`` of the stages run (or recorded) so far.
    ran / skipped: names of stages executed and skipped by this runner.
  """

  def __init__(self, workdir: str, progress: Optional[Any] = None):
    self.root = os.path.join(workdir, 'stages')
    os.makedirs(self.root, exist_ok=True)
    self.progress = progress
    self.timings: dict[str, float] = {}
    self.ran: list[str] = []
    self.skipped: list[str] = []

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

  def run(
    self, name: str, fn: Callable[[str], Mapping[str, Any]], *, in_place: bool = False
  ) -> dict:
    """Runs ``fn(out_dir) -> result`` unless stage ``name`` already completed.

    Args:
      name: stage name (a folder name; '/' is not allowed).
      fn: writes any files into ``out_dir`` and returns a JSON-serialisable dict.
      in_place: run directly in the final folder (for stages that resume by themselves).
    Returns:
      The stage result (loaded from disk when skipped), with ``'seconds'`` added.
    """
    if '/' in name or not name:
      raise ValueError(f'invalid stage name {name!r}')
    final = self.path(name)
    if self.done(name):
      self.skipped.append(name)
      result = self.result(name)
      self.timings[name] = float(result.get('seconds', 0.0))
      self._tick(name, skipped=True)
      return result
    work = final if in_place else os.path.join(self.root, f'.{name}.tmp-{os.getpid()}')
    if not in_place:
      shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    start = time.perf_counter()
    result = dict(fn(work))
    result['seconds'] = time.perf_counter() - start
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
      self.progress.set_postfix_str(f'{name} ({"skipped" if skipped else "done"})')
      self.progress.update(1)
