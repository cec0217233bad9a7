"""Delta activations from captures: masking, module deltas, normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest

import peft_jax.sae as S

B, T, D = 3, 5, 4


@pytest.fixture(scope='module')
def captures():
  rng = np.random.default_rng(0)
  mask = np.array(
    [
      [1, 1, 1, 0, 0],  # right padding
      [0, 0, 1, 1, 1],  # left padding
      [1, 1, 1, 1, 1],
    ],
    np.int32,
  )
  h_base = rng.normal(size=(B, T, D))
  h_adapted = h_base + 0.1 * rng.normal(size=(B, T, D))
  # Padding positions hold garbage that must never reach the result.
  h_adapted[mask == 0] = 1e6
  base = {
    'layers_0/residual': jnp.asarray(h_base, jnp.float32),
    'layers_1/residual': jnp.asarray(2 * h_base, jnp.float32),
  }
  adapted = {
    'layers_0/residual': jnp.asarray(h_adapted, jnp.float32),
    'layers_1/residual': jnp.asarray(2 * h_adapted, jnp.float32),
  }
  return base, adapted, mask, h_base, h_adapted


def test_collect_delta_respects_mask(captures):
  base, adapted, mask, h_base, h_adapted = captures
  rows = [(b, t) for b in range(B) for t in range(T) if mask[b, t]]
  ref = np.stack([h_adapted[b, t] - h_base[b, t] for b, t in rows])
  delta = S.collect_delta(base, adapted, mask, 'layers_0/residual')
  assert delta.shape == (len(rows), D) == (11, D)
  np.testing.assert_allclose(delta, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    S.collect_delta(base, adapted, mask, 'layers_1/residual'), 2 * ref, rtol=1e-5, atol=1e-6
  )
  # Arrays work too; without a mask every token is kept in row-major order.
  all_rows = S.collect_delta(h_base[2:], h_adapted[2:])
  np.testing.assert_allclose(all_rows, (h_adapted[2] - h_base[2]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    S.collect_activations(base, mask, 'layers_0/residual'),
    np.stack([h_base[b, t] for b, t in rows]),
    rtol=1e-6,
  )


def test_normalisations(captures):
  base, adapted, mask, h_base, h_adapted = captures
  raw = np.asarray(S.collect_delta(base, adapted, mask, 'layers_0/residual'), np.float64)
  unit = np.asarray(
    S.collect_delta(base, adapted, mask, 'layers_0/residual', normalize='unit_mean_norm')
  )
  np.testing.assert_allclose(unit, raw * np.sqrt(D) / np.linalg.norm(raw, axis=1).mean(), rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=1).mean(), np.sqrt(D), rtol=1e-5)
  x, stats = S.normalize_activations(jnp.asarray(raw, jnp.float32), 'center_unit_mean_norm')
  centred = raw - raw.mean(0)
  scale = np.sqrt(D) / np.linalg.norm(centred, axis=1).mean()
  np.testing.assert_allclose(x, centred * scale, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats.mean, raw.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(stats.scale, scale, rtol=1e-5)
  x, stats = S.normalize_activations(jnp.asarray(raw, jnp.float32), 'none')
  np.testing.assert_allclose(x, raw, rtol=1e-6)
  assert float(stats.scale) == 1.0


def test_module_delta_is_the_lora_term():
  rng = np.random.default_rng(1)
  d_in, d_out, r, s = 6, 5, 2, 2.0
  x = rng.normal(size=(2, 4, d_in))
  w0 = rng.normal(size=(d_in, d_out))
  a, b = rng.normal(size=(d_in, r)), rng.normal(size=(r, d_out))
  y = x @ w0 + s * (x @ a) @ b
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
  caps = {
    'layers_2/self_attn/q_proj/in': jnp.asarray(x, jnp.float32),
    'layers_2/self_attn/q_proj/out': jnp.asarray(y, jnp.float32),
  }
  out = S.module_delta(caps, jnp.asarray(w0, jnp.float32), 'layers_2/self_attn/q_proj', mask)
  ref = (s * (x @ a) @ b)[mask == 1]
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise(captures):
  base, adapted, mask, _, _ = captures
  with pytest.raises(KeyError, match='layers_0/residual'):
    S.collect_delta(base, adapted, mask, 'layers_9/residual')
  with pytest.raises(ValueError, match='key_name'):
    S.collect_delta(base, adapted, mask)
  with pytest.raises(ValueError, match='token shape'):
    S.collect_delta(base, adapted, mask[:, :4], 'layers_0/residual')
  with pytest.raises(ValueError, match='equal'):
    S.collect_delta(jnp.ones((3, 4)), jnp.ones((3, 5)))
  with pytest.raises(ValueError, match='no tokens'):
    S.collect_delta(base, adapted, np.zeros_like(mask), 'layers_0/residual')
  with pytest.raises(ValueError, match='valid'):
    S.collect_delta(base, adapted, mask, 'layers_0/residual', normalize='zscore')
  with pytest.raises(ValueError, match='base_kernel'):
    S.module_delta({'m/in': jnp.ones((2, 3)), 'm/out': jnp.ones((2, 4))}, jnp.ones((4, 3)), 'm')
