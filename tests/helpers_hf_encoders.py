"""Tiny random transformers (PyTorch) BERT / RoBERTa encoders for tests, and padded batches.

Every builder returns a float32 eval-mode model with deterministic random weights
(``torch.manual_seed(seed)``); LayerNorm weights and all biases are randomised too (HF inits
them to ones / zeros, which would hide a missing or mis-applied parameter):

    hf_model = tiny_hf_encoder('bert', head=True)    # BertForSequenceClassification
    path = save_tiny_hf_encoder('roberta', tmp_path / 'r')
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import torch
import transformers

VOCAB_SIZE = 96
HIDDEN_SIZE = 32
INTERMEDIATE_SIZE = 48
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_LABELS = 3
ROBERTA_PAD = 1


def tiny_hf_encoder_config(model_type: str, head: bool = False, **overrides: Any):
  """A tiny ``BertConfig`` / ``RobertaConfig``; ``overrides`` win."""
  common = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=HIDDEN_SIZE,
    intermediate_size=INTERMEDIATE_SIZE,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=NUM_HEADS,
    max_position_embeddings=40,
    # Larger than HF's 0.02 so attention is far from uniform and a wrong mask or position
    # shows up clearly.
    initializer_range=0.1,
    hidden_act='gelu',
    num_labels=NUM_LABELS if head else 2,
  )
  if model_type == 'bert':
    kw = dict(common, type_vocab_size=2, pad_token_id=0)
    kw.update(overrides)
    return transformers.BertConfig(**kw)
  if model_type == 'roberta':
    kw = dict(common, type_vocab_size=1, pad_token_id=ROBERTA_PAD, bos_token_id=0, eos_token_id=2)
    kw.update(overrides)
    return transformers.RobertaConfig(**kw)
  raise ValueError(f'unknown encoder model_type {model_type!r}')


def tiny_hf_encoder(model_type: str, head: bool = False, seed: int = 0, **overrides: Any):
  """``BertModel`` / ``RobertaModel`` (or ``*ForSequenceClassification`` with ``head``)."""
  config = tiny_hf_encoder_config(model_type, head, **overrides)
  torch.manual_seed(seed)
  if head:
    cls = transformers.AutoModelForSequenceClassification
  else:
    cls = transformers.AutoModel
  model = cls.from_config(config, attn_implementation='eager', dtype=torch.float32)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('LayerNorm.weight'):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith('bias'):
        p.copy_(0.1 * torch.randn_like(p))
  return model.eval()


def save_tiny_hf_encoder(model_type: str, path, head: bool = False, seed: int = 0, **overrides):
  path = pathlib.Path(path)
  tiny_hf_encoder(model_type, head, seed, **overrides).save_pretrained(path)
  return path


def padded_batch(model_type: str, seed: int = 0, lengths=(11, 7, 3), total: int = 12):
  """Right-padded ids ``[B, total]``, mask, and token types (BERT: a second segment in row 0).

  Real tokens avoid the pad id; padding holds it (RoBERTa derives positions from it).
  """
  rng = np.random.default_rng(seed)
  pad = ROBERTA_PAD if model_type == 'roberta' else 0
  tokens = rng.integers(3, VOCAB_SIZE, (len(lengths), total))
  mask = np.zeros((len(lengths), total), np.int64)
  for row, n in enumerate(lengths):
    mask[row, :n] = 1
  tokens[mask == 0] = pad
  types = np.zeros_like(tokens)
  if model_type == 'bert':
    types[0, 6 : lengths[0]] = 1
  return tokens, mask, types


def torch_inputs(tokens, mask, types):
  return dict(
    input_ids=torch.tensor(tokens, dtype=torch.long),
    attention_mask=torch.tensor(mask, dtype=torch.long),
    token_type_ids=torch.tensor(types, dtype=torch.long),
  )
