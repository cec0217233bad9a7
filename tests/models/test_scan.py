"""Scan over layers (``ModelConfig.scan_layers``): the scanned decoder reads the same checkpoint
as the unrolled one (stacked on load), gives transformers' logits, equals the unrolled model with
adapters injected on the stacked kernels, decodes with a KV cache, and writes byte-identical
adapter and HF files."""

import filecmp
import os

import helpers_hf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from peft_jax import hub, models
from peft_jax.adapters import api as adapters
from peft_jax.common import stacking
from peft_jax.train.step import per_layer_norms

# 1e-5: float32 logits of O(10) through the same ops in a different fusion order (scan body vs
# unrolled program); measured differences are ~1e-6.
ATOL = 1e-5
TARGETS = ['q_proj', 'v_proj', 'down_proj']


@pytest.fixture(scope='module')
def scanned(tiny_pairs):
  """{model_type: (scanned model, stacked params)} loaded from the shared tiny checkpoints."""
  out = {}
  for model_type in ('llama', 'gemma2'):
    model, params, _ = hub.load_pretrained(tiny_pairs[model_type].path, scan_layers=True)
    out[model_type] = (model, params)
  return out


def _adapt(params, key=1):
  """LoRA on q/v/down and VeRA on up (a method with arrays shared by every layer)."""
  rules = [(adapters.LoRA(rank=2, alpha=4.0), TARGETS), (adapters.VeRA(rank=4), ['up_proj'])]
  tree = adapters.inject(params, rules, key=jax.random.key(key))
  # Non-zero B factors / VeRA scales so the adapters change the logits.
  return jax.tree_util.tree_map_with_path(
    lambda path, x: x + 0.05 if str(path[-1]) in ("['lora_b']", "['vera_lambda_d']") else x, tree
  )


def test_scan_plan_by_layer_kinds_and_backend():
  cfg = models.ModelConfig(
    vocab_size=8,
    hidden_size=8,
    intermediate_size=8,
    num_layers=16,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
  )
  assert cfg.scan_plan()[0] == 0
  assert cfg.replace(scan_layers=True).scan_plan()[0] == 1
  assert cfg.replace(scan_layers='auto').scan_plan('cpu')[0] == 0
  assert cfg.replace(scan_layers='auto').scan_plan('gpu')[0] == 1
  assert cfg.replace(scan_layers='auto', num_layers=12, layer_types=None).scan_plan('tpu')[0] == 0
  gemma = cfg.replace(
    scan_layers=True, sliding_window=4, layer_types=('sliding_attention', 'full_attention') * 8
  )
  assert gemma.scan_plan()[0] == 2
  odd = gemma.replace(layer_types=('sliding_attention',) + ('full_attention',) * 15)
  period, reason = odd.scan_plan()
  assert period == 0 and 'unrolled' in reason
  with pytest.raises(ValueError, match='scan_layers'):
    cfg.replace(scan_layers='yes')


def test_scanned_logits_equal_transformers_and_unrolled_with_adapters(tiny_pairs, scanned):
  # Gemma 2 alternates sliding / full attention: its layers scan as pairs (a uniform stack of
  # period 1 is trained against the unrolled model in tests/parallel/test_sharded_training.py).
  model_type, period = 'gemma2', 2
  pair = tiny_pairs[model_type]
  model, params = scanned[model_type]
  assert model.config.scan_period == period
  assert stacking.is_stacked(params) and stacking.stack_period(params) == period
  q = params['layers']['block_0']['self_attn']['q_proj']['kernel']
  assert (
    q.shape
    == (helpers_hf.NUM_LAYERS // period,)
    + pair.params['layers_0']['self_attn']['q_proj']['kernel'].shape
  )
  tokens, mask = helpers_hf.left_padded_tokens()
  positions = jnp.asarray(models.decoder.default_positions(mask, None, tokens.shape))
  adapted, adapted_unrolled = _adapt(params), _adapt(pair.params)
  node = adapted['layers']['block_0']['self_attn']['q_proj']['kernel']
  assert node.params['lora_a'].shape[0] == helpers_hf.NUM_LAYERS // period

  def decode(m, p):
    """KV-cache decoding: prefill, then one step (the step's logits)."""
    cache = models.init_cache(m.config, tokens.shape[0], tokens.shape[1] + 1)
    _, cache = m.apply({'params': p}, tokens, positions=positions, attention_mask=mask, cache=cache)
    logits, _ = m.apply({'params': p}, tokens[:, -1:], positions=positions[:, -1:] + 1, cache=cache)
    return logits

  @jax.jit  # one program for every forward (compiling is most of this test's time)
  def run(base, adapted, adapted_unrolled):
    forward = lambda m, p: m.apply({'params': p}, tokens, attention_mask=mask)
    return dict(
      base=forward(model, base),
      ours=forward(model, adapted),
      reference=forward(pair.model, adapted_unrolled),
      decode=decode(model, adapted),
      decode_reference=decode(pair.model, adapted_unrolled),
    )

  out = jax.tree.map(np.asarray, run(params, adapted, adapted_unrolled))
  # The base model against transformers (the independent reference).
  with torch.no_grad():
    theirs = pair.hf_model(
      input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)
    ).logits.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(out['base'][real], theirs[real], atol=1e-4)
  # Adapters injected on the stacked kernels equal the same adapters on the unrolled model.
  assert np.abs(out['reference'][real] - theirs[real]).max() > 1e-2  # the adapters matter
  np.testing.assert_allclose(out['ours'], out['reference'], atol=ATOL, rtol=0)
  # KV-cache decoding through the scanned pairs of sliding / full layers.
  np.testing.assert_allclose(out['decode'], out['decode_reference'], atol=ATOL, rtol=0)
  # The unrolled view of the stacked tree is the unrolled tree.
  back = stacking.unstack_layers(adapted)
  for (pa, a), (pb, b) in zip(
    jax.tree_util.tree_flatten_with_path(back)[0],
    jax.tree_util.tree_flatten_with_path(adapted_unrolled)[0],
  ):
    assert pa == pb
    np.testing.assert_array_equal(a, b)


