"""Whole-model analysis: per-kernel spectra and per-capture activation metrics, batched by shape,
equal the per-module functions; captures come from the tiny decoder with a LoRA merged in.
SVD-based metrics (two float32 computations) agree within twice their float32 perturbation bound
(tests/svd_bounds.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import geometry, models
from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted, is_adapted

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import svd_bounds  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def tiny():
  config = models.ModelConfig(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=24,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
  )
  params = models.init_params(config, jax.random.key(0))
  tree = api.inject(
    params, api.LoRA(rank=2, alpha=4.0), targets=['q_proj', 'down_proj'], key=jax.random.key(1)
  )
  keys = iter(jax.random.split(jax.random.key(2), 8))

  def trained(node):  # LoRA B starts at 0; give it values so ΔW != 0
    if not is_adapted(node):
      return node
    new = {k: v + 0.2 * jax.random.normal(next(keys), v.shape) for k, v in node.params.items()}
    return Adapted(node.base, new, node.frozen, node.method)

  merged = api.merge(jax.tree.map(trained, tree, is_leaf=is_adapted))
  return models.Decoder(config), params, merged


def test_spectral_summary_tree(tiny):
  _, params, merged = tiny
  out = geometry.spectral_summary_tree(params, merged)
  kernels = geometry.flat_kernels(params)
  single_fn = jax.jit(geometry.spectral_summary)
  assert set(out) == set(kernels) and 'layers_0/self_attn/q_proj/kernel' in out
  for path, summary in out.items():
    single = single_fn(kernels[path], geometry.flat_kernels(merged)[path])
    bounds = svd_bounds.summary_bounds(
      np.asarray(kernels[path], np.float64).T,
      np.asarray(geometry.flat_kernels(merged)[path], np.float64).T,
    )
    for name in single._fields:
      diff = np.abs(np.asarray(getattr(summary, name)) - np.asarray(getattr(single, name)))
      assert np.all(diff <= 2 * bounds[name]), f'{path} {name}: {diff} > 2 * {bounds[name]}'
    changed = 'q_proj' in path or 'down_proj' in path
    assert (float(summary.E_delta_max) > 0) == changed, path
  only_mlp = geometry.spectral_summary_tree(params, merged, include=lambda p: 'mlp' in p)
  assert all('mlp' in p for p in only_mlp)
  with pytest.raises(ValueError, match='no kernel selected'):
    geometry.spectral_summary_tree(params, merged, include=lambda p: False)


def test_activation_geometry_dict_on_captures(tiny):
  model, params, merged = tiny
  tokens = jax.random.randint(jax.random.key(3), (2, 7), 0, 32)
  mask = jnp.ones((2, 7)).at[1, 5:].set(0)
  _, cap0 = model.apply(
    {'params': params}, tokens, attention_mask=mask, capture=('q_proj', 'v_proj', 'residual')
  )
  _, cap1 = model.apply(
    {'params': merged}, tokens, attention_mask=mask, capture=('q_proj', 'v_proj', 'residual')
  )
  out = geometry.activation_geometry_dict(cap0, cap1, mask=mask, pca_ks=(2,))
  assert set(out) == set(cap0) & set(cap1)
  single_fn = jax.jit(lambda a, b: geometry.activation_geometry(a, b, mask=mask, pca_ks=(2,)))
  real = np.asarray(mask).astype(bool)
  for name, metrics in out.items():
    single = single_fn(cap0[name], cap1[name])
    x0, x1 = np.asarray(cap0[name])[real], np.asarray(cap1[name])[real]
    procrustes = svd_bounds.procrustes_residual_bound(x0, x1)
    svd_based = {
      'procrustes_residual': procrustes,
      'procrustes_improvement': procrustes + 2e-5 * float(single['raw_residual']) + 2e-6,
      'pca_distance_k2': svd_bounds.pca_distance_bound(x0, x1, 2),
    }
    for metric, value in single.items():
      if metric in svd_based:
        assert abs(float(metrics[metric]) - float(value)) <= 2 * svd_based[metric], (name, metric)
      else:
        np.testing.assert_allclose(
          metrics[metric], value, rtol=2e-5, atol=2e-6, err_msg=f'{name} {metric}'
        )
  # v_proj is not adapted and its input (layer 0) is the embedding stream: unchanged in layer 0.
  unchanged = out['layers_0/self_attn/v_proj/out']
  assert float(unchanged['cka']) == pytest.approx(1.0, abs=1e-6)
  assert float(unchanged['raw_residual']) < 1e-6
  assert float(out['layers_0/self_attn/q_proj/out']['raw_residual']) > 1e-3
  with pytest.raises(ValueError, match='missing'):
    geometry.activation_geometry_dict(cap0, cap1, keys=['nope'])
