"""Fine-tune a Hugging Face checkpoint directory (Llama / Mistral / Qwen2 / Gemma 2) with its own
tokenizer and chat template.

  python -m launch.train --config=configs/train/hf.py:method=lora,rank=16 --workdir=/tmp/hf_lora \
      --config.model.path=/path/to/hf_dir --config.data.path=/path/to/train.jsonl

``arg``: comma-separated ``key=value`` with ``method`` (full, lora, dora, pissa, vera, oft, miss,
disel; default lora) and ``rank`` (default 16). ``runlocal`` shrinks the run for a CPU smoke test.
"""

from peft_jax.adapters.api import method_names
from peft_jax.train.config import default_config


def _parse(arg):
  options = {'method': 'lora', 'rank': '16', 'runlocal': ''}
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in options:
      raise ValueError(f'configs/train/hf.py: unknown option {key!r}; valid: {sorted(options)}')
    options[key] = value or 'True'
  return options


def get_config(arg=None):
  options = _parse(arg)
  method, rank = options['method'], int(options['rank'])
  if method not in method_names():
    raise ValueError(f'configs/train/hf.py: method {method!r} must be one of {method_names()}')
  config = default_config()
  config.model.path = ''  # required: --config.model.path=/path/to/hf_dir
  config.model.dtype = 'bfloat16'  # bf16 compute, float32 trainable params
  config.data.tokenizer = 'model'
  config.data.seq_len = 1024
  config.batch_size = 32
  config.total_steps = 1000
  config.adapter.target_regex = 'all-linear'
  config.optimizer.peak_lr = 1e-5 if method == 'full' else 2e-4
  config.optimizer.warmup_steps = 20  # ~2% of the run (DISeL's recipe)
  config.optimizer.weight_decay = 0.0
  config.checkpoint.every_steps = 200
  config.checkpoint.snapshot_every = 100
  config.log_every = 10
  config.peak_flops_per_device = 989e12  # H100 dense bf16; set to your accelerator's peak
  config.adapter.method = method
  kwargs = {
    'full': {},
    'lora': dict(rank=rank, alpha=2.0 * rank),
    'dora': dict(rank=rank, alpha=2.0 * rank),
    'pissa': dict(rank=rank, alpha=float(rank)),
    'vera': dict(rank=256),
    'oft': dict(block_size=32),
    'miss': dict(rank=64),
    'disel': dict(rank=rank, alpha=2.0 * rank, gate_bias_init=-3.0, gate_lr_mult=5.0),
  }[method]
  config.adapter.kwargs = kwargs
  if options['runlocal']:
    config.model.dtype = 'float32'
    config.data.seq_len = 64
    config.batch_size = 8
    config.total_steps = 10
    config.optimizer.warmup_steps = 2  # the full run's 20 would exceed the 10 steps
    config.checkpoint.every_steps = 5
    config.checkpoint.snapshot_every = 5
    config.log_every = 1
    config.peak_flops_per_device = 200e9
  return config
