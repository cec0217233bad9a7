"""Plans a training step for a mesh this machine does not have: per-device memory, shardings,
FLOPs, from XLA's analysis of the real compiled step over fake CPU devices (no weights read).

  python -m launch.plan --model=llama2-7b --method=lora --mesh=data:32,fsdp:8 \\
      --batch=256 --seq=2048 --dtype=bf16 --out=/tmp/plan.json

``--model``: llama2-7b, llama3-8b, qwen2.5-7b, gemma2-9b, an HF ``config.json`` or a checkpoint
directory. ``--config=configs/train/...`` starts from a training config (optimizer, adapter
kwargs, rules); the flags above override it. Prints the report and writes it as JSON (``--out``).

The mesh needs ``data·fsdp·tensor`` devices. This module sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (and ``JAX_PLATFORMS=cpu``) from
``--mesh`` before JAX is imported, so the step is compiled for N CPU devices whatever
accelerator the host has; nothing else in the process may import JAX first (docs/SCALE.md). It
also selects XLA:CPU's memory-minimising scheduler
(``--xla_cpu_enable_concurrency_optimized_scheduler=false``, unless XLA_FLAGS sets it).
"""

import os
import re
import sys


def _fake_devices_from_argv(argv) -> None:
  """Sets the fake CPU device count from ``--mesh`` before JAX starts (see module docstring)."""
  mesh = None
  for i, arg in enumerate(argv):
    if arg.startswith('--mesh='):
      mesh = arg.split('=', 1)[1]
    elif arg == '--mesh' and i + 1 < len(argv):
      mesh = argv[i + 1]
  if not mesh:
    return  # --mesh is required; absl reports it
  count = 1
  for size in re.findall(r':\s*(\d+)', mesh):
    count *= int(size)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', os.environ.get('XLA_FLAGS', ''))
  flags += f' --xla_force_host_platform_device_count={count}'
  if 'xla_cpu_enable_concurrency_optimized_scheduler' not in flags:
    # XLA:CPU's default scheduler runs ops early for concurrency, so every FSDP all-gather of a
    # weight is live at once; the memory-minimising one orders them as an accelerator would.
    flags += ' --xla_cpu_enable_concurrency_optimized_scheduler=false'
  os.environ['XLA_FLAGS'] = flags.strip()
  os.environ['JAX_PLATFORMS'] = 'cpu'


if 'jax' not in sys.modules:
  _fake_devices_from_argv(sys.argv)

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from peft_jax.common import cli, files  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Optional training config to start from (default: the default config).'
)
_MODEL = flags.DEFINE_string('model', None, 'Named model, HF config.json or checkpoint dir.')
_MESH = flags.DEFINE_string('mesh', None, 'Mesh sizes, e.g. data:32,fsdp:8 (tensor:N too).')
_BATCH = flags.DEFINE_integer('batch', None, 'Global batch size (rows per step).')
_SEQ = flags.DEFINE_integer('seq', None, 'Sequence length.')
_METHOD = flags.DEFINE_string('method', 'lora', 'Adapter method (peft_jax.adapters.METHODS).')
_RANK = flags.DEFINE_integer('rank', None, 'Adapter rank (LoRA family); alpha = 2 x rank.')
_TARGETS = flags.DEFINE_string(
  'targets', None, "Comma-separated module names, a regex or 'all-linear' (default: q_proj,v_proj)."
)
_DTYPE = flags.DEFINE_enum('dtype', 'bf16', ['bf16', 'f32'], 'Compute dtype.')
_REMAT = flags.DEFINE_boolean('remat', False, 'Rematerialise each layer in the backward pass.')
_SCAN = flags.DEFINE_enum(
  'scan_layers',
  'false',
  ['false', 'true', 'auto'],
  'Scan over the layers (ModelConfig.scan_layers).',
)
_ACCUM = flags.DEFINE_integer('grad_accum', 1, 'Microbatches per step.')
_OUT = flags.DEFINE_string('out', None, 'Write the report here as JSON (atomically).')
flags.mark_flags_as_required(['model', 'mesh', 'batch', 'seq'])


def main(argv):
  del argv
  from peft_jax.train import plan  # pylint: disable=g-import-not-at-top

  kwargs = None
  if _RANK.value is not None:
    kwargs = dict(rank=_RANK.value, alpha=2.0 * _RANK.value)
  config = plan.planner_config(
    _MODEL.value,
    _MESH.value,
    batch_size=_BATCH.value,
    seq_len=_SEQ.value,
    method=_METHOD.value,
    method_kwargs=kwargs,
    targets=_TARGETS.value,
    dtype=_DTYPE.value,
    remat=_REMAT.value,
    scan_layers={'false': False, 'true': True, 'auto': 'auto'}[_SCAN.value],
    grad_accum_steps=_ACCUM.value,
    base=_CONFIG.value,
  )
  report = plan.plan(config, name=_MODEL.value)
  print(plan.format_report(report))
  if _OUT.value:
    print(f'wrote {files.write_json(_OUT.value, report)}')


if __name__ == '__main__':
  cli.run(main)
