"""The arena presets.

  python -m launch.arena --config=configs/arena/quick.py --workdir=runs/arena          # quick
  python -m launch.arena --config=configs/arena/quick.py:full --workdir=runs/full       # full
  python -m launch.arena --config=configs/arena/quick.py:custom --workdir=runs/custom \
      --config.base=/path/to/hf_dir --config.target_train_path=train.jsonl \
      --config.tasks_file=tasks.json --config.target=NAME                                 # any model
  python -m launch.arena --config=configs/arena/quick.py:smoke --config.base=DIR ...     # tests

quick (default): the bundled tiny base and the offline capability suite, every method, a small
budget (within 15 minutes on 2 CPU cores). full: larger budgets and eval sets, for a real machine.
custom: any Hugging Face checkpoint directory with local SFT data and task files.
"""

import ml_collections

from peft_jax.adapters.api import method_names


def _lr(peak_lr: float) -> dict:
  return dict(optimizer=dict(peak_lr=peak_lr))


def method_configs(peak_lrs: dict, adapter_kwargs: dict) -> ml_collections.ConfigDict:
  """Per method (the keys of ``peak_lrs``): overrides of the train config
  (peft_jax.train.config.default_config), applied after the arena's shared `train` overrides:
  the adapter kwargs (``adapter_kwargs[m]``; none for full FT) and the peak learning rate, the
  centre of the method's sweep grid. Shared with configs/arena/real.py."""
  return ml_collections.ConfigDict(
    {
      name: (dict(adapter=dict(kwargs=adapter_kwargs[name])) if name in adapter_kwargs else {})
      | _lr(lr)
      for name, lr in peak_lrs.items()
    }
  )


def adapter_shapes(vera_rank: int, oft_block_size: int) -> dict:
  """PEFT-Arena's adapter shapes per method; VeRA's rank and OFT's block size scale with the
  model (shared with configs/arena/real.py). A fresh dict per method: ConfigDict keeps one
  object given twice as one node, so an override of one method would change the others."""

  def low_rank(**extra):
    return dict(rank=8, alpha=16.0, **extra)

  return dict(
    lora=low_rank(),
    dora=low_rank(),
    pissa=low_rank(),
    vera=dict(rank=vera_rank),
    oft=dict(block_size=oft_block_size),
    miss=dict(rank=16),
    disel=low_rank(gate_bias_init=-3.0, gate_lr_mult=5.0),
  )


