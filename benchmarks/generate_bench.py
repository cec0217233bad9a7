"""Decoding speed of ``peft_jax.models.generate`` against transformers' ``generate``, same weights.

  .venv/bin/python benchmarks/generate_bench.py --batches=1,8,32 --new_tokens=128 \
      --out=/tmp/generate_bench.json

Model: the real SmolLM2-135M-Instruct GGUF file, loaded by ``hub.load_pretrained`` here and by
``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` for transformers (both dequantize the
same bytes: identical float32 weights), both float32 on the CPU.

Prompts: ``--batches`` rows of chat prompts (a fixed list, cycled), chat template applied and
left-padded to a multiple of ``--length_bucket`` by ``hub.encode_prompts``; the same token ids
go to both sides. EOS is switched off on both sides (ours: ``eos_token_id=()``; transformers:
``generation_config.eos_token_id = None``), so every row decodes exactly ``--new_tokens`` tokens
and the two sides do the same work.

Per batch size and mode (``greedy``; ``sampled``: temperature / top-k / top-p of the flags):

* ``first_s``: the first call (ours: trace + XLA compile + run of that shape bucket
  ``(batch, padded prompt length, new tokens)``; transformers: its first run);
  ``compile_s`` = ours' first call minus its median call;
* ``s``: median wall time of ``--reps`` calls after the first; ``tok_s`` = batch x new tokens / s
  (prompt prefill included in the time, as a user sees it);
* greedy agreement: per row, how many leading generated tokens are identical on both sides
  (float32 rounding can flip a near-tie argmax, after which the continuations differ);
  reported as the minimum and mean over rows and the fraction of rows identical over the first
  ``--agree_tokens`` tokens.

Prints a markdown table; ``--out`` writes it and every number as JSON.
"""

import json
import statistics
import sys
import time

import bench_common
import jax
import numpy as np
from absl import app, flags

