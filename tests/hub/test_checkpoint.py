"""HF checkpoint I/O: config parsing, (sharded, bf16) safetensors loading, saving, tokenizers."""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import helpers_hf  # noqa: E402  pylint: disable=g-import-not-at-top

from peft_jax import hub  # noqa: E402
from peft_jax.adapters.core import Adapted  # noqa: E402


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """{model_type: (hf torch model, HF dir)} saved once for this module."""
  root = tmp_path_factory.mktemp('hf')
  out = {}
  for model_type in helpers_hf.MODEL_TYPES:
    model = helpers_hf.tiny_hf_model(model_type, seed=7)
    model.save_pretrained(root / model_type)
    out[model_type] = (model, root / model_type)
  return out


def _tokens():
  rng = np.random.default_rng(0)
  return rng.integers(3, helpers_hf.VOCAB_SIZE, (2, 10))


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize('model_type', helpers_hf.MODEL_TYPES)
def test_save_pretrained_loads_in_transformers_with_same_logits(checkpoints, model_type, tmp_path):
  _, path = checkpoints[model_type]
  model, params, _ = hub.load_pretrained(path)
  # New weights (not the ones transformers wrote) so the round trip proves our writer.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(
    treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )
  out_dir = hub.save_pretrained(model.config, params, tmp_path / 'saved')
  assert sorted(os.listdir(out_dir)) == ['config.json', 'model.safetensors']
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    out_dir, attn_implementation='eager', dtype=torch.float32
  ).eval()
  tokens = _tokens()
  ours = np.asarray(jax.jit(model.apply)({'params': params}, tokens))
  theirs = _hf_logits(reloaded, tokens)
  assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
  # And back: our loader gives exactly the params we saved, and the same config.
  model2, params2, _ = hub.load_pretrained(out_dir)
  assert model2.config == model.config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)


def test_save_overwrites_atomically_and_keeps_tokenizer(checkpoints, tmp_path):
  _, path = checkpoints['llama']
  model, params, _ = hub.load_pretrained(path)
  tokenizer = hub.load_tokenizer(helpers_hf.save_tiny_tokenizer(tmp_path / 'tok'))
  target = tmp_path / 'out'
  hub.save_pretrained(model.config, params, target)
  hub.save_pretrained(model.config, params, target, tokenizer=tokenizer)
  assert (target / 'tokenizer.json').is_file()
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.out')]  # no leftovers
  _, _, loaded_tokenizer = hub.load_pretrained(target)
  assert loaded_tokenizer('the cat')['input_ids'] == tokenizer('the cat')['input_ids']


def test_save_refuses_adapted_nodes(checkpoints, tmp_path):
  _, path = checkpoints['llama']
  model, params, _ = hub.load_pretrained(path)
  w0 = params['layers_0']['self_attn']['q_proj']['kernel']
  params['layers_0']['self_attn']['q_proj']['kernel'] = Adapted(w0, {}, {}, None)
  with pytest.raises(ValueError, match='merge them first'):
    hub.save_pretrained(model.config, params, tmp_path / 'x')
  assert not (tmp_path / 'x').exists()


def test_sharded_index_loads_like_single_file(checkpoints, tmp_path):
  hf_model, path = checkpoints['qwen2']
  hf_model.save_pretrained(tmp_path / 'sharded', max_shard_size='40KB')
  files = os.listdir(tmp_path / 'sharded')
  assert 'model.safetensors.index.json' in files
  assert len([f for f in files if f.endswith('.safetensors')]) > 2
  _, single, _ = hub.load_pretrained(path)
  _, sharded, _ = hub.load_pretrained(tmp_path / 'sharded')
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_checkpoint_and_dtype_cast(tmp_path):
  hf_model = helpers_hf.tiny_hf_model('mistral', seed=3).to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path / 'bf16')
  _, params, _ = hub.load_pretrained(tmp_path / 'bf16', dtype=jnp.float32)
  expected = hf_model.model.layers[1].mlp.down_proj.weight.detach().float().numpy().T
  got = params['layers_1']['mlp']['down_proj']['kernel']
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, expected)
  _, params_bf16, _ = hub.load_pretrained(tmp_path / 'bf16', dtype=jnp.bfloat16)
  assert params_bf16['embed_tokens']['embedding'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    np.asarray(params_bf16['embed_tokens']['embedding'], np.float32),
    hf_model.model.embed_tokens.weight.detach().float().numpy(),
  )
  # Saving bf16 params writes bf16 tensors and tells transformers so.
  model, _, _ = hub.load_pretrained(tmp_path / 'bf16')
  out = hub.save_pretrained(model.config, params_bf16, tmp_path / 'bf16_again')
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  weight = reloaded.model.layers[1].mlp.down_proj.weight
  assert weight.dtype == torch.bfloat16
  assert torch.equal(weight, hf_model.model.layers[1].mlp.down_proj.weight)


