"""Sites, delta programs and CE-loss recovered against transformers (PyTorch) with forward hooks.

The reference splices the SAE reconstruction (float64 NumPy from the definition) into a
transformers Llama through ``register_forward_hook`` on the decoder layer (residual sites) or
on the linear module (module sites), with the LoRA merged into the torch weights
(``W0 + s A B``), and computes the next-token loss in float64 from the torch logits.
"""

import copy
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from peft_jax import hub
from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted
from peft_jax.sae import splice

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import helpers_hf  # noqa: E402  pylint: disable=g-import-not-at-top

RANK, ALPHA = 4, 8.0
M = 24  # SAE features


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  path = helpers_hf.save_tiny_hf_model('llama', tmp_path_factory.mktemp('sae_llama') / 'm')
  model, params, _ = hub.load_pretrained(str(path))
  config = model.config
  tree = api.inject(
    params, api.make_method('lora', rank=RANK, alpha=ALPHA), ['q_proj', 'down_proj'],
    jax.random.key(1),
  )  # fmt: skip
  rng = np.random.default_rng(0)

  def randomise(node):
    if not isinstance(node, Adapted):
      return node
    b = 0.2 * rng.normal(size=node.params['lora_b'].shape)
    return Adapted(node.base, {**node.params, 'lora_b': jnp.asarray(b, jnp.float32)}, node.frozen,
                   node.method)  # fmt: skip

  tree = jax.tree.map(randomise, tree, is_leaf=lambda n: isinstance(n, Adapted))
  hf_base = helpers_hf.tiny_hf_model('llama').double()
  hf_adapted = copy.deepcopy(hf_base)
  s = ALPHA / RANK
  with torch.no_grad():
    for i in range(config.num_layers):
      for group, name in (('self_attn', 'q_proj'), ('mlp', 'down_proj')):
        node = tree[f'layers_{i}'][group][name]['kernel']
        a = np.asarray(node.params['lora_a'], np.float64)
        b = np.asarray(node.params['lora_b'], np.float64)
        module = getattr(getattr(hf_adapted.model.layers[i], group), name)
        module.weight += torch.from_numpy((s * a @ b).T)
  tokens = rng.integers(3, helpers_hf.VOCAB_SIZE, size=(3, 11)).astype(np.int32)
  segment_ids = np.ones((3, 11), np.int32)
  segment_ids[1, 7:] = 0  # right padding
  segment_ids[2, 9:] = 0
  loss_mask = (segment_ids != 0).astype(np.int32)
  loss_mask[:, :3] = 0  # a prompt
  positions = np.tile(np.arange(11, dtype=np.int32), (3, 1))
  return dict(
    config=config, params=params, tree=tree, hf_base=hf_base, hf_adapted=hf_adapted,
    tokens=tokens, segment_ids=segment_ids, loss_mask=loss_mask, positions=positions, rng=rng,
  )  # fmt: skip


def _sae(rng, d):
  return {
    'W_enc': rng.normal(size=(d, M)) / np.sqrt(d),
    'b_enc': 0.1 * rng.normal(size=M),
    'W_dec': rng.normal(size=(M, d)) / np.sqrt(d),
    'b_dec': 0.1 * rng.normal(size=d),
  }


def _np_recon(p, v, mean, scale):
  x = (v - mean) * scale
  f = np.maximum((x - p['b_dec']) @ p['W_enc'] + p['b_enc'], 0.0)
  return (f @ p['W_dec'] + p['b_dec']) / scale + mean


def _torch_losses(model, s, hook_module=None, hook=None):
  """Per-sequence next-token CE sums of ``model`` (float64), with an optional output hook."""
  handle = hook_module.register_forward_hook(hook) if hook is not None else None
  try:
    with torch.no_grad():
      logits = model(
        input_ids=torch.from_numpy(s['tokens']).long(),
        attention_mask=torch.from_numpy(s['segment_ids'] != 0).long(),
        position_ids=torch.from_numpy(s['positions']).long(),
      ).logits.numpy()
  finally:
    if handle is not None:
      handle.remove()
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  targets = s['tokens'][:, 1:]
  picked = np.take_along_axis(logits[:, :-1], targets[..., None], -1)[..., 0]
  seg = s['segment_ids']
  w = s['loss_mask'][:, 1:] * (seg[:, 1:] == seg[:, :-1]) * (seg[:, 1:] != 0)
  return ((logz[:, :-1] - picked) * w).sum(1), w.sum(1)


