"""The delta-activation SAE study presets (peft_jax.sae.study, docs/SAE.md).

  python -m launch.sae --config=configs/sae/quick.py --workdir=runs/sae            # quick
  python -m launch.sae --config=configs/sae/quick.py:real --workdir=runs/sae_real  # SmolLM2

quick (default): the bundled tiny base (2.2M params) fine-tuned on the offline suite's gsm
target with LoRA ranks 4/8/16/32, a small budget (about 3 minutes on 2 CPU cores). real: the
real SmolLM2-135M-Instruct base with the same design, for a machine with more time.
"""

import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = 'bundled:tiny'
  config.world = 'bundled'  # 'bundled': the base's offline suite; 'custom': config.data_path
  config.target = 'gsm'  # the suite target whose SFT rows train the adapters
  config.data_path = ''  # custom world: an SFT JSONL
  config.seed = 0
  config.adapters = ml_collections.ConfigDict(
    dict(
      ranks=(4, 8, 16, 32),
      alpha_over_rank=2.0,  # alpha = 2 r: the same LoRA scale s = alpha / r at every rank
      targets=('q_proj', 'v_proj', 'down_proj'),
      target_regex='',
      paths={},  # {name: PEFT adapter dir} to use adapters trained elsewhere (name: lora_r<r>)
    )
  )
  # Overrides of peft_jax.train.config.default_config for every adapter (the study sets the
  # model, data, adapter, seed, mesh and export itself).
  config.train = ml_collections.ConfigDict(
    dict(
      total_steps=30,
      batch_size=8,
      data=dict(seq_len=96),
      optimizer=dict(peak_lr=5e-3, warmup_steps=3),
      checkpoint=dict(every_steps=15, keep=1),
    )
  )
  # Held-out SFT rows (not used to train adapters) give the activations; the last
  # eval_fraction of them are the evaluation tokens (metrics, CE loss, comparisons).
  config.data = ml_collections.ConfigDict(
    dict(activation_rows=192, eval_fraction=0.25, seq_len=96, batch_rows=16)
  )
  # Early / middle / late residual stream and one adapted module output.
  config.sites = ('layers_0/residual', 'layers_1/residual', 'layers_3/residual',
                  'layers_1/mlp/down_proj/out')  # fmt: skip
  config.memory_budget_mb = 8.0
  config.sae = ml_collections.ConfigDict(
    dict(
      activation='relu',
      expansion=2,  # m = expansion x d
      k=16,  # topk only
      l1_coeff=3.0,  # relu: L1 on unit-mean-norm data (||x|| ~ sqrt(d))
      learning_rate=1e-3,
      num_steps=400,
      batch_size=256,
      log_every=100,
      dead_after=200,
      resample_every=200,
      resample_pool=1024,
      normalize='unit_mean_norm',
      checkpoint_every=1,
    )
  )
  config.base_reseed = True  # a second base SAE per site: the seed-to-seed alignment ceiling
  config.compare = ml_collections.ConfigDict(
    dict(
      thresholds=(0.5, 0.7, 0.9),
      match_threshold=0.7,
      subspace_k=16,
      dense_threshold=0.1,
      block_rows=128,
      num_resamples=200,
      ce_sequences=16,  # evaluation sequences for CE-loss recovered (0: all)
      level=0.95,
    )
  )
  config.mesh_shape = (-1, 1, 1)
  config.progress = True

  if arg in ('', 'quick'):
    pass
  elif arg == 'real':
    config.base = 'smollm2-135m-instruct'
    config.world = 'custom'
    config.data_path = ''  # an SFT JSONL of the target domain (required)
    config.train.total_steps = 300
    config.train.data.seq_len = 256
    config.data.update(dict(activation_rows=1024, seq_len=256, batch_rows=8))
    config.sites = ('layers_2/residual', 'layers_15/residual', 'layers_28/residual',
                    'layers_15/mlp/down_proj/out')  # fmt: skip
    config.memory_budget_mb = 1024.0
    config.sae.update(dict(expansion=8, num_steps=4000, batch_size=1024, resample_every=1000))
    config.compare.subspace_k = 64
  else:
    raise ValueError(f'unknown preset {arg!r}; valid: quick (default), real')
  return config
