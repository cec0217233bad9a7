"""Pretraining of the bundled tiny base on the offline capability suite (general part only).

  python -m launch.pretrain --config=configs/pretrain/tiny.py --workdir=runs/pretrain

`:smoke` gives a seconds-long run with the same code path (tests).
"""

import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Overrides of the suite's DEFAULT_SIZES: more BBH examples and fact paraphrases than the
  # defaults, so that a 2.6 M model generalises to held-out questions instead of memorising.
  config.suite_sizes = ml_collections.ConfigDict(dict(bbh_train=1200, fact_docs_per_entity=8))
  config.vocab_size = 2048  # BPE vocabulary, special tokens and the 256 bytes included
  # A Llama-architecture decoder: 2.17 M parameters (tied embeddings), 8.7 MB in float32.
  config.model = ml_collections.ConfigDict(
    dict(
      model_type='llama',
      hidden_size=192,
      intermediate_size=512,
      num_layers=4,
      num_heads=4,
      num_kv_heads=4,
      head_dim=48,
      rope_theta=10000.0,
      tie_word_embeddings=True,
      max_position_embeddings=512,
      dtype='float32',
      remat=False,
    )
  )
  config.seq_len = 256
  config.batch_size = 16
  config.total_steps = 4500
  config.optimizer = ml_collections.ConfigDict(
    dict(
      peak_lr=3e-3,
      warmup_steps=100,
      decay='cosine',
      final_lr_fraction=0.05,
      weight_decay=0.01,
      clip_norm=1.0,
    )
  )
  config.checkpoint_every = 250
  config.log_every = 10
  config.progress_bar = True
  config.mesh_shape = (-1, 1, 1)  # data parallel over every device
  # After export: harness scores on the first examples of each test split (bbh: per subtask).
  config.eval_limits = ml_collections.ConfigDict(
    dict(ifeval=200, nq=108, bbh=50, gsm=200, cipher=200)
  )
  config.eval_max_new_tokens = ml_collections.ConfigDict(
    dict(ifeval=72, nq=12, bbh=64, gsm=40, cipher=40)
  )
  if arg == 'smoke':
    config.suite_sizes = ml_collections.ConfigDict(
      dict(
        people=10,
        cities=4,
        animals=4,
        ifeval_train=40,
        ifeval_test=8,
        bbh_train=8,
        bbh_test=4,
        gsm_train=20,
        gsm_test=8,
        cipher_train=20,
        cipher_test=8,
      )
    )
    config.vocab_size = 400
    config.model.update(
      dict(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16
      )
    )
    config.seq_len = 64
    config.batch_size = 8
    config.total_steps = 4
    config.optimizer.warmup_steps = 1
    config.checkpoint_every = 2
    config.log_every = 1
    config.progress_bar = False
    config.eval_limits = ml_collections.ConfigDict(dict(ifeval=2, nq=2, bbh=1, gsm=2, cipher=2))
    config.eval_max_new_tokens = ml_collections.ConfigDict(
      dict(ifeval=4, nq=4, bbh=4, gsm=4, cipher=4)
    )
  elif arg:
    raise ValueError(f"unknown config arg {arg!r}; valid: '' (default) or 'smoke'")
  return config
