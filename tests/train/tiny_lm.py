"""A tiny self-contained causal "LM" for train/parallel tests (embed -> 2 MLP blocks -> head).

Its linear layers go through ``peft_jax.adapters.matmul``, so LoRA nodes work in it exactly as in
the real decoder; parameter names follow docs/CONVENTIONS.md.
"""

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.adapters import matmul
from peft_jax.adapters.core import Adapted
from peft_jax.adapters.lora import LoRA

VOCAB, D, F, LAYERS = 64, 32, 64, 2


def init_params(key):
  keys = jax.random.split(key, 2 + 2 * LAYERS)
  params = {
    'embed_tokens': {'embedding': jax.random.normal(keys[0], (VOCAB, D)) * 0.5},
    'lm_head': {'kernel': jax.random.normal(keys[1], (D, VOCAB)) / np.sqrt(D)},
  }
  for i in range(LAYERS):
    params[f'layers_{i}'] = {
      'post_attention_layernorm': {'scale': jnp.ones((D,))},
      'mlp': {
        'up_proj': {'kernel': jax.random.normal(keys[2 + 2 * i], (D, F)) / np.sqrt(D)},
        'down_proj': {'kernel': jax.random.normal(keys[3 + 2 * i], (F, D)) / np.sqrt(F)},
      },
    }
  return params


def logical_axes(params):
  axes = {
    'embed_tokens': {'embedding': ('vocab', 'embed')},
    'lm_head': {'kernel': ('embed', 'vocab')},
  }
  for i in range(LAYERS):
    up = params[f'layers_{i}']['mlp']['up_proj']['kernel']
    down = params[f'layers_{i}']['mlp']['down_proj']['kernel']

    def node_axes(node, in_axis, out_axis):
      if isinstance(node, Adapted):
        param_axes, frozen_axes = node.method.param_axes(node, in_axis, out_axis)
        return Adapted((in_axis, out_axis), param_axes, frozen_axes, node.method)
      return (in_axis, out_axis)

    axes[f'layers_{i}'] = {
      'post_attention_layernorm': {'scale': ('norm',)},
      'mlp': {
        'up_proj': {'kernel': node_axes(up, 'embed', 'mlp')},
        'down_proj': {'kernel': node_axes(down, 'mlp', 'embed')},
      },
    }
  return axes


def apply(params, tokens, positions=None, segment_ids=None, rng=None):
  """tokens [B, T] -> logits [B, T, V]; causal by a running mean over earlier tokens."""
  del positions, rng
  h = params['embed_tokens']['embedding'][tokens]
  if segment_ids is None:
    segment_ids = jnp.ones_like(tokens)
  # Causal mixing inside each segment: mean of earlier positions (keeps the test model causal).
  t = tokens.shape[1]
  causal = jnp.tril(jnp.ones((t, t)))
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) * causal
  h = jnp.einsum('bts,bsd->btd', same / same.sum(-1, keepdims=True), h)
  for i in range(LAYERS):
    layer = params[f'layers_{i}']
    x = h * layer['post_attention_layernorm']['scale']
    h = h + matmul(
      jax.nn.gelu(matmul(x, layer['mlp']['up_proj']['kernel'])), layer['mlp']['down_proj']['kernel']
    )
  return matmul(h, params['lm_head']['kernel'])


def inject_lora(params, key, rank=4):
  params = jax.tree.map(lambda x: x, params)
  for i in range(LAYERS):
    for name in ('up_proj', 'down_proj'):
      w = params[f'layers_{i}']['mlp'][name]['kernel']
      node = LoRA(rank=rank, alpha=2.0 * rank).init(
        jax.random.fold_in(key, 2 * i + (name == 'up_proj')), w
      )
      # Non-zero B so the first steps already move the loss through both factors.
      node = Adapted(
        node.base,
        {
          'lora_a': node.params['lora_a'],
          'lora_b': 0.1 * jax.random.normal(key, node.params['lora_b'].shape),
        },
        node.frozen,
        node.method,
      )
      params[f'layers_{i}']['mlp'][name]['kernel'] = node
  return params


def partition_lora(tree):
  """(trainable, frozen): adapter params trainable, everything else frozen; None where absent."""
  is_node = lambda x: isinstance(x, Adapted)
  trainable = jax.tree.map(
    lambda x: Adapted(None, x.params, {}, x.method) if is_node(x) else None, tree, is_leaf=is_node
  )
  frozen = jax.tree.map(
    lambda x: Adapted(x.base, {}, x.frozen, x.method) if is_node(x) else x, tree, is_leaf=is_node
  )
  return trainable, frozen


def combine(trainable, frozen):
  is_node = lambda x: isinstance(x, Adapted)

  def one(f, t):
    if is_node(f):
      return Adapted(f.base, t.params, f.frozen, f.method)
    return f if t is None else t

  return jax.tree.map(one, frozen, trainable, is_leaf=lambda x: x is None or is_node(x))


def partition_full(tree):
  return tree, jax.tree.map(lambda x: None, tree)


def random_batch(rng: np.random.Generator, batch=8, seq=32):
  tokens = rng.integers(1, VOCAB, size=(batch, seq)).astype(np.int32)
  loss_mask = (np.arange(seq)[None] >= rng.integers(2, seq // 2, size=(batch, 1))).astype(np.int32)
  segment_ids = np.ones((batch, seq), np.int32)
  segment_ids[:, seq // 2 :] = 2
  segment_ids[::3, -3:] = 0
  positions = np.zeros((batch, seq), np.int32)
  return {
    'tokens': tokens,
    'loss_mask': loss_mask,
    'segment_ids': segment_ids,
    'positions': positions,
  }
