"""Tiny random transformers (PyTorch) decoders, saved as Hugging Face checkpoints for tests.

Shared by tests across packages (models, hub, adapters, ...). Every builder returns a float32
``*ForCausalLM`` in eval mode with deterministic random weights (``torch.manual_seed(seed)``),
small enough that a forward pass takes milliseconds:

    hf_model = tiny_hf_model('llama')                       # torch model
    path = save_tiny_hf_model('qwen2', tmp_path / 'qwen2')  # HF directory (config + safetensors)

Variants: ``'llama'``, ``'llama3'`` (Llama-3 ``rope_scaling``), ``'mistral'`` (sliding window 4),
``'qwen2'`` (qkv bias, tied embeddings), ``'gemma2'`` (soft-capping, alternating sliding window,
sandwich norms). Gemma 2 uses ``attn_implementation='eager'`` (SDPA ignores soft-capping).
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch
import transformers

VOCAB_SIZE = 128
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 96
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = 16

MODEL_TYPES = ('llama', 'llama3', 'mistral', 'qwen2', 'gemma2')


def tiny_hf_config(model_type: str, **overrides: Any) -> transformers.PretrainedConfig:
  """A tiny transformers config of ``model_type`` (one of MODEL_TYPES); ``overrides`` win."""
  common = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=HIDDEN_SIZE,
    intermediate_size=INTERMEDIATE_SIZE,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=NUM_HEADS,
    num_key_value_heads=NUM_KV_HEADS,
    head_dim=HEAD_DIM,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    # Larger than HF's 0.02 so logits are O(1-10) and attention is far from uniform:
    # a wrong rotary angle or mask then shows up clearly in parity tests.
    initializer_range=0.15,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
  )
  if model_type == 'llama':
    kw = dict(common, rope_theta=10000.0, tie_word_embeddings=False)
    kw.update(overrides)
    return transformers.LlamaConfig(**kw)
  if model_type == 'llama3':
    kw = dict(
      common,
      tie_word_embeddings=False,
      rope_parameters=dict(
        rope_type='llama3',
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=32,
      ),
    )
    kw.update(overrides)
    return transformers.LlamaConfig(**kw)
  if model_type == 'mistral':
    kw = dict(common, rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False)
    kw.update(overrides)
    return transformers.MistralConfig(**kw)
  if model_type == 'qwen2':
    kw = dict(common, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False)
    kw.update(overrides)
    return transformers.Qwen2Config(**kw)
  if model_type == 'gemma2':
    kw = dict(
      common,
      rope_theta=10000.0,
      tie_word_embeddings=True,
      query_pre_attn_scalar=24,
      sliding_window=4,
      attn_logit_softcapping=50.0,
      final_logit_softcapping=30.0,
      hidden_activation='gelu_pytorch_tanh',
    )
    kw.update(overrides)
    return transformers.Gemma2Config(**kw)
  raise ValueError(f'unknown tiny model_type {model_type!r}; supported: {MODEL_TYPES}')


def tiny_hf_model(model_type: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
  """A float32 eval-mode ``*ForCausalLM`` of ``model_type`` with random weights from ``seed``.

  Norm weights are randomised too (HF inits them to ones/zeros, which would hide a missing or
  mis-applied norm scale in parity tests).
  """
  config = tiny_hf_config(model_type, **overrides)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
    config, attn_implementation='eager', dtype=torch.float32
  )
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('norm.weight'):
        p.copy_(0.2 * torch.randn_like(p) + (0.0 if model_type == 'gemma2' else 1.0))
      elif name.endswith('bias'):
        p.copy_(0.1 * torch.randn_like(p))
  return model.eval()


def save_tiny_hf_model(
  model_type: str, path: str | pathlib.Path, seed: int = 0, **overrides: Any
) -> pathlib.Path:
  """Builds ``tiny_hf_model(model_type, seed)`` and ``save_pretrained``s it to ``path``."""
  path = pathlib.Path(path)
  model = tiny_hf_model(model_type, seed=seed, **overrides)
  model.save_pretrained(path)
  return path


TOKENIZER_WORDS = (
  'the',
  'a',
  'cat',
  'dog',
  'sat',
  'on',
  'mat',
  'user',
  'assistant',
  ':',
  'hello',
  'world',
  'what',
  'is',
  'two',
  'plus',
  '?',
  '.',
)
CHAT_TEMPLATE = (
  "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> "
  '{% endfor %}{% if add_generation_prompt %}<s> assistant :{% endif %}'
)


def save_tiny_tokenizer(path: str | pathlib.Path, chat_template: bool = True) -> pathlib.Path:
  """A word-level fast tokenizer (ids < VOCAB_SIZE) with <pad>=0, <s>=1, </s>=2, <unk>=3.

  Words split on whitespace; the chat template renders ``<s> role : content </s>`` per message.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  specials = ['<pad>', '<s>', '</s>', '<unk>']
  vocab = {w: i for i, w in enumerate(specials + list(TOKENIZER_WORDS))}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  backend.decoder = tokenizers.decoders.WordPiece(prefix='##')
  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    bos_token='<s>',
    eos_token='</s>',
    pad_token='<pad>',
    unk_token='<unk>',
  )
  if chat_template:
    tokenizer.chat_template = CHAT_TEMPLATE
  tokenizer.save_pretrained(path)
  return path


def assert_logits_match_transformers(
  hf_dir, prompts=('Tell me about the city of Retan.', 'Hi'), atol=1e-4
):
  """peft_jax's logits on chat-encoded ``prompts`` equal transformers' for ``hf_dir``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from peft_jax import hub  # pylint: disable=g-import-not-at-top

  model, params, tokenizer = hub.load_pretrained(hf_dir)
  tokens, mask = hub.encode_prompts(tokenizer, list(prompts), chat=True)
  ours = np.asarray(model.apply({'params': params}, tokens, attention_mask=mask))
  reference = transformers.AutoModelForCausalLM.from_pretrained(
    str(hf_dir), attn_implementation='eager'
  )
  with torch.no_grad():
    theirs = reference(
      input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)
    ).logits.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=atol)


def left_padded_tokens(seed=0, batch=3, length=12, pad_lengths=(0, 4, 9)):
  """Random ids ``[batch, length]`` and a mask with ``pad_lengths[i]`` left-padding slots (id 0)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB_SIZE, (batch, length))
  mask = np.ones((batch, length), np.int64)
  for row, pad in enumerate(pad_lengths):
    mask[row, :pad] = 0
  tokens[mask == 0] = 0
  return tokens, mask
