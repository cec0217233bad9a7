"""The encoder against transformers' BertModel / RobertaModel (and their sequence classifiers) on
tiny random checkpoints and on the real all-MiniLM-L6-v2 weights.

Tolerances: the acceptance bound 1e-4 on hidden states (float32; the two implementations sum in
different orders, and LayerNorm divides by a standard deviation of O(0.1-1), which amplifies
rounding of O(1e-7) per op to O(1e-6) per layer); 1e-5 on L2-normalised pooled embeddings (the
normalisation divides by a norm of O(1-10)).
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import helpers_hf_encoders as hfe  # noqa: E402  pylint: disable=g-import-not-at-top

from peft_jax import hub, models  # noqa: E402
from peft_jax.adapters import api  # noqa: E402
from peft_jax.hub import encoder_checkpoint  # noqa: E402

# BertModel's names (no prefix, with pooler) are the real MiniLM file's, tested below; here the
# classifiers: BERT with the 'bert.' prefix, pooler and head; RoBERTa with 'roberta.', no pooler
# and RoBERTa's own head.
VARIANTS = [('bert', True), ('roberta', True)]


class Pair:
  def __init__(self, model_type, head, path):
    self.model_type, self.head = model_type, head
    self.hf = hfe.tiny_hf_encoder(model_type, head)
    self.hf.save_pretrained(path)
    self.model, self.params, _ = hub.load_pretrained(path)
    self.path = path


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
  root = tmp_path_factory.mktemp('encoders')
  return {(t, h): Pair(t, h, root / f'{t}_{h}') for t, h in VARIANTS}


@pytest.mark.parametrize('model_type,head', VARIANTS)
def test_outputs_match_transformers(pairs, model_type, head):
  pair = pairs[(model_type, head)]
  cfg = pair.model.config
  assert cfg.model_type == model_type and bool(cfg.num_labels) == head
  # RobertaForSequenceClassification has no pooler; every other variant keeps BERT's.
  assert cfg.pooler == (not (head and model_type == 'roberta'))
  tokens, mask, types = hfe.padded_batch(model_type)
  outputs, captures = jax.jit(
    lambda p, t, m, y: pair.model.apply(
      {'params': p}, t, attention_mask=m, token_type_ids=y, capture=('residual',)
    )
  )(pair.params, tokens, mask, types)
  with torch.no_grad():
    ref = pair.hf(**hfe.torch_inputs(tokens, mask, types), output_hidden_states=True)
  hidden_states = [h.numpy() for h in ref.hidden_states]
  # Every position, padding included: HF's padding queries also attend to the real keys.
  np.testing.assert_allclose(np.asarray(outputs['hidden']), hidden_states[-1], atol=1e-4)
  for i in range(cfg.num_layers):
    np.testing.assert_allclose(
      np.asarray(captures[f'layers_{i}/residual']), hidden_states[i + 1], atol=1e-4
    )
  np.testing.assert_allclose(np.asarray(outputs['logits']), ref.logits.numpy(), atol=1e-4)


def test_roberta_positions_skip_padding():
  """RoBERTa counts real tokens from pad + 1 and parks padding at pad (HF's
  create_position_ids_from_input_ids), whatever the padding side."""
  cfg = models.EncoderConfig(
    vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
    model_type='roberta', pad_token_id=1, max_position_embeddings=12,
  )  # fmt: skip
  tokens = jnp.asarray([[5, 6, 7, 1, 1], [1, 1, 5, 6, 7]])
  expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
    torch.tensor(np.asarray(tokens)), padding_idx=1
  ).numpy()
  from peft_jax.models.encoder import encoder_positions

  np.testing.assert_array_equal(np.asarray(encoder_positions(cfg, tokens)), expected)


def test_adapter_methods_and_axes_cover_the_encoder(pairs):
  """Every registered method injects by target regex (and a head as modules_to_save) on the
  encoder, the forward traces, and every array gets logical axes of its own rank."""
  pair = pairs[('bert', True)]
  tokens, mask, types = hfe.padded_batch('bert')
  regex = r'encoder\.layer\.\d+\.attention\.self\.(query|value)'
  for name in api.method_names():
    fields = {f.name for f in dataclasses.fields(api.METHODS[name])}
    method = api.make_method(name, **({'rank': 4} if 'rank' in fields else {}))
    # Shapes only (eval_shape): the structure is what this test checks.
    tree = jax.eval_shape(
      lambda p: api.inject(p, method, regex, jax.random.key(0), modules_to_save=['classifier']),
      pair.params,
    )
    nodes = api.adapted_nodes(tree)
    saved = {p for p, n in nodes.items() if n.method.saved_module}
    assert saved == {'classifier/kernel', 'classifier/bias'}, name
    adapted = {p for p, n in nodes.items() if not n.method.saved_module}
    if method.adapts == 'all':
      assert len(adapted) == len(jax.tree.leaves(pair.params)) - 2, name
    else:
      assert adapted == {
        f'layers_{i}/attention/self/{m}/kernel' for i in range(2) for m in ('query', 'value')
      }, name
    axes = models.param_logical_axes(tree, pair.model.config)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    ranks = [len(a) for a in jax.tree.leaves(axes, is_leaf=is_axes)]
    assert ranks == [len(x.shape) for x in jax.tree.leaves(tree)], name
    out = jax.eval_shape(
      lambda t: pair.model.apply({'params': t}, tokens, attention_mask=mask, token_type_ids=types),
      tree,
    )
    assert out['logits'].shape == (3, hfe.NUM_LABELS), name
    trainable, frozen = api.partition(tree)
    # The head trains beside the adapter; its pre-training copy stays frozen.
    assert trainable['classifier']['kernel'].params['weight'].shape == (hfe.HIDDEN_SIZE, 3)
    assert frozen['classifier']['kernel'].base.shape == (hfe.HIDDEN_SIZE, 3)


@pytest.fixture(scope='module')
def minilm():
  return hub.load_pretrained('all-minilm-l6-v2')


def test_minilm_matches_transformers_and_mean_pooling(minilm):
  model, params, tokenizer = minilm
  cfg = model.config
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (
    6,
    384,
    12,
    1536,
  )
  assert cfg.vocab_size == 30522 and cfg.pooler
  texts = [
    'A man is playing a guitar on the street.',
    'The dictionary maps keys to values.',
    'Hello world',
    'Generators yield values lazily, one at a time, when iterated.',
  ]
  batch = hub.encode_texts(tokenizer, texts, max_length=32)
  ours = jax.jit(
    lambda p, t, m, y: model.apply({'params': p}, t, attention_mask=m, token_type_ids=y)
  )(params, batch['tokens'], batch['attention_mask'], batch['token_type_ids'])
  directory = encoder_checkpoint.named_encoder_directory('all-minilm-l6-v2')
  reference = transformers.AutoModel.from_pretrained(str(directory), attn_implementation='eager')
  reference.eval()
  with torch.no_grad():
    ref = reference(
      input_ids=torch.tensor(batch['tokens'], dtype=torch.long),
      attention_mask=torch.tensor(batch['attention_mask'], dtype=torch.long),
      token_type_ids=torch.tensor(batch['token_type_ids'], dtype=torch.long),
    )
  hidden_ref = ref.last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(ours['hidden']), hidden_ref, atol=1e-4)
  np.testing.assert_allclose(
    np.asarray(ours['pooler_output']), ref.pooler_output.numpy(), atol=1e-4
  )
  # sentence-transformers' pipeline (Transformer -> mean pooling -> Normalize), in float64
  # from its definition on transformers' output.
  m = batch['attention_mask'][..., None].astype(np.float64)
  pooled_ref = (hidden_ref.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
  pooled_ref /= np.linalg.norm(pooled_ref, axis=-1, keepdims=True)
  ours_emb = models.sentence_embeddings(
    model, params, batch['tokens'], batch['attention_mask'], normalize=True
  )
  np.testing.assert_allclose(np.asarray(ours_emb), pooled_ref, atol=1e-5)
  # The real model's semantics: the two programming sentences are closer to each other than
  # to the guitar.
  sims = pooled_ref @ pooled_ref.T
  assert sims[1, 3] > sims[0, 1] and sims[1, 3] > sims[0, 3]
