"""Number formats shared by the HTML page, its Markdown twin and the console table.

One function per kind of quantity, so that a score reads the same everywhere:
scores with 3 decimals (``0.412``), forgetting and gains (0-1 differences, like every number in
the results) shown in percentage points with 1 decimal
(``7.8``, ``+3.1``), parameter counts with thousands separators (``1,234,567``). Non-finite
values (NaN, inf) print as ``n/a``. A 95% interval follows its value in brackets, in the value's
own format (``0.440 [0.310, 0.560]``, ``+3.1 [-1.2, +7.4]``); a value without one reads
``0.440 [—]`` (`NO_INTERVAL`).
"""

from __future__ import annotations

import math
from typing import Any

NOT_AVAILABLE = 'n/a'
NO_INTERVAL = '[—]'


def _finite(value: Any) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def fmt_score(value: Any) -> str:
  """A 0–1 score with 3 decimals: ``0.412``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{number:.3f}'


def fmt_signed_score(value: Any) -> str:
  """A score difference with sign and 3 decimals: ``+0.041``, ``-0.107``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{number:+.3f}'


def fmt_points(value: Any) -> str:
  """A 0-1 difference (forgetting) shown as percentage points, 1 decimal: ``0.078`` -> ``7.8``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{100.0 * number:.1f}'


def fmt_signed_points(value: Any) -> str:
  """A signed 0-1 difference (target gain) as percentage points, 1 decimal: ``+3.1``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{100.0 * number:+.1f}'


def _bracket(interval: Any, formatter) -> str:
  if interval is None:
    return NO_INTERVAL
  lo, hi = interval
  return f'[{formatter(lo)}, {formatter(hi)}]'


def fmt_interval(interval: Any) -> str:
  """A score interval: ``[0.310, 0.560]``; ``None`` -> ``[—]``."""
  return _bracket(interval, fmt_score)


def fmt_score_ci(value: Any, interval: Any) -> str:
  """A score with its interval: ``0.440 [0.310, 0.560]`` (``0.440 [—]`` without one)."""
  return f'{fmt_score(value)} {fmt_interval(interval)}'


def fmt_points_ci(value: Any, interval: Any, *, signed: bool = False) -> str:
  """A 0-1 difference and its interval in points: ``7.8 [3.1, 12.0]``, signed
  ``+3.1 [-1.2, +7.4]``."""
  formatter = fmt_signed_points if signed else fmt_points
  return f'{formatter(value)} {_bracket(interval, formatter)}'


def fmt_lr(value: Any) -> str:
  """A learning rate in scientific notation with 2 significant digits: ``2.0e-04``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{number:.1e}'


def fmt_params(value: Any) -> str:
  """A parameter count with thousands separators: ``1,234,567``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{int(round(number)):,}'


def fmt_percent(part: Any, whole: Any) -> str:
  """``part / whole`` as a percentage with 3 decimals: ``0.412%``."""
  numerator, denominator = _finite(part), _finite(whole)
  if numerator is None or denominator is None or denominator == 0:
    return NOT_AVAILABLE
  return f'{100.0 * numerator / denominator:.3f}%'


def fmt_seconds(value: Any) -> str:
  """Seconds with 1 decimal: ``12.3 s``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{number:,.1f} s'


def fmt_megabytes(value: Any) -> str:
  """Megabytes with 1 decimal: ``512.0 MB``."""
  number = _finite(value)
  return NOT_AVAILABLE if number is None else f'{number:,.1f} MB'


def fmt_metric(value: Any) -> str:
  """A geometry metric (CKA, Procrustes, CSD, loss), its decimals set by its magnitude.

  ``0.8606``, ``3.121``, ``19.50``, ``123.4``; below 1e-3 or from 1e5 on, scientific
  (``3.160e-04``); zero is ``0.0000``.
  """
  number = _finite(value)
  if number is None:
    return NOT_AVAILABLE
  magnitude = abs(number)
  if number != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
    return f'{number:.3e}'
  if magnitude >= 100:
    return f'{number:.1f}'
  if magnitude >= 10:
    return f'{number:.2f}'
  if magnitude >= 1:
    return f'{number:.3f}'
  return f'{number:.4f}'
