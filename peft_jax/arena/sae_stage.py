"""The arena's ``sae`` stage: the delta-activation SAE study (``peft_jax.sae.study``, docs/SAE.md)
on the arena's base and target data (``config.sae``; off when absent or ``enabled=False``).

The stage trains its own LoRA adapters at ``config.sae.ranks`` on the arena's target SFT data
(the sweep's validation rows held out, the last ``config.sae.data.activation_rows`` rows held out
again for the activations), collects base and delta activations at ``config.sae.sites``, trains
one SAE per (site, adapter), one base SAE per site (and a second from another seed), and writes
the study's ``sae_study.json`` as its ``result.json``. It runs in place: the study resumes every
finished step of an interrupted folder with the same record (adapters from their checkpoints,
SAEs from theirs), and a folder of another record is deleted first.

Its fingerprint is the world slice (base identity, world, target) and the resolved study config
(:func:`study_config`), which holds every setting the study reads, the data path included; the
stage has no input stages (it trains its own adapters), so no other stage's change reruns it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import ml_collections

from peft_jax.arena import stages as stages_lib
from peft_jax.sae import study as sae_study
from peft_jax.train import config as train_config_lib
from peft_jax.train import trainer

STAGE = 'sae'
STUDY_DIR = 'study'
# The keys of config.sae (besides `enabled`), each passed to the study as it is.
KEYS = (
  'ranks',
  'alpha_over_rank',
  'targets',
  'sites',
  'train',
  'data',
  'memory_budget_mb',
  'sae',
  'base_reseed',
  'compare',
)


def settings(config: ml_collections.ConfigDict) -> Any:
  return config.get('sae') or None


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether the config asks for the stage: ``config.sae`` present with ``enabled=True``."""
  found = settings(config)
  return bool(found and found.get('enabled', False))


def study_config(config: ml_collections.ConfigDict, plan) -> ml_collections.ConfigDict:
  """The ``peft_jax.sae.study`` config of the stage, from ``config.sae`` and the study plan
  (the base directory, the target's SFT data); errors name the missing or unknown key."""
  found = settings(config)
  stages_lib.check_keys(found, KEYS, 'config.sae')
  ranks = [int(r) for r in found.ranks]
  if not ranks or min(ranks) < 1 or len(set(ranks)) != len(ranks):
    raise ValueError(f'config.sae.ranks={tuple(found.ranks)!r}: distinct positive ranks needed')
  if len(found.sites) < 1:
    raise ValueError('config.sae.sites is empty; give at least one site (docs/SAE.md, "Sites")')
  c = ml_collections.ConfigDict()
  c.base = str(plan.base_dir)
  c.world = 'custom'  # the arena's own target data, whatever its world
  c.target = str(config.target)
  c.data_path = str(plan.target_train_path)
  c.seed = int(config.seed)
  c.adapters = ml_collections.ConfigDict(
    dict(
      ranks=tuple(ranks),
      alpha_over_rank=float(found.alpha_over_rank),
      targets=tuple(found.targets),
      target_regex='',
      paths={},
    )
  )
  c.train = ml_collections.ConfigDict(found.train.to_dict())
  c.data = ml_collections.ConfigDict(found.data.to_dict())
  c.sites = tuple(found.sites)
  c.memory_budget_mb = float(found.memory_budget_mb)
  c.sae = ml_collections.ConfigDict(found.sae.to_dict())
  c.base_reseed = bool(found.base_reseed)
  c.compare = ml_collections.ConfigDict(found.compare.to_dict())
  c.mesh_shape = tuple(config.mesh_shape)
  c.progress = False
  return c


def fingerprint(config: ml_collections.ConfigDict, plan, world: Mapping[str, Any]) -> dict:
  """The stage's config slice: the world slice and the study config (without ``progress``,
  which changes no number)."""
  c = study_config(config, plan).to_dict()
  c.pop('progress')
  return dict(world, study=c)


def train_adapter(overrides: dict, run_dir: str):
  """``trainer.train`` on the default train config with the study's overrides (resumable)."""
  c = train_config_lib.with_overrides(train_config_lib.default_config(), overrides, 'config.sae')
  return trainer.train(c, run_dir)


def stage_sae(config: ml_collections.ConfigDict, plan, out_dir: str, log: Callable) -> dict:
  """Runs (or resumes) the study in ``out_dir/study``; returns its ``sae_study.json`` dict with
  the study folder (relative to the stage folder)."""
  result = sae_study.run_sae_study(
    study_config(config, plan),
    os.path.join(out_dir, STUDY_DIR),
    train_fn=train_adapter,
    log=lambda message: log(f'sae: {message}'),
  )
  return dict(result, study_dir=STUDY_DIR)


def add_stage(graph, config: ml_collections.ConfigDict, plan, slices: Mapping[str, dict]) -> list:
  """Declares the stage on ``graph`` when enabled; returns its name (or nothing)."""
  if not enabled(config):
    return []
  graph.add(
    STAGE,
    fingerprint(config, plan, slices['world']),
    fn=lambda d: stage_sae(config, plan, d, graph.runner.log or (lambda message: None)),
    in_place=True,
    holds='',  # no method's weights stay in memory while the study runs
  )
  return [STAGE]