def _replace_output(fn):
  """A forward hook replacing a module's output (tensor, or a tuple's first item)."""

  def hook(module, inputs, output):
    if isinstance(output, tuple):
      return (torch.from_numpy(fn(output[0].numpy(), inputs[0].numpy())),) + output[1:]
    return torch.from_numpy(fn(output.numpy(), inputs[0].numpy()))

  return hook


def _capture_output(module, model, s):
  captured = {}

  def hook(mod, inputs, output):
    captured['y'] = (output[0] if isinstance(output, tuple) else output).numpy().copy()

  _torch_losses(model, s, module, hook)
  return captured['y']


def _ours(s, site, mode, sae, mean, scale):
  spec = splice.SpliceSpec(site, mode, 'relu', None, 1e-3)
  program = splice.splice_program(s['config'], spec)
  out = program(
    s['tree'] if mode == 'delta' else s['params'], s['params'],
    jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), sae),
    jnp.asarray(mean, jnp.float32), jnp.asarray(scale, jnp.float32),
    *(jnp.asarray(s[k]) for k in ('tokens', 'positions', 'segment_ids', 'loss_mask')),
  )  # fmt: skip
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _check(ours, ref):
  # float32 forward vs float64 reference: relative error of a few ulp x depth on O(1) losses.
  for name in ('clean', 'spliced', 'ablated'):
    np.testing.assert_allclose(ours[name], ref[name], rtol=1e-4, atol=1e-4, err_msg=name)
  np.testing.assert_array_equal(ours['count'], ref['count'])
  totals = {k: ours[k].sum() / ours['count'].sum() for k in ('clean', 'spliced', 'ablated')}
  ref_totals = {k: ref[k].sum() / ref['count'].sum() for k in ('clean', 'spliced', 'ablated')}
  recovered = splice.ce_recovered(totals['clean'], totals['spliced'], totals['ablated'])
  ref_recovered = (ref_totals['ablated'] - ref_totals['spliced']) / (
    ref_totals['ablated'] - ref_totals['clean']
  )
  assert abs(ref_totals['ablated'] - ref_totals['clean']) > 1e-2  # the ablation matters
  np.testing.assert_allclose(recovered, ref_recovered, rtol=1e-3, atol=1e-4)


def test_ce_recovered_base_residual(setup):
  s = setup
  d = s['config'].hidden_size
  sae, mean, scale = _sae(s['rng'], d), 0.1 * s['rng'].normal(size=d), 1.7
  ours = _ours(s, 'layers_0/residual', 'base', sae, mean, scale)
  layer = s['hf_base'].model.layers[0]
  ref = {}
  ref['clean'], ref['count'] = _torch_losses(s['hf_base'], s)
  ref['spliced'], _ = _torch_losses(
    s['hf_base'], s, layer, _replace_output(lambda y, x: _np_recon(sae, y, mean, scale))
  )
  ref['ablated'], _ = _torch_losses(s['hf_base'], s, layer, _replace_output(lambda y, x: 0 * y))
  _check(ours, ref)


def test_ce_recovered_delta_residual(setup):
  s = setup
  d = s['config'].hidden_size
  sae, mean, scale = _sae(s['rng'], d), np.zeros(d), 3.0
  ours = _ours(s, 'layers_0/residual', 'delta', sae, mean, scale)
  h_base = _capture_output(s['hf_base'].model.layers[0], s['hf_base'], s)
  layer = s['hf_adapted'].model.layers[0]
  ref = {}
  ref['clean'], ref['count'] = _torch_losses(s['hf_adapted'], s)
  ref['spliced'], _ = _torch_losses(
    s['hf_adapted'], s, layer,
    _replace_output(lambda y, x: h_base + _np_recon(sae, y - h_base, mean, scale)),
  )  # fmt: skip
  ref['ablated'], _ = _torch_losses(s['hf_adapted'], s, layer, _replace_output(lambda y, x: h_base))
  _check(ours, ref)


