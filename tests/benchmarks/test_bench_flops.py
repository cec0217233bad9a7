"""benchmarks/bench_common's FLOP count of a Llama decoder step against a count done by hand."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks'))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top


def test_train_step_flops_match_hand_count():
  # d 4, MLP 8, 1 layer, 2 query heads + 1 kv head of width 2, vocab 10, sequence 3.
  # Multiply-adds per token: q 4x4 = 16, k 4x2 = 8, v 8, o 16, gate/up/down 3 x 4x8 = 96;
  # attention: scores 3 keys x 4 query dims = 12 and values 12; lm_head 4 x 10 = 40.
  # Total 16 + 8 + 8 + 16 + 96 + 24 + 40 = 208 multiply-adds = 416 FLOPs per token forward.
  dims = dict(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1, head_dim=2, vocab=10, seq=3)
  assert bench_common.forward_flops_per_token(**dims) == 416
  assert bench_common.train_step_flops(dims, tokens=5, full=True) == 3 * 5 * 416
  assert bench_common.train_step_flops(dims, tokens=5, full=False) == 2 * 5 * 416
