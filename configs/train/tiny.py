"""Tiny random Llama-style decoder (d 32, 2 layers, vocab 64) for each adapter method; trains in
seconds on CPU.

  python -m launch.train --config=configs/train/tiny.py:lora --workdir=/tmp/tiny_lora \
      --config.data.path=/path/to/train.jsonl

``arg`` is the method: full, lora, dora, pissa, vera, oft, miss or disel (default lora).
"""

from peft_jax.adapters.api import method_names
from peft_jax.train.config import default_config

# Method hyper-parameters sized for the tiny model (q_proj [32, 32], v_proj [32, 16]).
METHOD_KWARGS = {
  'full': {},
  'lora': dict(rank=4, alpha=8.0),
  'dora': dict(rank=4, alpha=8.0),
  'pissa': dict(rank=4, alpha=8.0),
  'vera': dict(rank=8, d_initial=0.1),
  'oft': dict(block_size=8),
  'miss': dict(rank=4),
  # DISeL reference: gates learn at 5x the base lr and get no weight decay (the method's
  # param_groups; docs/METHODS.md).
  'disel': dict(rank=4, alpha=8.0, gate_bias_init=-3.0, gate_lr_mult=5.0),
}


def get_config(arg=None):
  method = arg or 'lora'
  if method not in method_names():
    raise ValueError(f'configs/train/tiny.py:{method}: method must be one of {method_names()}')
  config = default_config()
  config.adapter.method = method
  config.adapter.kwargs = METHOD_KWARGS[method]
  if method == 'full':
    config.optimizer.peak_lr = 1e-3
  return config