_BATCHES = flags.DEFINE_list('batches', ['1', '8', '32'], 'Batch sizes.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 128, 'Generated tokens per row.')
_REPS = flags.DEFINE_integer('reps', 3, 'Timed calls per case after the first.')
_MODES = flags.DEFINE_list('modes', ['greedy', 'sampled'], 'Decoding modes.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.7, 'sampled: temperature.')
_TOP_K = flags.DEFINE_integer('top_k', 50, 'sampled: top-k.')
_TOP_P = flags.DEFINE_float('top_p', 0.9, 'sampled: top-p.')
_LENGTH_BUCKET = flags.DEFINE_integer('length_bucket', 32, 'Prompt length padding multiple.')
_AGREE_TOKENS = flags.DEFINE_integer('agree_tokens', 16, 'Leading tokens compared (greedy).')
_TORCH_THREADS = flags.DEFINE_integer(
  'torch_threads', 0, 'torch intra-op threads (0: torch default).'
)
_OUT = flags.DEFINE_string('out', None, 'Write the table and every number here as JSON.')

SMOLLM = 'smollm2-135m-instruct'
PROMPTS = [
  'What is the capital of France?',
  'Write a haiku about the sea.',
  'Explain photosynthesis in two sentences.',
  'List three prime numbers greater than 50.',
  'How do I reverse a list in Python?',
  'Give me a short tip for better sleep.',
  'What is 17 times 23?',
  'Describe a cat to someone who has never seen one.',
]


def _timed(fn, reps):
  start = time.perf_counter()
  out = fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return out, first, statistics.median(times)


def _agreement(ours, theirs, k):
  leading = []
  for a, b in zip(ours, theirs):
    differ = np.flatnonzero(a != b)
    leading.append(int(differ[0]) if differ.size else len(a))
  leading = np.asarray(leading)
  return dict(
    leading_min=int(leading.min()),
    leading_mean=float(leading.mean()),
    rows_equal_first_k=float(np.mean(leading >= min(k, ours.shape[1]))),
    k=k,
  )


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from peft_jax import hub  # pylint: disable=g-import-not-at-top
  from peft_jax.hub import gguf  # pylint: disable=g-import-not-at-top
  from peft_jax.models import generate  # pylint: disable=g-import-not-at-top

  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  load_before = bench_common.load_average()
  model, params, tokenizer = hub.load_pretrained(SMOLLM)
  path = gguf.named_base_path(SMOLLM)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
    str(path.parent), gguf_file=path.name, dtype=torch.float32
  ).eval()
  reference.generation_config.eos_token_id = None  # decode every row to --new_tokens
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  n_new = _NEW_TOKENS.value
  sampling = dict(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
  rows = []
  for batch in [int(b) for b in _BATCHES.value]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    tokens, mask = hub.encode_prompts(
      tokenizer, prompts, chat=True, pad_to_multiple_of=_LENGTH_BUCKET.value
    )
    tokens_t, mask_t = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask)
    greedy_tokens = {}
    for mode in _MODES.value:
      settings = dict(temperature=0.0) if mode == 'greedy' else sampling

      def ours():
        out = generate(
          model,
          params,
          tokens,
          mask,
          key=jax.random.key(0),
          max_new_tokens=n_new,
          eos_token_id=(),
          pad_token_id=pad,
          **settings,  # pylint: disable=cell-var-from-loop
        )
        return np.asarray(jax.block_until_ready(out.tokens))

      def theirs():
        kwargs = dict(do_sample=False) if mode == 'greedy' else dict(do_sample=True, **sampling)  # pylint: disable=cell-var-from-loop
        with torch.no_grad():
          out = reference.generate(
            input_ids=tokens_t,
            attention_mask=mask_t,
            max_new_tokens=n_new,
            pad_token_id=pad,
            **kwargs,
          )
        return out[:, tokens.shape[1] :].numpy()

      torch.manual_seed(0)
      ours_out, ours_first, ours_s = _timed(ours, _REPS.value)
      theirs_out, theirs_first, theirs_s = _timed(theirs, _REPS.value)
      if theirs_out.shape != ours_out.shape:
        raise RuntimeError(f'transformers returned {theirs_out.shape}, ours {ours_out.shape}')
      row = dict(
        batch=batch,
        mode=mode,
        prompt_length=int(tokens.shape[1]),
        new_tokens=n_new,
        ours=dict(first_s=ours_first, s=ours_s, tok_s=batch * n_new / ours_s),
        torch=dict(first_s=theirs_first, s=theirs_s, tok_s=batch * n_new / theirs_s),
      )
      row['ours']['compile_s'] = ours_first - ours_s
      row['speedup'] = row['ours']['tok_s'] / row['torch']['tok_s']
      if mode == 'greedy':
        row['agreement'] = _agreement(ours_out, theirs_out, _AGREE_TOKENS.value)
        greedy_tokens = dict(ours=ours_out[:2].tolist(), torch=theirs_out[:2].tolist())
        row['sample_text'] = dict(
          ours=tokenizer.decode(ours_out[0], skip_special_tokens=True),
          torch=tokenizer.decode(theirs_out[0], skip_special_tokens=True),
        )
        row['first_rows_tokens'] = greedy_tokens
      rows.append(row)
      print(
        f'batch {batch:3d} {mode:7s} ours {row["ours"]["tok_s"]:8.1f} tok/s '
        f'(first call {ours_first:.1f} s)  transformers {row["torch"]["tok_s"]:8.1f} tok/s '
        f'(first {theirs_first:.1f} s)  speedup {row["speedup"]:.2f}x'
        + (f'  agreement {row["agreement"]}' if mode == 'greedy' else ''),
        flush=True,
      )
  header = (
    '| batch | mode | prompt len | new tokens | ours tok/s | transformers tok/s | ours / transformers '
    '| ours first call (s) | ours compile (s) | transformers first call (s) '
    '| greedy agreement: leading tokens min / mean, rows equal on first k |'
  )
  lines = [header, '|---:|---|' + '---:|' * 8 + '---|']
  for r in rows:
    o, t = r['ours'], r['torch']
    agree = (
      f'{r["agreement"]["leading_min"]} / {r["agreement"]["leading_mean"]:.1f}, '
      f'{100 * r["agreement"]["rows_equal_first_k"]:.0f} % (k={r["agreement"]["k"]})'
      if 'agreement' in r
      else '-'
    )
    lines.append(
      f'| {r["batch"]} | {r["mode"]} | {r["prompt_length"]} | {r["new_tokens"]} '
      f'| {o["tok_s"]:.1f} | {t["tok_s"]:.1f} | {r["speedup"]:.2f}x | {o["first_s"]:.1f} '
      f'| {o["compile_s"]:.1f} | {t["first_s"]:.1f} | {agree} |'
    )
  table = '\n'.join(lines)
  print(table)
  report = dict(
    rows=rows,
    config=dict(
      new_tokens=n_new,
      reps=_REPS.value,
      length_bucket=_LENGTH_BUCKET.value,
      sampling=sampling,
      torch_threads=torch.get_num_threads(),
      weights='real SmolLM2-135M-Instruct GGUF, float32, both sides',
    ),
    machine=dict(bench_common.machine(), load_average_before=load_before),
    versions=bench_common.versions(),
    date=bench_common.now_utc(),
    command=' '.join(sys.argv),
    table=table,
  )
  if _OUT.value:
    from peft_jax.common import files  # pylint: disable=g-import-not-at-top

    print(f'wrote {files.write_json(_OUT.value, report)}')
  else:
    print(json.dumps(report, indent=2, default=str))


if __name__ == '__main__':
  app.run(main)
