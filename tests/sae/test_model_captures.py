"""collect_delta and module_delta on real captures of the peft_jax decoder with LoRA adapters."""

import jax
import jax.numpy as jnp
import numpy as np

import peft_jax.sae as S
from peft_jax.adapters import api as inject
from peft_jax.adapters.core import Adapted
from peft_jax.adapters.lora import LoRA
from peft_jax.models import Decoder, ModelConfig, init_params


def test_deltas_from_decoder_captures():
  cfg = ModelConfig(
    vocab_size=40,
    hidden_size=16,
    intermediate_size=24,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    model_type='llama',
  )
  params = init_params(cfg, jax.random.key(0))
  method = LoRA(rank=2, alpha=4.0)
  tree = inject.inject(params, method, ['q_proj', 'down_proj'], jax.random.key(1))
  # A fresh LoRA has B = 0 (no change); give every B random values so the adapter acts.
  rng = np.random.default_rng(0)
  tree = jax.tree.map(
    lambda n: (
      Adapted(
        n.base,
        {
          **n.params,
          'lora_b': jnp.asarray(0.3 * rng.normal(size=n.params['lora_b'].shape), jnp.float32),
        },
        n.frozen,
        n.method,
      )
      if isinstance(n, Adapted)
      else n
    ),
    tree,
    is_leaf=lambda n: isinstance(n, Adapted),
  )
  tokens = jnp.asarray(rng.integers(1, 40, size=(2, 7)), jnp.int32)
  mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]], np.int32)
  model = Decoder(cfg)
  capture = ('residual', 'down_proj')
  _, base_caps = model.apply(
    {'params': params}, tokens, attention_mask=jnp.asarray(mask), capture=capture
  )
  _, adapted_caps = model.apply(
    {'params': tree}, tokens, attention_mask=jnp.asarray(mask), capture=capture
  )

  # Residual delta: the difference of the captured residual streams on the real tokens only.
  for layer in (0, 1):
    key = f'layers_{layer}/residual'
    delta = S.collect_delta(base_caps, adapted_caps, mask, key)
    ref = np.asarray(adapted_caps[key], np.float64) - np.asarray(base_caps[key], np.float64)
    np.testing.assert_allclose(delta, ref[mask == 1], rtol=1e-4, atol=1e-5)
    assert delta.shape == (10, 16) and float(jnp.abs(delta).max()) > 1e-3

  # Module delta: exactly the LoRA term s (x a) b at the adapted down_proj.
  path = 'layers_1/mlp/down_proj'
  node = tree['layers_1']['mlp']['down_proj']['kernel']
  out = S.module_delta(adapted_caps, params['layers_1']['mlp']['down_proj']['kernel'], path, mask)
  x = np.asarray(adapted_caps[path + '/in'], np.float64)[mask == 1]
  a = np.asarray(node.params['lora_a'], np.float64)
  b = np.asarray(node.params['lora_b'], np.float64)
  np.testing.assert_allclose(out, (4.0 / 2) * (x @ a) @ b, rtol=1e-4, atol=1e-5)