def _methods() -> ml_collections.ConfigDict:
  # Small-model budgets.
  return method_configs(
    dict(full=1e-3, lora=3e-3, dora=3e-3, pissa=1e-3, vera=1e-2, oft=3e-3, miss=3e-3, disel=3e-3),
    adapter_shapes(vera_rank=64, oft_block_size=16),
  )


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.title = 'PEFT-Arena in miniature: the bundled tiny base on the offline suite'
  config.seed = 0
  config.world = 'bundled'  # 'bundled': suite regenerated from the base's suite.json; 'custom'
  config.base = 'bundled:tiny'
  config.target = 'gsm'  # the target domain fine-tuned on (a task name)
  config.target_train_path = ''  # custom world: the SFT JSONL of the target
  config.tasks = []  # custom world: task specs (peft_jax.evals.load_task)
  config.method_order = method_names()  # the registry's methods (peft_jax.adapters.METHODS)
  config.methods = _methods()
  # Overrides of the train config shared by every method (big_vision style); the arena sets the
  # model path, data path, method name, seed, mesh and progress bar itself.
  config.train = ml_collections.ConfigDict(
    dict(
      total_steps=80,  # sweep: 3 rates x 40 steps, then the kept one to 80: 160 steps per method
      batch_size=16,
      log_every=1,
      adapter=dict(target_regex='all-linear'),
      data=dict(seq_len=128),
      optimizer=dict(warmup_steps=10, weight_decay=0.0),
      checkpoint=dict(every_steps=40, keep=1, snapshot_every=0),
    )
  )
  config.eval = ml_collections.ConfigDict(
    dict(
      batch_size=64,
      limits=dict(ifeval=48, nq=48, bbh=8, gsm=64, cipher=32),  # bbh: per subtask
      max_new_tokens=dict(ifeval=72, nq=12, bbh=64, gsm=40, cipher=40),
    )
  )
  config.paths = ml_collections.ConfigDict(
    dict(
      alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
      tradeoff_weight=0.5,
      oft_generator_schedule='sqrt',  # 'sqrt' (PEFT-Arena: Cayley(sqrt(α) Q)) or 'linear'
      limits=dict(ifeval=8, nq=8, bbh=1, gsm=16, cipher=4),
    )
  )
  config.geometry = ml_collections.ConfigDict(
    dict(num_prompts=24, module='layers_1/self_attn/q_proj', gram_max_tokens=512)
  )
  # The learning-rate sweep (peft_jax.arena.pipeline): each method at centre x factor, where the
  # centre is the method's optimizer.peak_lr above, scored on the target's validation split
  # (held out from its SFT data); the best rate is kept. select_fraction=0.5: every candidate
  # runs the full schedule but stops, and is scored, at half of it; the kept one continues to
  # the end as the final run (the same run, resumed: 2 x 40 steps fewer than full-length
  # candidates). select_fraction=0 and steps=0: candidates run the full budget and the kept run
  # is the final run; steps=N: separate N-step candidates, then a fresh final run.
  config.sweep = ml_collections.ConfigDict(
    dict(
      enabled=True,
      factors=(1 / 3, 1.0, 3.0),
      select_fraction=0.5,
      steps=0,
      seeds=(),  # () = (config.seed,); more seeds average the validation score per rate
      methods=(),  # () = every method
      validation_size=48,  # target training problems held out as the validation split
      general_limits=dict(ifeval=8, nq=8, bbh=1),  # general validation (train splits); {} = off
    )
  )
  # Snapshots along training for the report's trajectory section (every K steps; 0 = off).
  config.trajectory = ml_collections.ConfigDict(dict(every=40, methods=('full', 'lora')))
  # Budget rules for values set to 0 (-1 for warmup) in config.train: the custom preset derives
  # steps, batch and warmup from the size of its data (peft_jax.arena.pipeline.derive_budget).
  config.budget = ml_collections.ConfigDict(dict(epochs=3, max_batch=16, max_warmup=10))
  config.tasks_file = ''  # custom world: a JSON (or YAML) list of task specs
  config.validation_path = ''  # custom world: the target's validation file (enables the sweep)
  # The delta-activation SAE study (the `sae` stage, peft_jax.arena.sae_stage; docs/SAE.md): LoRA
  # at each rank on the target's SFT data (the sweep's validation rows held out; the last
  # data.activation_rows rows held out again for the activations), base and delta activations
  # at early / middle / late residual sites, one SAE per (site, adapter) and per site on the
  # base (and a reseeded base SAE: the alignment ceiling). enabled=False: the report says
  # "Not run". Sized for under a minute on 2 CPU cores (measured: README, docs/SAE.md).
  config.sae = ml_collections.ConfigDict(
    dict(
      enabled=True,
      ranks=(4, 8, 16, 32),
      alpha_over_rank=2.0,  # alpha = 2 r: the same LoRA scale at every rank
      targets=('q_proj', 'v_proj'),  # PEFT's default LoRA targets for Llama
      sites=('layers_0/residual', 'layers_1/residual', 'layers_3/residual'),
      # Overrides of the train config for every adapter (model, data, adapter, seed, mesh and
      # export are set by the study).
      train=dict(
        total_steps=6,
        batch_size=8,
        data=dict(seq_len=64),
        optimizer=dict(peak_lr=5e-3, warmup_steps=2),
        checkpoint=dict(every_steps=6, keep=1),
      ),
      data=dict(activation_rows=64, eval_fraction=0.25, seq_len=64, batch_rows=16),
      memory_budget_mb=8.0,
      sae=dict(
        activation='relu',
        expansion=2,  # m = 2 d
        k=16,  # topk only
        l1_coeff=3.0,
        learning_rate=1e-3,
        num_steps=100,
        batch_size=256,
        log_every=50,
        dead_after=50,
        resample_every=50,
        resample_pool=1024,
        normalize='unit_mean_norm',
        checkpoint_every=1,
      ),
      base_reseed=True,
      compare=dict(
        thresholds=(0.5, 0.7, 0.9),
        match_threshold=0.7,
        subspace_k=16,
        dense_threshold=0.1,
        block_rows=64,
        num_resamples=100,
        ce_sequences=4,
        level=0.95,
      ),
    )
  )
  # The RLVR phase (stages rlvr_<m>, eval_rlvr_<m>, passk; peft_jax.arena.rlvr_stage,
  # docs/RLVR.md "The arena phase"): per method of `methods`, GRPO from the base on the target's
  # training problems (the sweep's validation rows held out) with the target's scorer as the
  # reward, at the method's configured peak_lr x lr_factor; `train` overrides the GRPO config
  # (peft_jax.rl.config.default_config; model, adapter, seed, mesh and task are the arena's).
  # skip_no_signal: a batch whose groups all have equal rewards is not applied (no reward
  # signal; otherwise Adam turns the KL term's rounding noise into a step, docs/RLVR.md).
  # pass@k of base, SFT and RLVR early (early_fraction of the steps) and late on the first
  # passk.num_prompts test prompts of the target. enabled=False: the report says "Not run".
  # The bundled base scores 0 on GSM, so every reward is 0 and GRPO has no signal: the quick
  # preset runs LoRA alone at a tiny budget (with full FT too it would pass 15 minutes on the
  # slower CPU kind; measured: README, docs/RLVR.md); quick:full runs every method.
  config.rlvr = ml_collections.ConfigDict(
    dict(
      enabled=True,
      methods=('lora',),
      lr_factor=1.0,
      early_fraction=0.5,
      train_path='',  # '' : the suite target's training split; a custom world must set it
      train=dict(
        total_steps=4,
        log_every=1,
        grpo=dict(
          group_size=4, prompts_per_step=4, max_new_tokens=40, beta=0.04, skip_no_signal=True
        ),
      ),
      passk=dict(
        num_prompts=8,
        num_samples=16,
        ks=(1, 2, 4, 8, 16),
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=40,  # 0: the target task's own
        prompts_per_batch=8,
      ),
    )
  )
  config.mesh_shape = (-1, 1, 1)  # data parallel over every device
  # JAX's persistent compilation cache, a folder in the workdir ('' = off): a rerun, a resumed
  # run and repeated programs load their compiled code (peft_jax.common.compile_cache).
  config.compile_cache = 'jax_cache'
  config.progress_bar = True

  if arg in ('', 'quick'):
    pass
  elif arg == 'full':
    config.title = 'PEFT-Arena: full preset'
    config.train.total_steps = 600
    config.sweep.select_fraction = 0.0  # a real machine: every candidate runs the full budget
    config.eval.limits = dict(ifeval=200, nq=108, bbh=50, gsm=200, cipher=200)
    config.paths.alphas = tuple(i / 10 for i in range(11))
    config.paths.limits = dict(ifeval=64, nq=64, bbh=10, gsm=64, cipher=64)
    config.geometry.num_prompts = 64
    config.sae.train.update(dict(total_steps=60, checkpoint=dict(every_steps=30)))
    config.sae.train.data.seq_len = 96
    config.sae.data.update(dict(activation_rows=192, seq_len=96))
    config.sae.sae.update(dict(num_steps=1000, log_every=100, dead_after=200, resample_every=200))
    config.sae.compare.update(dict(block_rows=128, num_resamples=1000, ce_sequences=0))
    config.rlvr.methods = method_names()
    config.rlvr.train.total_steps = 100
    config.rlvr.train.grpo.update(dict(group_size=8, prompts_per_step=8))
    config.rlvr.passk.update(
      dict(num_prompts=64, num_samples=64, ks=(1, 2, 4, 8, 16, 32, 64), prompts_per_batch=4)
    )
  elif arg == 'custom':
    config.title = 'PEFT-Arena on a custom checkpoint'
    config.world = 'custom'
    config.base = ''
    config.target = 'target'
    # Steps, batch and warmup derived from the data (printed when the run starts).
    config.train.total_steps = 0
    config.train.batch_size = 0
    config.train.optimizer.warmup_steps = -1
    # Evaluation sizes by task name (a task spec's own limit / max_new_tokens wins).
    config.eval.limits = {}
    config.eval.max_new_tokens = {}
    config.paths.limits = {}
    config.sae.enabled = False  # its sites are layer names of the bundled base; set them to run
    config.rlvr.enabled = False  # needs config.rlvr.train_path (the target's training problems)
  elif arg == 'smoke':
    config.title = 'PEFT-Arena smoke run'
    config.train.total_steps = 4
    config.train.batch_size = 8
    config.train.data.seq_len = 80  # every smoke SFT row keeps its answer tokens
    config.train.optimizer.warmup_steps = 1
    config.train.checkpoint.every_steps = 2
    config.methods.vera.adapter.kwargs = dict(rank=8)
    config.methods.oft.adapter.kwargs = dict(block_size=8)
    config.methods.miss.adapter.kwargs = dict(rank=4)
    config.eval.batch_size = 16
    config.eval.limits = dict(ifeval=4, nq=4, bbh=1, gsm=4, cipher=4)
    config.eval.max_new_tokens = dict(ifeval=8, nq=4, bbh=8, gsm=8, cipher=8)
    config.paths.alphas = (0.0, 0.5, 1.0)
    config.paths.limits = dict(ifeval=2, nq=2, bbh=1, gsm=2, cipher=2)
    config.geometry.update(
      dict(num_prompts=4, module='layers_0/self_attn/q_proj', gram_max_tokens=64)
    )
    config.sweep.update(dict(factors=(0.5, 1.0), methods=('lora',), validation_size=2))
    config.sweep.general_limits = dict(nq=2)  # assigned: update() would merge the dicts
    config.trajectory.update(dict(every=2, methods=('lora',)))
    # The SAE study at its smallest on the 2-layer smoke model (tests/arena/test_arena.py turns
    # it on): two ranks, two sites, ten SAE steps, no reseeded base SAE.
    config.sae.update(
      dict(
        enabled=False,
        ranks=(2, 4),
        sites=('layers_0/residual', 'layers_1/residual'),
        base_reseed=False,  # no seed-to-seed ceiling: the alignment claim divides by 1 - null
      )
    )
    config.sae.train = dict(
      total_steps=2,
      batch_size=8,
      data=dict(seq_len=80),
      optimizer=dict(peak_lr=5e-3, warmup_steps=1),
      checkpoint=dict(every_steps=2, keep=1),
    )
    config.sae.data.update(dict(activation_rows=8, eval_fraction=0.5, seq_len=80, batch_rows=8))
    config.sae.sae.update(
      dict(num_steps=10, batch_size=64, log_every=10, dead_after=10, resample_every=10,
           resample_pool=128)
    )  # fmt: skip
    config.sae.compare.update(dict(subspace_k=4, block_rows=16, num_resamples=100, ce_sequences=0))
    # The RLVR phase at its smallest (tests/arena/test_arena.py turns it on): full FT, 2 GRPO
    # steps of 4 prompts x 2 completions, pass@k of 4 held-out prompts x 4 samples.
    config.rlvr.update(dict(enabled=False, methods=('full',)))
    config.rlvr.train = dict(
      total_steps=2,
      log_every=1,
      grpo=dict(group_size=2, prompts_per_step=4, max_new_tokens=8, beta=0.04, skip_no_signal=True),
    )
    config.rlvr.passk.update(
      dict(num_prompts=4, num_samples=4, ks=(1, 2, 4), max_new_tokens=8, prompts_per_batch=4)
    )
    config.progress_bar = False
  else:
    raise ValueError(f'unknown preset {arg!r}; valid: quick (default), full, custom, smoke')
  return config
