"""What the benchmark scripts share: machine and version facts, child processes, FLOP counts."""

import json
import os
import platform
import resource
import subprocess
import sys
import time


def cpu_model() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    return next(line.split(':', 1)[1].strip() for line in out.splitlines() if 'Model name' in line)
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return platform.processor() or 'unknown'


def load_average() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
  return dict(cpu=cpu_model(), cores=os.cpu_count(), load_average=load_average())


def versions() -> dict:
  """Versions of the two stacks, read from package metadata (imports nothing heavy)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  out = dict(python=platform.python_version())
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers', 'peft'):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def now_utc() -> str:
  return time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux ``ru_maxrss`` is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


RESULT_PREFIX = 'BENCH_RESULT '


def emit(result: dict) -> None:
  """A child's answer: one line on stdout the parent picks out of the rest."""
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(
  script: str, args: list[str], timeout: float | None = None, env: dict | None = None
) -> dict:
  """Runs ``python script args`` in a fresh process and returns its :func:`emit`-ted dict.

  ``env``: variables to set in the child on top of this process's environment.

  Raises:
    RuntimeError: the child failed or emitted nothing (its stderr tail is in the message).
  """
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, script, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=None if env is None else {**os.environ, **env},
  )
  wall = time.perf_counter() - start
  lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(
      f'{os.path.basename(script)} {" ".join(args)} failed (rc {proc.returncode}):\n'
      f'{proc.stderr[-3000:]}'
    )
  result = json.loads(lines[-1][len(RESULT_PREFIX) :])
  result['process_wall_s'] = wall
  return result


def forward_flops_per_token(
  *, hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, seq
) -> float:
  """Matmul FLOPs (2 per multiply-add) of one token's forward pass through a Llama decoder.

  Per layer: the q, k, v, o projections and the three SwiGLU matrices, plus attention scores
  (q . k over ``seq`` keys) and the weighted sum of values, counted over the full ``seq x seq``
  square (both stacks compute the masked half too). Plus the lm_head. Norms, softmax, rotary and
  the elementwise SwiGLU are not matmuls and are left out.
  """
  q_width, kv_width = heads * head_dim, kv_heads * head_dim
  projections = (
    hidden * q_width + 2 * hidden * kv_width + q_width * hidden + 3 * hidden * intermediate
  )
  attention = 2 * seq * q_width  # scores and weighted values, per query token
  return 2.0 * (layers * (projections + attention) + hidden * vocab)


def train_step_flops(dims: dict, tokens: int, full: bool) -> float:
  """Model FLOPs of one training step on ``tokens`` tokens.

  Backward = gradients w.r.t. activations (1x forward) plus, for trainable weights, w.r.t. the
  weights (another 1x): full fine-tuning 3x forward; an adapter on a frozen base 2x forward, its
  own (small, method-dependent) FLOPs not counted. ``dims`` holds the keyword arguments of
  :func:`forward_flops_per_token`.
  """
  return (3.0 if full else 2.0) * tokens * forward_flops_per_token(**dims)
