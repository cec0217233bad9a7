"""Progress and ETA of a study's stages, from the stage times measured so far.

At the start the runner's plan says which stages will run (the others are reused and cost about
nothing). After each stage that ran, :class:`Eta` logs one line::

  [5/23] eval_lora 312s | elapsed 21m04s | ETA 1h12m (18 stages to run)

The estimate of a stage still to run is the mean time of the stages of its kind (the name's
prefix: ``sweep``, ``train``, ``eval``, ``geometry``, ``paths``, ...) measured so far; a kind not
yet measured takes the mean of every stage measured so far. The ETA is rough early (one measured kind) and
sharpens as kinds are met.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from peft_jax.common import memory


def kind_of(stage: str) -> str:
  return stage.split('_', 1)[0] if stage != 'base_eval' else stage


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


def estimate(remaining: Sequence[str], measured: dict[str, float]) -> Optional[float]:
  """Seconds the ``remaining`` stages should take (module docstring); None: nothing measured."""
  if not measured:
    return None
  by_kind: dict[str, list[float]] = {}
  for name, seconds in measured.items():
    by_kind.setdefault(kind_of(name), []).append(seconds)
  overall = sum(measured.values()) / len(measured)
  total = 0.0
  for name in remaining:
    times = by_kind.get(kind_of(name))
    if times:
      total += sum(times) / len(times)
    else:
      total += overall
  return total


class Eta:
  """Logs ``[k/N] stage seconds | elapsed | ETA`` after each stage that ran."""

  def __init__(self, decisions, log: Optional[Callable[[str], None]]):
    self.to_run = [d.name for d in decisions if d.action != 'reuse' and d.name != 'report']
    self.log = log
    self.start = time.perf_counter()
    self.measured: dict[str, float] = {}
    if log is not None:
      log(
        f'{len(self.to_run)} of {len(decisions)} stages to run'
        + (f': {", ".join(self.to_run)}' if len(self.to_run) <= 12 else '')
      )

  def done(self, name: str, runner) -> None:
    if name not in runner.ran or name not in self.to_run:
      return
    self.measured[name] = float(runner.timings[name])
    remaining = [n for n in self.to_run if n not in self.measured]
    eta = estimate(remaining, self.measured)
    if self.log is not None:
      self.log(
        f'[{len(self.measured)}/{len(self.to_run)}] {name} {format_seconds(self.measured[name])}'
        f' | elapsed {format_seconds(time.perf_counter() - self.start)}'
        f' | ETA {format_seconds(eta) if eta is not None else "?"}'
        f' ({len(remaining)} stages to run)'
        f' | {memory.describe(memory.snapshot())}'
      )
