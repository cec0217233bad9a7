"""Speed of our jitted train step against transformers (PyTorch) + HF PEFT on the same model, same run.

  .venv/bin/python benchmarks/train_step_bench.py --hidden=256 --layers=4 --vocab=512 --seq=128 \
      --batch=16 --steps=10

Model: a Llama-style decoder (RMSNorm, RoPE, GQA-free causal attention, SwiGLU MLP), identical
sizes in both stacks, and the identical starting weights (our params are loaded from the HF model
through ``peft_jax.hub``). Cases, each AdamW on the trainable params only:

* ``lora_qv``: LoRA rank 8, alpha 16 on q_proj and v_proj;
* ``full``: every weight trainable.

Before timing, the first-step losses of both stacks are compared (``loss_rel_diff``). Reported:
median step milliseconds after warm-up (JAX: after compilation), tokens/s, and
``ratio = torch_ms / jax_ms`` (> 1: we are faster). Both use float32 unless ``--bf16``
(JAX: bfloat16 compute with float32 params; torch: bfloat16 autocast).
"""

import dataclasses
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

_HIDDEN = flags.DEFINE_integer('hidden', 256, 'd_model.')
_LAYERS = flags.DEFINE_integer('layers', 4, 'Decoder layers.')
_VOCAB = flags.DEFINE_integer('vocab', 512, 'Vocabulary size.')
_SEQ = flags.DEFINE_integer('seq', 128, 'Sequence length.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per case.')
_BF16 = flags.DEFINE_bool('bf16', False, 'bfloat16 compute in both stacks.')
_TORCH_THREADS = flags.DEFINE_integer(
  'torch_threads',
  0,
  'torch intra-op threads (0: torch default). On a shared, oversubscribed '
  'CPU, OpenMP spin-waiting can slow torch by 10x; compare with 1.',
)


def _hf_model(torch, transformers):
  heads = max(_HIDDEN.value // 64, 1)
  config = transformers.LlamaConfig(
    vocab_size=_VOCAB.value,
    hidden_size=_HIDDEN.value,
    intermediate_size=4 * _HIDDEN.value,
    num_hidden_layers=_LAYERS.value,
    num_attention_heads=heads,
    num_key_value_heads=heads,
    max_position_embeddings=_SEQ.value,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
  )
  torch.manual_seed(0)
  return transformers.LlamaForCausalLM(config).float().train()


def _torch_case(method, tokens, loss_mask):
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  model = _hf_model(torch, transformers)
  if method == 'lora_qv':
    model = peft.get_peft_model(
      model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=['q_proj', 'v_proj'])
    )
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
  tokens_t = torch.from_numpy(tokens).long()
  labels = tokens_t.clone()
  labels[torch.from_numpy(loss_mask) == 0] = -100  # HF shifts labels inside the model

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=_BF16.value):
      loss = model(input_ids=tokens_t, labels=labels).loss
    loss.backward()
    optimizer.step()
    return loss.detach().item()

  first_loss = step()
  step()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times), first_loss


def _jax_case(method, tokens, loss_mask):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from peft_jax import hub, models, parallel  # pylint: disable=g-import-not-at-top
  from peft_jax.adapters import api as adapters  # pylint: disable=g-import-not-at-top
  from peft_jax.train import make_sft_loss  # pylint: disable=g-import-not-at-top
  from peft_jax.train.setup import setup_training  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as directory:
    _hf_model(torch, transformers).save_pretrained(directory)
    model, params, _ = hub.load_pretrained(directory)
  if _BF16.value:
    model = models.Decoder(dataclasses.replace(model.config, dtype='bfloat16'))
  if method == 'lora_qv':
    params = adapters.inject(
      params, adapters.LoRA(rank=8, alpha=16.0), ['q_proj', 'v_proj'], jax.random.PRNGKey(0)
    )
  else:
    params = adapters.inject(params, adapters.Full(), None)
  partition, combine = adapters.partition, adapters.combine

  def apply_fn(tree, tokens_, positions, segment_ids, rng):
    del rng
    return model.apply({'params': tree}, tokens_, positions=positions, segment_ids=segment_ids)

  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  training = setup_training(
    params,
    models.param_logical_axes(params, model.config),
    loss_fn=make_sft_loss(apply_fn, combine),
    partition_fn=partition,
    mesh=mesh,
    optimizer_kwargs=dict(peak_lr=1e-3, total_steps=1000, decay='constant', clip_norm=None),
    batch_keys=('tokens', 'loss_mask'),
  )
  batch = parallel.global_batch(
    {'tokens': tokens, 'loss_mask': loss_mask.astype(np.float32)}, mesh, tokens.shape[0]
  )
  state = training.state
  state, metrics = training.train_step(state, training.frozen, batch)
  first_loss = float(metrics['loss'])
  state, metrics = training.train_step(state, training.frozen, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = training.train_step(state, training.frozen, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return statistics.median(times), first_loss


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, _VOCAB.value, size=(_BATCH.value, _SEQ.value)).astype(np.int32)
  # Prompt/completion split: loss on the second half of each row.
  loss_mask = np.zeros_like(tokens)
  loss_mask[:, _SEQ.value // 2 :] = 1
  n_tokens = tokens.size
  print(
    f'config: d{_HIDDEN.value} L{_LAYERS.value} V{_VOCAB.value} seq{_SEQ.value} '
    f'batch{_BATCH.value} bf16={_BF16.value} devices={jax.devices()[:1]}'
  )
  for method in ('lora_qv', 'full'):
    jax_s, jax_loss = _jax_case(method, tokens, loss_mask)
    torch_s, torch_loss = _torch_case(method, tokens, loss_mask)
    print(
      f'{method:8s} jax {jax_s * 1e3:8.1f} ms ({n_tokens / jax_s:8.0f} tok/s)  '
      f'torch+peft {torch_s * 1e3:8.1f} ms ({n_tokens / torch_s:8.0f} tok/s)  '
      f'ratio torch/jax {torch_s / jax_s:5.2f}  '
      f'loss_rel_diff {abs(jax_loss - torch_loss) / abs(torch_loss):.1e}'
    )


if __name__ == '__main__':
  app.run(main)
