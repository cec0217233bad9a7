"""The offline world: capability suite, tokenizer and a tiny base model pretrained on it.

``build_world(config, workdir)`` runs, each step skipped when its output already exists:

1. ``generate_suite`` -> ``<workdir>/suite`` (general tasks, targets, SFT pairs, corpus);
2. ``train_tokenizer`` on the corpus plus the target-domain text -> ``<workdir>/tokenizer``
   (targets are in the *tokenizer's* training text so that fine-tuning data tokenises sensibly,
   but never in the pretraining corpus);
3. pretraining of a Llama-architecture decoder from scratch on the corpus with the ordinary
   training loop (:func:`peft_jax.train.trainer.train`, method ``full``) -> ``<workdir>/train``;
4. export as a Hugging Face directory (config.json, model.safetensors, tokenizer files) ->
   ``<workdir>/hf``, loadable by peft_jax and transformers alike.

The bundled base (``peft_jax/bundled/tiny``) is the ``hf`` output of
``python -m launch.pretrain --config=configs/pretrain/tiny.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import ml_collections

from peft_jax import hub
from peft_jax.adapters import api as adapters
from peft_jax.common import files
from peft_jax.data import suite as suite_lib
from peft_jax.data import tokenizer_train
from peft_jax.data.suite import layout
from peft_jax.data.tokenizer_train import EOS_TOKEN
from peft_jax.evals import axes, generation
from peft_jax.evals import tasks as tasks_lib
from peft_jax.train import trainer
from peft_jax.train.config import default_config

PRETRAIN_FILE = 'pretrain.jsonl'
SUITE_META = 'suite.json'


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def ensure_suite(suite_dir: str, seed: int, sizes: Mapping[str, Any] | None = None) -> dict:
  """Generates the suite into ``suite_dir`` unless its manifest is already there."""
  manifest = os.path.join(suite_dir, 'manifest.json')
  if not os.path.exists(manifest):
    tmp = f'{suite_dir}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    suite_lib.generate_suite(tmp, seed=seed, sizes=dict(sizes or {}))
    shutil.rmtree(suite_dir, ignore_errors=True)
    os.replace(tmp, suite_dir)
  with open(manifest) as f:
    return json.load(f)


def pretraining_rows(suite_dir: str) -> list[dict]:
  """The corpus as SFT rows with every token a target (empty prompt; the loader adds bos/eos)."""
  rows = []
  for record in _read_jsonl(os.path.join(suite_dir, 'pretrain', 'corpus.jsonl')):
    text = record['text']
    if text.endswith(EOS_TOKEN):  # the loader appends the tokenizer's eos itself
      text = text[: -len(EOS_TOKEN)]
    rows.append({'prompt': '', 'completion': text})
  return rows


def tokenizer_texts(suite_dir: str) -> list[str]:
  """Corpus text plus the target domains' training text (tokenizer training only)."""
  with open(os.path.join(suite_dir, 'manifest.json')) as f:
    files = json.load(f)['files']
  paths = {
    name: os.path.join(suite_dir, rel) if not os.path.isabs(rel) else rel
    for name, rel in files.items()
  }
  return list(tokenizer_train.corpus_texts(suite_lib.tokenizer_training_files(paths)))


def ensure_tokenizer(suite_dir: str, tokenizer_dir: str, vocab_size: int):
  """Trains the byte-level BPE unless ``tokenizer_dir`` holds one; returns the HF tokenizer."""
  if not os.path.exists(os.path.join(tokenizer_dir, 'tokenizer.json')):
    tmp = f'{tokenizer_dir}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    suite_lib.train_tokenizer(tokenizer_texts(suite_dir), tmp, vocab_size=vocab_size)
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    os.replace(tmp, tokenizer_dir)
  return hub.load_tokenizer(tokenizer_dir)


def train_config(
  config: ml_collections.ConfigDict, tokenizer, data_path: str, tokenizer_dir: str
) -> ml_collections.ConfigDict:
  """The :func:`peft_jax.train.trainer.train` config of the pretraining run."""
  train = default_config()
  train.seed = config.seed
  model = dict(config.model)
  model.update(
    path='',
    vocab_size=len(tokenizer),
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
    pad_token_id=tokenizer.pad_token_id,
  )
  train.model = ml_collections.ConfigDict(model)
  train.adapter.method = 'full'
  train.adapter.kwargs = {}
  train.data = ml_collections.ConfigDict(
    dict(
      path=data_path,
      split='train',
      tokenizer=tokenizer_dir,
      seq_len=config.seq_len,
      packing=True,
      shuffle=True,
    )
  )
  train.batch_size = config.batch_size
  train.total_steps = config.total_steps
  train.optimizer.update(dict(config.optimizer))
  train.checkpoint.every_steps = config.checkpoint_every
  train.checkpoint.keep = 2
  train.log_every = config.log_every
  train.progress_bar = config.progress_bar
  train.mesh_shape = tuple(config.mesh_shape)
  return train


def build_world(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Suite -> tokenizer -> pretraining -> HF export (see the module docstring).

  Returns:
    ``{'suite_dir', 'tokenizer_dir', 'hf_dir', 'final_loss'}``.
  """
  os.makedirs(workdir, exist_ok=True)
  suite_dir = os.path.join(workdir, 'suite')
  tokenizer_dir = os.path.join(workdir, 'tokenizer')
  hf_dir = os.path.join(workdir, 'hf')
  ensure_suite(suite_dir, config.seed, config.get('suite_sizes') or {})
  tokenizer = ensure_tokenizer(suite_dir, tokenizer_dir, config.vocab_size)
  data_path = os.path.join(workdir, PRETRAIN_FILE)
  if not os.path.exists(data_path):
    files.write_jsonl(data_path, pretraining_rows(suite_dir))
  train_cfg = train_config(config, tokenizer, data_path, tokenizer_dir)
  result = trainer.train(train_cfg, os.path.join(workdir, 'train'))
  params = adapters.merge(trainer.host_copy(result.tree))
  hub.save_pretrained(result.model.config, params, hf_dir, tokenizer=tokenizer)
  # The suite's seed and sizes travel with the model: the arena regenerates the same suite
  # (deterministic for a seed), so NQ questions ask about facts this model was pretrained on.
  with open(os.path.join(hf_dir, SUITE_META), 'w') as f:
    json.dump(
      {'seed': int(config.seed), 'sizes': dict(config.get('suite_sizes') or {})}, f, indent=1
    )
  final_loss = result.losses[-1][1] if result.losses else None
  out = {
    'suite_dir': suite_dir,
    'tokenizer_dir': tokenizer_dir,
    'hf_dir': hf_dir,
    'final_loss': final_loss,
  }
  if config.get('eval_limits'):
    out['eval'] = evaluate_base(
      hf_dir, suite_dir, dict(config.eval_limits), dict(config.eval_max_new_tokens)
    )
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(out['eval'], f, indent=1)
  return out


def evaluate_base(
  hf_dir: str, suite_dir: str, limits: Mapping[str, int], max_new_tokens: Mapping[str, int]
) -> dict:
  """Harness scores of the exported model on the suite's test splits (first `limits` examples)."""
  model, params, tokenizer = hub.load_pretrained(hf_dir)
  tasks = [
    tasks_lib.load_task(spec) for spec in layout.eval_task_specs(suite_dir, limits, max_new_tokens)
  ]
  generator = generation.Generator(model, params, tokenizer)
  return axes.evaluate_scores(generator.fn(), tasks, batch_size=64)
