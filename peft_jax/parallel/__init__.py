"""Parallelism: the ('data', 'fsdp', 'tensor') mesh, logical-axis rules, shardings, multi-host."""

from peft_jax.parallel.distributed import global_batch, initialize_distributed, process_batch_slice
from peft_jax.parallel.sharding import (
  BATCH_MESH_AXES,
  DEFAULT_LOGICAL_AXIS_RULES,
  MESH_AXES,
  batch_sharding,
  logical_to_sharding,
  logical_to_spec,
  make_mesh,
  named_leaves,
  normalize_rules,
  opt_state_shardings,
  path_name,
  replicated,
  shardings_like,
)
