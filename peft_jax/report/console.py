"""A fixed-width summary table for logs and terminals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from peft_jax.report import formatting as fmt
from peft_jax.report.schema import validate_results

_COLUMNS = ('method', 'target', 'general', 'forget', 'noise', 'params', 'time')
_RIGHT = (False, True, True, True, False, True, True)


def _interval(entry: Mapping[str, Any], key: str) -> Any:
  return (entry.get('intervals') or {}).get(key)


def _forget_interval(entry: Mapping[str, Any]) -> Any:
  return ((entry.get('paired') or {}).get('forget') or {}).get('interval')


def _noise(entry: Mapping[str, Any]) -> str:
  paired = entry.get('paired') or {}
  flags = [(paired.get(k) or {}).get('within_noise') for k in ('target_gain', 'forget')]
  if all(flag is None for flag in flags):
    return '—'
  return ','.join(n for n, flag in zip(('gain', 'forget'), flags) if flag) or 'no'


def print_summary_table(results: Mapping[str, Any], *, file: TextIO | None = None) -> str:
  """Formats method, Target, General, Forget (each with its 95% interval), which of target gain
  and Forget are within noise (their paired interval contains 0), trainable params and train
  time as a text table.

  The base model is the first row. Numbers use the report's formats (scores 3 decimals, Forget
  in points with 1 decimal, params with thousands separators, ``[—]`` for no interval), so the
  console and the HTML page agree. Example::

    method                target                general              forget  noise   params    time
    ------  --------------------  --------------------  ------------------  -----  -------  ------
    base    0.350 [0.300, 0.400]  0.470 [0.430, 0.510]                 0.0  —            —       —
    lora    0.425 [0.370, 0.480]  0.392 [0.350, 0.430]     7.8 [3.1, 12.0]  no      12,288  41.2 s

  Args:
    results: the arena results dict (schema in the `peft_jax.report` docstring).
    file: when given (e.g. ``sys.stdout``), the table is also written there.

  Returns:
    The table, lines joined with newlines, without a trailing newline.

  Raises:
    ResultsSchemaError: (a `KeyError`) naming the missing or malformed key.
  """
  validate_results(results)
  base = results['base']
  rows = [
    (
      'base',
      fmt.fmt_score_ci(base['target'], _interval(base, 'target')),
      fmt.fmt_score_ci(base['general'], _interval(base, 'general')),
      fmt.fmt_points(0.0),
      '—',
      '—',
      '—',
    )
  ]
  for name, m in results['methods'].items():
    rows.append(
      (
        name,
        fmt.fmt_score_ci(m['target'], _interval(m, 'target')),
        fmt.fmt_score_ci(m['general'], _interval(m, 'general')),
        fmt.fmt_points_ci(m['forget'], _forget_interval(m)),
        _noise(m),
        fmt.fmt_params(m['trainable_params']),
        fmt.fmt_seconds(m['train_time_s']),
      )
    )
  widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]

  def line(cells) -> str:
    return '  '.join(
      c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, _RIGHT)
    ).rstrip()

  table = '\n'.join([line(_COLUMNS), line(['-' * w for w in widths]), *map(line, rows)])
  if file is not None:
    print(table, file=file)
  return table
