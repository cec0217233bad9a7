"""Multi-process start-up and per-process data placement.

Each process runs the same program over a global mesh (``jax.devices()`` spans all processes).
Every process loads only its own rows of a global batch; :func:`global_batch` stitches them into
one global ``jax.Array`` with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from peft_jax.parallel.sharding import batch_sharding

# Environment variables read when the arguments are not given (flags take precedence).
ENV_COORDINATOR = 'PEFT_JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'PEFT_JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'PEFT_JAX_PROCESS_ID'


def initialize_distributed(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  initialization_timeout: int = 120,
) -> bool:
  """Starts ``jax.distributed`` when a multi-process run is requested; a no-op otherwise.

  Values come from the arguments, else from ``PEFT_JAX_COORDINATOR_ADDRESS``,
  ``PEFT_JAX_NUM_PROCESSES`` and ``PEFT_JAX_PROCESS_ID``. On CPU the collectives run over gloo
  (jax's default). Must be called before any JAX computation.

  Returns:
    True when ``jax.distributed.initialize`` was called.
  Raises:
    ValueError: a coordinator address without a process count/id (or the reverse), or an id out
      of range.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  if coordinator_address is None and num_processes in (None, 1):
    return False
  missing = [
    name
    for name, v in (
      ('coordinator_address', coordinator_address),
      ('num_processes', num_processes),
      ('process_id', process_id),
    )
    if v is None
  ]
  if missing:
    raise ValueError(
      f'multi-process start needs coordinator_address, num_processes and '
      f'process_id; missing: {missing} (flags or env {ENV_COORDINATOR}, '
      f'{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})'
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(f'process_id={process_id} must be in [0, num_processes={num_processes})')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=initialization_timeout,
  )
  return True


def process_batch_slice(
  global_batch_size: int, process_index: Optional[int] = None, process_count: Optional[int] = None
) -> slice:
  """Rows ``[p * B/P, (p+1) * B/P)`` of a global batch that process ``p`` loads."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(
      f'global batch size {global_batch_size} is not divisible by the {process_count} processes'
    )
  per = global_batch_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


def global_batch(
  local_batch: Mapping[str, np.ndarray],
  mesh: Mesh,
  global_batch_size: int,
  rules: Optional[Sequence[Any]] = None,
) -> dict[str, jax.Array]:
  """Builds global arrays ``[global_batch, ...]`` from this process's rows (each
  ``[global_batch / process_count, ...]``), placed as ``batch_sharding(mesh, ndim, rules)``
  (default rules: batch split over ``('data', 'fsdp')``)."""
  out = {}
  for name, local in local_batch.items():
    local = np.asarray(local)
    shape = (global_batch_size,) + local.shape[1:]
    out[name] = jax.make_array_from_process_local_data(
      batch_sharding(mesh, local.ndim, rules), local, shape
    )
  return out
