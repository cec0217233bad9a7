"""KV-cache generation: greedy parity with transformers, sampling filters, log-probs, buckets."""

import importlib

import helpers_hf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from peft_jax import hub
from peft_jax.adapters.core import Adapted
from peft_jax.evals.generation import generate_text
from peft_jax.models import generate, sample_logits

# peft_jax.models.generate is the function; the module holds the jitted program.
generate_module = importlib.import_module('peft_jax.models.generate')

EOS_IDS = (2, 5, 9)  # several ids so that some rows stop early in 20 steps


def _prompts(seed=1, batch=3, length=7, pad_lengths=(0, 2, 5)):
  return helpers_hf.left_padded_tokens(seed, batch, length, pad_lengths)


@pytest.mark.parametrize('model_type', helpers_hf.MODEL_TYPES)
def test_greedy_matches_transformers_generate(tiny_pairs, model_type):
  pair = tiny_pairs[model_type]
  tokens, mask = _prompts()
  with torch.no_grad():
    ref = pair.hf_model.generate(
      torch.tensor(tokens),
      attention_mask=torch.tensor(mask),
      max_new_tokens=20,
      do_sample=False,
      eos_token_id=list(EOS_IDS),
      pad_token_id=0,
    )[:, tokens.shape[1] :].numpy()
  out = generate(
    pair.model,
    pair.params,
    tokens,
    mask,
    key=jax.random.key(0),
    max_new_tokens=20,
    eos_token_id=EOS_IDS,
    pad_token_id=0,
  )
  ours = np.asarray(out.tokens)
  assert ours.shape == (3, 20)
  # transformers stops the batch once every row is done; we keep padding to max_new_tokens.
  np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
  assert (ours[:, ref.shape[1] :] == 0).all()
  for row, length in enumerate(np.asarray(out.lengths)):
    hit = np.isin(ours[row], EOS_IDS)
    assert length == (np.argmax(hit) + 1 if hit.any() else 20)
    assert (ours[row, length:] == 0).all()


