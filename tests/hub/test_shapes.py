"""Named model shapes (``hub.shapes``): every parameter shape of each named model equals the one
transformers builds from the same config.json, and the full-depth parameter counts are the
published ones.

Built with 1 and 2 layers (transformers on the meta device: no memory), so the test stays fast;
a decoder's count is affine in its depth, which gives the full-depth count exactly.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import torch
import transformers

from peft_jax import models
from peft_jax.hub import checkpoint, shapes

# Parameter counts published with each model (its Hugging Face model card / safetensors index).
PUBLISHED = {
  'llama2-7b': 6_738_415_616,
  'llama3-8b': 8_030_261_248,
  'qwen2.5-7b': 7_615_616_512,
  'gemma2-9b': 9_241_705_984,
}


def _ours(hf):
  cfg = checkpoint.config_from_hf_dict(hf)
  tokens = jnp.zeros((1, 4), jnp.int32)
  tree = jax.eval_shape(
    lambda: nn.meta.unbox(models.Decoder(cfg).init(jax.random.key(0), tokens)['params'])
  )
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    # HF stores kernels [out, in]; ours are [in, out].
    name, transposed = checkpoint._hf_name(tuple(str(getattr(k, 'key', k)) for k in path))
    out[name] = tuple(x.shape)[::-1] if transposed else tuple(x.shape)
  return out


def _theirs(hf):
  config = transformers.AutoConfig.for_model(**hf)
  with torch.device('meta'):
    model = transformers.AutoModelForCausalLM.from_config(config)
  return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_named_shapes_match_transformers_and_published_counts(name):
  counts = []
  for layers in (1, 2):
    hf = dict(shapes.NAMED_MODEL_CONFIGS[name], num_hidden_layers=layers)
    ours = _ours(hf)
    assert ours == _theirs(hf)
    counts.append(sum(math.prod(s) for s in ours.values()))
  full = shapes.NAMED_MODEL_CONFIGS[name]['num_hidden_layers']
  assert counts[0] + (full - 1) * (counts[1] - counts[0]) == PUBLISHED[name]
  assert shapes.model_config(name).num_layers == full


def test_model_config_reads_files_and_rejects_unknown(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text(
    '{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, '
    '"intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}'
  )
  assert shapes.model_config(str(path)).hidden_size == 8
  assert shapes.model_config(str(tmp_path)).vocab_size == 10
  with pytest.raises(FileNotFoundError, match='llama2-7b'):
    shapes.model_config('llama-9000')