def test_capture_on_a_scanned_model_says_how_to_unroll(scanned):
  model, params = scanned['llama']
  with pytest.raises(ValueError, match='models.unrolled'):
    model.apply({'params': params}, np.zeros((1, 4), np.int32), capture=('residual',))
  config, unrolled = models.unrolled(model.config, params)
  # capture_activations runs a scanned model unrolled (its captures are per layer).
  tokens, mask = np.ones((1, 4), np.int32), np.ones((1, 4), np.int32)
  captured = models.capture_activations(model.config, params, tokens, mask, ['residual'])
  assert sorted(captured) == ['layers_0/residual', 'layers_1/residual']
  assert config.scan_period == 0 and sorted(k for k in unrolled if k.startswith('layers')) == [
    'layers_0',
    'layers_1',
  ]


def test_adapter_and_hf_files_byte_identical(tiny_pairs, scanned, tmp_path):
  pair = tiny_pairs['llama']  # period 1, an untied lm_head
  model, params = scanned['llama']
  lora = adapters.LoRA(rank=2, alpha=4.0)
  trees = {
    'scan': adapters.inject(params, lora, TARGETS, jax.random.key(3)),
    'unrolled': adapters.inject(pair.params, lora, TARGETS, jax.random.key(3)),
  }
  for name, tree in trees.items():
    hub.save_adapter(tree, str(tmp_path / name / 'adapter'))
    config = model.config if name == 'scan' else pair.config
    hub.save_pretrained(config, adapters.merge(tree), tmp_path / name / 'merged')
  for sub, files in (('adapter', None), ('merged', ['model.safetensors', 'config.json'])):
    left, right = tmp_path / 'scan' / sub, tmp_path / 'unrolled' / sub
    names = files or sorted(os.listdir(left))
    assert names and sorted(os.listdir(left)) == sorted(os.listdir(right))
    match, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    assert not mismatch and not errors, (sub, mismatch, errors)
  # The trainer's per-layer norms read stacked layers per layer, under the unrolled names.
  norms_fn = jax.jit(lambda t: per_layer_norms(t, 'n'))
  norms = {k: norms_fn(adapters.partition(t)[0]) for k, t in trees.items()}
  assert sorted(norms['scan']) == sorted(norms['unrolled']) == ['n/layers_0', 'n/layers_1']
  for key, value in norms['unrolled'].items():
    np.testing.assert_allclose(norms['scan'][key], value, rtol=1e-6)
  # A PEFT adapter loads onto the stacked base as onto the unrolled one.
  loaded = hub.load_adapter(params, str(tmp_path / 'unrolled' / 'adapter'))
  assert stacking.is_stacked(loaded)
  reference = hub.load_adapter(pair.params, str(tmp_path / 'unrolled' / 'adapter'))
  for a, b in zip(jax.tree.leaves(stacking.unstack_layers(loaded)), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  # A tree whose layers differ (an adapter on one layer only) cannot stack, and says so.
  with pytest.raises(ValueError, match='layers_1 differs in structure'):
    adapters.inject(
      stacking.stack_layers(pair.params), lora, ['q_proj'], jax.random.key(0), layers_to_transform=0
    )