def test_ce_recovered_delta_module(setup):
  s = setup
  d = s['config'].hidden_size
  sae, mean, scale = _sae(s['rng'], d), np.zeros(d), 2.0
  ours = _ours(s, 'layers_1/mlp/down_proj/out', 'delta', sae, mean, scale)
  w0 = s['hf_base'].model.layers[1].mlp.down_proj.weight.detach().numpy()  # [out, in]
  module = s['hf_adapted'].model.layers[1].mlp.down_proj
  ref = {}
  ref['clean'], ref['count'] = _torch_losses(s['hf_adapted'], s)
  ref['spliced'], _ = _torch_losses(
    s['hf_adapted'], s, module,
    _replace_output(lambda y, x: x @ w0.T + _np_recon(sae, y - x @ w0.T, mean, scale)),
  )  # fmt: skip
  ref['ablated'], _ = _torch_losses(
    s['hf_adapted'], s, module, _replace_output(lambda y, x: x @ w0.T)
  )
  _check(ours, ref)


def _capture_input(module, model, s):
  captured = {}

  def hook(mod, inputs, output):
    captured['x'] = inputs[0].numpy().copy()

  _torch_losses(model, s, module, hook)
  return captured['x']


def test_delta_programs_equal_direct_computations(setup):
  """Module delta = s x A B from the adapter's params; residual delta = two forward passes
  (of the float64 torch models)."""
  s = setup
  sites = ('layers_0/residual', 'layers_1/residual', 'layers_1/mlp/down_proj/out',
           'layers_0/self_attn/q_proj/out')  # fmt: skip
  args = [jnp.asarray(s[k]) for k in ('tokens', 'positions', 'segment_ids')]
  base_values = splice.base_program(s['config'], sites)(s['params'], *args)
  deltas = splice.delta_program(s['config'], sites)(s['tree'], base_values, *args)
  real = s['segment_ids'] != 0  # padding positions differ (HF masks them differently)
  for i in (0, 1):
    h_base = _capture_output(s['hf_base'].model.layers[i], s['hf_base'], s)
    h_adapted = _capture_output(s['hf_adapted'].model.layers[i], s['hf_adapted'], s)
    ref = (h_adapted - h_base)[real]
    np.testing.assert_allclose(np.asarray(deltas[f'layers_{i}/residual'])[real], ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(base_values[f'layers_{i}/residual'])[real], h_base[real],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert np.abs(ref).max() > 1e-2
  scale = ALPHA / RANK
  for i, group, name in ((1, 'mlp', 'down_proj'), (0, 'self_attn', 'q_proj')):
    node = s['tree'][f'layers_{i}'][group][name]['kernel']
    module = getattr(getattr(s['hf_adapted'].model.layers[i], group), name)
    x = _capture_input(module, s['hf_adapted'], s)[real]
    a = np.asarray(node.params['lora_a'], np.float64)
    b = np.asarray(node.params['lora_b'], np.float64)
    ref = scale * (x @ a) @ b
    np.testing.assert_allclose(np.asarray(deltas[f'layers_{i}/{group}/{name}/out'])[real], ref,
                               rtol=0, atol=1e-5)  # fmt: skip
    assert np.abs(ref).max() > 1e-2
  with pytest.raises(ValueError, match='not adapted'):
    splice.delta_program(s['config'], ('layers_0/mlp/up_proj/out',))(s['tree'], {}, *args)
  with pytest.raises(ValueError, match='neither'):
    splice.parse_site('layers_0/mlp', 2)
  with pytest.raises(ValueError, match='outside'):
    splice.parse_site('layers_5/residual', 2)