def test_log_probs_match_full_forward_and_sampling_is_reproducible(tiny_pairs):
  """Sampled tokens' log-probs equal a cache-free forward over prompt + continuation."""
  pair = tiny_pairs['gemma2']  # sliding window 4 < prompt + 12 new tokens: the cache must window
  tokens, mask = _prompts()
  kwargs = dict(
    key=jax.random.key(3),
    max_new_tokens=12,
    temperature=0.9,
    top_k=50,
    top_p=0.95,
    eos_token_id=(),
    pad_token_id=0,
  )
  out = generate(pair.model, pair.params, tokens, mask, **kwargs)
  again = generate(pair.model, pair.params, tokens, mask, **kwargs)
  np.testing.assert_array_equal(out.tokens, again.tokens)
  other = generate(pair.model, pair.params, tokens, mask, **dict(kwargs, key=jax.random.key(4)))
  assert (np.asarray(other.tokens) != np.asarray(out.tokens)).any()
  assert (np.asarray(out.lengths) == 12).all()
  full = np.concatenate([tokens, np.asarray(out.tokens)], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(np.asarray(out.tokens))], axis=1)
  logits = np.asarray(
    jax.jit(pair.model.apply)({'params': pair.params}, full, attention_mask=full_mask), np.float64
  )
  prompt_length = tokens.shape[1]
  step_logits = logits[:, prompt_length - 1 : -1]
  log_softmax = (
    step_logits
    - np.log(np.exp(step_logits - step_logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - step_logits.max(-1, keepdims=True)
  )
  expected = np.take_along_axis(log_softmax, np.asarray(out.tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.log_probs, expected, atol=1e-4)


def _filtered_distribution(logits, temperature, top_k, top_p):
  """float64 reference of temperature -> top-k -> top-p, written from the definitions."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z)
  keep = np.zeros_like(z, bool)
  keep[order[:top_k] if top_k else order] = True
  probs = np.where(keep, np.exp(z - z.max()), 0.0)
  probs /= probs.sum()
  kept = np.zeros_like(z, bool)
  mass = 0.0
  for index in order:  # smallest most-likely set whose mass reaches top_p
    if not keep[index] or mass >= top_p:
      break
    kept[index] = True
    mass += probs[index]
  probs = np.where(kept, probs, 0.0)
  return probs / probs.sum()


def test_sampling_filters_match_reference_distribution():
  logits = jnp.asarray([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, 0.9]])
  draws = 40000
  keys = jax.random.split(jax.random.key(0), draws)
  for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8), (1.0, 5, 0.6)]:
    sample = jax.jit(
      jax.vmap(
        lambda k, t=temperature, kk=top_k, p=top_p: sample_logits(
          logits, k, temperature=t, top_k=kk, top_p=p
        )[0]
      )
    )
    counts = np.bincount(np.asarray(sample(keys)), minlength=logits.shape[1]) / draws
    expected = _filtered_distribution(logits[0], temperature, top_k, top_p)
    assert (counts[expected == 0] == 0).all(), (temperature, top_k, top_p, counts, expected)
    # Binomial standard error is at most 0.0025 at 40000 draws: 5 sigma.
    np.testing.assert_allclose(counts, expected, atol=0.0125)
  greedy = sample_logits(logits, jax.random.key(0), temperature=0.0, top_k=0, top_p=1.0)
  assert int(greedy[0]) == 0


def _kept_with_ties(logits, temperature, top_k, top_p):
  """float64 reference of the filter's stated rule: top-k keeps every logit >= the k-th largest;
  top-p then keeps a logit when the probability of the strictly larger ones is < top_p."""
  z = np.asarray(logits, np.float64) / temperature
  keep = np.ones_like(z, bool)
  if top_k:
    keep = z >= np.sort(z)[::-1][top_k - 1]
  probs = np.where(keep, np.exp(z - z.max()), 0.0)
  probs /= probs.sum()
  values, inverse = np.unique(z, return_inverse=True)  # ascending
  per_value = np.bincount(inverse.ravel(), weights=probs, minlength=values.size)
  above = np.concatenate([np.cumsum(per_value[::-1])[::-1][1:], [0.0]])  # mass strictly above
  return keep & (above[inverse.ravel()] < top_p)


def test_filter_on_a_large_vocabulary_matches_the_sorted_definition():
  """On V = 4096 (peaked and flat rows, ties, -inf entries) the radix-search thresholds keep
  exactly the float64 reference's top-k / top-p set, and the draw with a fixed key equals the
  draw from the reference's masked logits."""
  rng = np.random.default_rng(0)
  vocab = 4096
  peaked = rng.standard_normal((3, vocab)) * 4.0  # a few logits far above the rest
  flat = rng.standard_normal((3, vocab)) * 0.3
  tied = np.round(rng.standard_normal((2, vocab)), 1)  # many exact ties, negative and positive
  tied[:, :7] = -np.inf
  cases = [
    (peaked, 1.0, 0, 0.9), (flat, 1.0, 0, 0.9), (flat, 0.7, 50, 0.9), (peaked, 1.3, 0, 0.5),
    (tied, 1.0, 0, 0.6), (tied, 1.0, 37, 1.0), (flat, 1.0, 1, 1.0),
  ]  # fmt: skip
  for logits, temperature, top_k, top_p in cases:
    got = generate_module.filter_logits(
      jnp.asarray(logits, jnp.float32), temperature=temperature, top_k=top_k, top_p=top_p
    )
    kept = np.stack([_kept_with_ties(r, temperature, top_k, top_p) for r in logits])
    np.testing.assert_array_equal(np.isfinite(np.asarray(got)), kept)
    if logits is not tied:  # no ties: the same set as cutting the sorted list
      for row in range(logits.shape[0]):
        assert (
          kept[row] == (_filtered_distribution(logits[row], temperature, top_k, top_p) > 0)
        ).all()
    reference = jnp.where(
      jnp.asarray(kept),
      jnp.asarray(logits, jnp.float32) / temperature,
      -jnp.inf,
    )
    key = jax.random.key(7)
    np.testing.assert_array_equal(
      sample_logits(
        jnp.asarray(logits, jnp.float32), key, temperature=temperature, top_k=top_k, top_p=top_p
      ),
      jax.random.categorical(key, reference, axis=-1),
    )


def test_generation_with_adapted_kernels_equals_merged(tiny_pairs):
  pair = tiny_pairs['llama']
  from test_decoder import _adapt  # pylint: disable=g-import-not-at-top

  adapted = _adapt(pair.params, jax.random.key(2))
  merged = jax.tree.map(
    lambda n: n.method.merge(n) if isinstance(n, Adapted) else n,
    adapted,
    is_leaf=lambda n: isinstance(n, Adapted),
  )
  tokens, mask = _prompts()
  kw = dict(key=jax.random.key(0), max_new_tokens=10, eos_token_id=(), pad_token_id=0)
  out_adapted = generate(pair.model, adapted, tokens, mask, **kw)
  out_merged = generate(pair.model, merged, tokens, mask, **kw)
  out_plain = generate(pair.model, pair.params, tokens, mask, **kw)
  np.testing.assert_array_equal(out_adapted.tokens, out_merged.tokens)
  np.testing.assert_allclose(out_adapted.log_probs, out_merged.log_probs, atol=1e-4)
  assert (np.asarray(out_adapted.tokens) != np.asarray(out_plain.tokens)).any()


def test_one_compilation_per_shape_bucket_and_generate_text(tiny_pairs, tmp_path):
  pair = tiny_pairs['qwen2']
  tokenizer = hub.load_tokenizer(helpers_hf.save_tiny_tokenizer(tmp_path / 'tok'))
  generate_module.decode.clear_cache()
  texts = generate_text(
    pair.model,
    pair.params,
    tokenizer,
    ['the cat', 'what is two ?'],
    chat=True,
    max_new_tokens=6,
    length_bucket=16,
  )
  texts_again = generate_text(
    pair.model,
    pair.params,
    tokenizer,
    ['hello world', 'the dog sat on the mat .'],
    chat=True,
    max_new_tokens=6,
    length_bucket=16,
  )
  # Both batches pad to 16 tokens: one program.
  assert generate_module.decode._cache_size() == 1  # pylint: disable=protected-access
  assert len(texts) == 2 and len(texts_again) == 2 and all(isinstance(t, str) for t in texts)
  # The text path agrees with token-level greedy decoding on the same padded prompts.
  tokens, mask = hub.encode_prompts(
    tokenizer, ['the cat', 'what is two ?'], chat=True, pad_to_multiple_of=16
  )
  assert tokens.shape == (2, 16) and mask[0, :4].sum() == 0 and mask[:, -1].all()
  out = generate(
    pair.model,
    pair.params,
    tokens,
    mask,
    key=jax.random.key(0),
    max_new_tokens=6,
    pad_token_id=tokenizer.pad_token_id,
  )
  eos = set(pair.config.eos_token_ids)
  for row, text in enumerate(texts):
    ids = [int(t) for t in np.asarray(out.tokens)[row, : int(out.lengths[row])] if t not in eos]
    assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_bad_generation_arguments_raise(tiny_pairs):
  pair = tiny_pairs['llama']
  tokens, mask = _prompts()
  with pytest.raises(ValueError, match='max_new_tokens'):
    generate(pair.model, pair.params, tokens, mask, key=jax.random.key(0), max_new_tokens=0)
  with pytest.raises(ValueError, match='top_p=1.5'):
    generate(
      pair.model,
      pair.params,
      tokens,
      mask,
      key=jax.random.key(0),
      max_new_tokens=2,
      temperature=1.0,
      top_p=1.5,
    )
  right_padded = np.ones_like(mask)
  right_padded[1, -2:] = 0
  with pytest.raises(ValueError, match=r'left-padded.*rows \[1\]'):
    generate(pair.model, pair.params, tokens, right_padded, key=jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match='attention_mask'):
    generate(pair.model, pair.params, tokens, mask[:, :3], key=jax.random.key(0), max_new_tokens=2)


def test_generate_vmaps_over_parameter_sets(tiny_pairs):
  """A stack of parameter sets decodes in one vmapped program, each as if run alone."""
  pair = tiny_pairs['mistral']
  tokens, mask = _prompts()
  perturbed = jax.tree.map(lambda x: x * 1.1, pair.params)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), pair.params, perturbed)
  kw = dict(key=jax.random.key(0), max_new_tokens=8, eos_token_id=EOS_IDS, pad_token_id=0)
  both = jax.jit(jax.vmap(lambda p: generate(pair.model, p, tokens, mask, **kw)))(stacked)
  for index, params in enumerate([pair.params, perturbed]):
    alone = generate(pair.model, params, tokens, mask, **kw)
    np.testing.assert_array_equal(both.tokens[index], alone.tokens)
    np.testing.assert_array_equal(both.lengths[index], alone.lengths)
    np.testing.assert_allclose(both.log_probs[index], alone.log_probs, atol=1e-5)
  assert (np.asarray(both.tokens[0]) != np.asarray(both.tokens[1])).any()
