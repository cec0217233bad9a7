"""PEFT adapters on BERT: made by HF ``peft`` on transformers models, loaded by peft_jax onto the
encoder, outputs compared; and exported by peft_jax, loaded back by ``PeftModel.from_pretrained``.

The models are ``BertForSequenceClassification`` with ``task_type='SEQ_CLS'``: module names carry
the ``bert.`` prefix (which the loader drops and the exporter puts back) and the head is a
``modules_to_save`` copy, perturbed like the adapter so a head that failed to load or save would
show. The exported tree, merged, is also saved as a plain checkpoint that transformers loads.
Tolerance 1e-4 on logits / hidden states
(the encoder's own parity bound, docs in tests/models/test_encoder.py).
"""

import functools
import os
import sys

import jax
import numpy as np
import peft
import pytest
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import helpers_hf_encoders as hfe  # noqa: E402  pylint: disable=g-import-not-at-top

from peft_jax import hub  # noqa: E402
from peft_jax.adapters import api  # noqa: E402
from peft_jax.adapters.core import Adapted  # noqa: E402
from peft_jax.adapters.inject import _map_tree  # noqa: E402

TARGETS = ['query', 'value', 'intermediate.dense']
CASES = {
  'lora_seqcls': (True, lambda: peft.LoraConfig(task_type='SEQ_CLS', r=4, lora_alpha=8, target_modules=TARGETS), api.LoRA),
  'oft_seqcls': (True, lambda: peft.OFTConfig(task_type='SEQ_CLS', oft_block_size=8, r=0, target_modules=TARGETS), api.OFT),
  'vera_seqcls': (True, lambda: peft.VeraConfig(task_type='SEQ_CLS', r=6, target_modules=TARGETS), api.VeRA),
}  # fmt: skip
SCALE = 0.1


@pytest.fixture(scope='module')
def bases(tmp_path_factory):
  """{head: (HF directory, our model, our params)} for BertForSequenceClassification / BertModel."""
  root = tmp_path_factory.mktemp('bert_bases')
  out = {}
  for head in (True, False):
    path = hfe.save_tiny_hf_encoder('bert', root / f'head_{head}', head=head)
    model, params, _ = hub.load_pretrained(path)
    out[head] = (path, model, params)
  return out


def _fresh_hf(head):
  return hfe.tiny_hf_encoder('bert', head)


def _reference(peft_model, head, tokens, mask, types):
  with torch.no_grad():
    out = peft_model(**hfe.torch_inputs(tokens, mask, types))
  return out.logits.numpy() if head else out.last_hidden_state.numpy()


_FORWARDS = {}


def _ours(model, tree, head, tokens, mask, types):
  # One jitted program per model (retraced per tree structure), shared by the tests.
  if model not in _FORWARDS:
    _FORWARDS[model] = jax.jit(
      lambda t, x, m, y: model.apply({'params': t}, x, attention_mask=m, token_type_ids=y)
    )
  out = _FORWARDS[model](tree, tokens, mask, types)
  return np.asarray(out['logits'] if head else out['hidden'])


@pytest.mark.parametrize('case', sorted(CASES))
def test_peft_encoder_adapter_roundtrip(case, bases, tmp_path):
  head, make_config, method_cls = CASES[case]
  path, model, params = bases[head]
  tokens, mask, types = hfe.padded_batch('bert')
  peft_model = peft.get_peft_model(_fresh_hf(head), make_config()).eval()
  gen = torch.Generator().manual_seed(3)
  with torch.no_grad():
    for _, p in peft_model.named_parameters():
      if p.requires_grad:  # the adapter and the modules_to_save copy of the head
        p.add_(SCALE * torch.randn(p.shape, generator=gen))
  peft_model.save_pretrained(tmp_path / 'peft')
  tree = hub.load_adapter(params, str(tmp_path / 'peft'))
  nodes = api.adapted_nodes(tree)
  adapter_nodes = {p: n for p, n in nodes.items() if not n.method.saved_module}
  assert len(adapter_nodes) == 3 * hfe.NUM_LAYERS
  assert all(isinstance(n.method, method_cls) for n in adapter_nodes.values())
  saved = {p for p, n in nodes.items() if n.method.saved_module}
  assert saved == ({'classifier/kernel', 'classifier/bias'} if head else set())
  ref = _reference(peft_model, head, tokens, mask, types)
  ours = _ours(model, tree, head, tokens, mask, types)
  # The adapter changed the output (a loader that dropped it would not pass).
  base_out = _reference(_fresh_hf(head), head, tokens, mask, types)
  assert np.max(np.abs(ref - base_out)) > 1e-2
  np.testing.assert_allclose(ours, ref, atol=1e-4)

  # Reverse: perturb our nodes (head included), export, load with peft on a fresh base.
  def bump(p, leaf):
    if not isinstance(leaf, Adapted):
      return leaf
    keys = jax.random.split(jax.random.fold_in(jax.random.key(7), hash(p) % 1000), len(leaf.params))
    new = {
      k: v + SCALE * jax.random.normal(kk, v.shape)
      for kk, (k, v) in zip(keys, sorted(leaf.params.items()))
    }
    return Adapted(leaf.base, new, leaf.frozen, leaf.method)

  tree2 = _map_tree(tree, bump)
  if head:
    hub.save_adapter(
      tree2,
      str(tmp_path / 'ours'),
      task_type='SEQ_CLS',
      module_name_fn=functools.partial(api.encoder_module_name, base_prefix='bert.'),
    )
  else:
    hub.save_adapter(tree2, str(tmp_path / 'ours'), task_type='FEATURE_EXTRACTION')
  reloaded = peft.PeftModel.from_pretrained(_fresh_hf(head), str(tmp_path / 'ours')).eval()
  ours2 = _ours(model, tree2, head, tokens, mask, types)
  np.testing.assert_allclose(ours2, _reference(reloaded, head, tokens, mask, types), atol=1e-4)

  # Merged and saved as a plain checkpoint, the same model loads in transformers.
  hub.save_encoder_pretrained(model.config, api.merge(tree2), tmp_path / 'merged')
  auto = (
    transformers.AutoModelForSequenceClassification if head else transformers.AutoModel
  ).from_pretrained(str(tmp_path / 'merged'))
  np.testing.assert_allclose(ours2, _reference(auto.eval(), head, tokens, mask, types), atol=1e-4)