def test_load_onto_sharding_tree(checkpoints):
  _, path = checkpoints['llama']
  config = hub.load_config(path)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('data', 'model'))
  _, plain, _ = hub.load_pretrained(path)
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = jax.tree.map(lambda _: replicated, plain)
  shardings['embed_tokens']['embedding'] = NamedSharding(mesh, PartitionSpec('model', None))
  shardings['lm_head']['kernel'] = NamedSharding(mesh, PartitionSpec(None, 'model'))
  _, params, _ = hub.load_pretrained(path, shardings=shardings)
  embedding = params['embed_tokens']['embedding']
  assert embedding.sharding == shardings['embed_tokens']['embedding']
  assert embedding.addressable_shards[0].data.shape == (config.vocab_size // 4, 64)
  np.testing.assert_array_equal(embedding, plain['embed_tokens']['embedding'])
  np.testing.assert_array_equal(params['lm_head']['kernel'], plain['lm_head']['kernel'])


def _rewrite_tensors(src, dst, edit):
  shutil.copytree(src, dst)
  tensors = safetensors.torch.load_file(str(src / 'model.safetensors'))
  edit(tensors)
  safetensors.torch.save_file(tensors, str(dst / 'model.safetensors'), metadata={'format': 'pt'})
  return dst


def test_missing_tensor_is_named(checkpoints, tmp_path):
  _, path = checkpoints['llama']
  bad = _rewrite_tensors(
    path, tmp_path / 'bad', lambda t: t.pop('model.layers.1.mlp.up_proj.weight')
  )
  with pytest.raises(KeyError, match=r'model\.layers\.1\.mlp\.up_proj\.weight.*\(96, 64\)'):
    hub.load_pretrained(bad)


def test_wrong_shape_is_named_with_both_shapes(checkpoints, tmp_path):
  _, path = checkpoints['llama']
  name = 'model.layers.0.self_attn.k_proj.weight'
  bad = _rewrite_tensors(path, tmp_path / 'bad', lambda t: t.update({name: t[name].T.contiguous()}))
  with pytest.raises(ValueError, match=rf'{name}.*\(64, 32\).*expected \(32, 64\)'):
    hub.load_pretrained(bad)


def test_unexpected_tensor_is_named(checkpoints, tmp_path):
  _, path = checkpoints['llama']
  bad = _rewrite_tensors(
    path,
    tmp_path / 'bad',
    lambda t: t.update({'model.layers.0.self_attn.o_proj.bias': torch.zeros(64)}),
  )
  with pytest.raises(ValueError, match=r'o_proj\.bias'):
    hub.load_pretrained(bad)


def test_unknown_model_type_and_bad_paths(checkpoints, tmp_path):
  _, path = checkpoints['llama']
  shutil.copytree(path, tmp_path / 'gpt')
  config = json.loads((tmp_path / 'gpt' / 'config.json').read_text())
  config['model_type'] = 'gpt2'
  (tmp_path / 'gpt' / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"model_type='gpt2'.*'llama', 'mistral', 'qwen2', 'gemma2'"):
    hub.load_config(tmp_path / 'gpt')
  with pytest.raises(FileNotFoundError, match="bundled model 'no_such_model'"):
    hub.load_pretrained('bundled:no_such_model')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    hub.load_pretrained(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'config.json').write_text(json.dumps(config | {'model_type': 'llama'}))
  with pytest.raises(FileNotFoundError, match='neither model.safetensors'):
    hub.load_pretrained(tmp_path / 'empty')


def test_load_config_fields_and_legacy_rope_format(checkpoints, tmp_path):
  gemma = hub.load_config(checkpoints['gemma2'][1])
  assert gemma.layer_types == ('sliding_attention', 'full_attention')
  assert (gemma.sliding_window, gemma.query_pre_attn_scalar) == (4, 24)
  assert gemma.sandwich_norms and gemma.norm_plus_one and gemma.scale_embeddings
  assert gemma.tie_word_embeddings and gemma.hidden_act == 'gelu_pytorch_tanh'
  qwen = hub.load_config(checkpoints['qwen2'][1])
  assert qwen.attention_bias and qwen.sliding_window is None
  llama3 = hub.load_config(checkpoints['llama3'][1])
  # transformers 4 wrote rope_theta + rope_scaling{'type': ...}: same config as the v5 fields.
  legacy = json.loads((checkpoints['llama3'][1] / 'config.json').read_text())
  rope = legacy.pop('rope_parameters')
  legacy['rope_theta'] = rope.pop('rope_theta')
  legacy['rope_scaling'] = dict(rope, type=rope.pop('rope_type'))
  (tmp_path / 'legacy').mkdir()
  (tmp_path / 'legacy' / 'config.json').write_text(json.dumps(legacy))
  assert hub.load_config(tmp_path / 'legacy') == llama3
  assert llama3.rope_scaling_dict['rope_type'] == 'llama3' and llama3.rope_theta == 500000.0
  assert hub.load_config(checkpoints['llama'][1], dtype='bfloat16').dtype == 'bfloat16'


def test_tokenizer_loading_and_left_padded_prompts(tmp_path):
  path = helpers_hf.save_tiny_tokenizer(tmp_path / 'tok')
  tokenizer = hub.load_tokenizer(path)
  assert tokenizer.padding_side == 'left' and tokenizer.pad_token_id == 0
  tokens, mask = hub.encode_prompts(tokenizer, ['the cat', 'what is two plus two ?'], chat=True)
  # '<s> user : the cat </s> <s> assistant :' -> 9 ids; the longer prompt has 13.
  vocab = tokenizer.get_vocab()
  expected_short = [vocab[w] for w in '<s> user : the cat </s> <s> assistant :'.split()]
  assert tokens.shape == (2, 13) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens[0], [0] * 4 + expected_short)
  np.testing.assert_array_equal(mask[0], [0] * 4 + [1] * 9)
  assert mask[1].all()
  plain, plain_mask = hub.encode_prompts(
    tokenizer, ['the cat', 'the dog sat'], chat=False, pad_to_multiple_of=8
  )
  np.testing.assert_array_equal(plain[0], [0] * 6 + [vocab['the'], vocab['cat']])
  assert plain.shape == (2, 8) and plain_mask.sum() == 5
  messages = [
    [
      {'role': 'user', 'content': 'hello'},
      {'role': 'assistant', 'content': 'world'},
      {'role': 'user', 'content': 'the cat'},
    ]
  ]
  chat_ids, _ = hub.encode_prompts(tokenizer, messages, chat=True)
  assert tokenizer.decode(chat_ids[0]) == (
    '<s> user : hello </s> <s> assistant : world </s> <s> user : the cat </s> <s> assistant :'
  )
  no_template = hub.load_tokenizer(
    helpers_hf.save_tiny_tokenizer(tmp_path / 'plain', chat_template=False)
  )
  fallback, _ = hub.encode_prompts(no_template, ['the cat'], chat=True)
  np.testing.assert_array_equal(fallback[0], [vocab['the'], vocab['cat']])
  with pytest.raises(ValueError, match='message-list prompts need chat=True'):
    hub.encode_prompts(no_template, messages, chat=True)
