"""The encoder's classification path: the loss against PyTorch, and a short LoRA + head run."""

import jax
import numpy as np
import torch

from peft_jax import models
from peft_jax.adapters import api
from peft_jax.train import classify


def test_classification_loss_matches_torch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 4)).astype(np.float32) * 3
  labels = np.array([0, 3, 1, -1, 2, 2, -1])
  loss_sum, count = classify.classification_loss_sum(logits, labels.reshape(-1, 1))
  ref = torch.nn.functional.cross_entropy(
    torch.tensor(logits), torch.tensor(labels), ignore_index=-1, reduction='sum'
  )
  np.testing.assert_allclose(float(loss_sum), float(ref), rtol=1e-6)
  assert float(count) == 5
  targets = rng.normal(size=(7,)).astype(np.float32)
  loss_sum, count = classify.classification_loss_sum(
    logits[:, :1], targets.reshape(-1, 1), 'regression'
  )
  ref = torch.nn.functional.mse_loss(
    torch.tensor(logits[:, 0]), torch.tensor(targets), reduction='sum'
  )
  np.testing.assert_allclose(float(loss_sum), float(ref), rtol=1e-6)
  assert float(count) == 7


def _marker_task(n=128, length=8, vocab=24, seed=0):
  """Label 1 iff the marker id 2 occurs among a row's real tokens (a third of rows padded)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (n, length))
  tokens[:, 0] = 1
  labels = rng.integers(0, 2, n)
  rows = np.flatnonzero(labels == 1)
  tokens[rows, rng.integers(1, length - 2, len(rows))] = 2
  mask = np.ones((n, length), np.int32)
  mask[::3, length - 2 :] = 0
  tokens[mask == 0] = 0
  return dict(
    tokens=tokens.astype(np.int32),
    attention_mask=mask,
    token_type_ids=np.zeros_like(mask),
    labels=labels.reshape(-1, 1).astype(np.int32),
  )


def test_train_classifier_lora_with_head():
  data = _marker_task()
  cfg = models.EncoderConfig(
    vocab_size=24, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
    max_position_embeddings=16, num_labels=2, head_type='mean',
  )  # fmt: skip
  params = models.init_encoder_params(cfg, jax.random.key(0))
  model = models.Encoder(cfg)
  result = classify.train_classifier(
    model, params, api.LoRA(rank=4, alpha=8), data, targets=['query', 'value'], steps=24,
    batch_size=16, optimizer=dict(peak_lr=1e-2),
  )  # fmt: skip
  assert result.num_compiles == 1
  losses = np.array([loss for _, loss in result.losses])
  assert np.isfinite(losses).all()
  # Mean loss over the last third well below the first third (and below chance, ln 2).
  assert losses[-8:].mean() < 0.85 * losses[:8].mean() and losses[-8:].mean() < np.log(2)
  nodes = api.adapted_nodes(result.tree)
  head = nodes['classifier/kernel']
  assert head.method.saved_module
  assert not np.allclose(head.params['weight'], params['classifier']['kernel'])
  np.testing.assert_array_equal(head.base, params['classifier']['kernel'])  # frozen copy kept
  lora = nodes['layers_0/attention/self/query/kernel']
  assert np.abs(np.asarray(lora.params['lora_b'])).max() > 0  # B left its zero init
  # predict runs the trained tree; padded final batch handled (128 rows, batch 48).
  logits = classify.predict(model, result.tree, data, batch_size=48)
  assert logits.shape == (128, 2)
  assert classify.accuracy(logits, data['labels']) > 0.6
