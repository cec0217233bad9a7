"""The report's Claims section: PEFT-Arena's qualitative findings checked against this run.

Every number comes from the arena's stage outputs (``base_eval``, ``eval_<m>``, ``geometry_<m>``,
``paths_<m>``); :func:`compute_claims` is a pure function of those dicts. The rules are in
docs/METRICS.md ("Claims") and in each claim's ``rule`` text; in short:

* A comparison is *significant* when the 95% paired bootstrap interval of the difference excludes
  0. Differences between two methods are paired over the same examples and the same resample
  indices (``peft_jax.evals.intervals.paired_intervals``, with one method in the base's place).
* A claim *agrees* when every part it names is significant in the stated direction, *disagrees*
  when some part is significant in the opposite direction, and is *inconclusive* otherwise (an
  interval holding 0, a method not in the run, too few methods or examples). Agreement needs
  evidence; absence of evidence is never counted for a claim.
* Correlations across methods are Spearman's ρ (average ranks for ties) with an exact two-sided
  permutation p-value over all ``n!`` pairings (Monte Carlo above ``EXACT_MAX_N`` methods) and a
  percentile bootstrap interval over methods; a correlation is significant at ``p < ALPHA``.

The claims name PEFT-Arena's methods by their registry names (``FULL``, ``LORA_TYPE``, ...):
they are statements about those methods, looked up as data, not behaviour switched on names.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from peft_jax.evals import axes, intervals
from peft_jax.report import formatting as fmt

VERDICTS = ('agrees', 'disagrees', 'inconclusive')
ALPHA = 0.05  # significance level of the correlation tests
EXACT_MAX_N = 8  # up to 8! = 40,320 pairings the permutation p-value is exact
PERMUTATIONS = 9999  # Monte Carlo pairings above EXACT_MAX_N
EQUIVALENCE = 0.5  # claim 7: |ρ| below this bound counts as "does not predict"
MIN_N = 3  # fewer methods: no correlation is computed

# PEFT-Arena's named methods, by registry name.
FULL = 'full'
LORA = 'lora'
LORA_TYPE = ('lora', 'dora', 'pissa', 'disel')
PISSA = 'pissa'
VERA = 'vera'
OFT = 'oft'


# ---- statistics -----------------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks 1..n along the last axis, ties sharing their average rank (``[..., n]`` float64)."""
  x = np.asarray(values, dtype=np.float64)
  less = (x[..., None, :] < x[..., :, None]).sum(axis=-1)
  equal = (x[..., None, :] == x[..., :, None]).sum(axis=-1)
  return less + (equal + 1) / 2.0


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pearson correlation of matching rows of ``a`` and ``b`` (NaN where a row is constant)."""
  a = a - a.mean(axis=-1, keepdims=True)
  b = b - b.mean(axis=-1, keepdims=True)
  den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(den > 0, (a * b).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's ρ: the Pearson correlation of the average ranks (NaN for a constant input)."""
  return float(_pearson_rows(average_ranks(x), average_ranks(y)))


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
  """``[resamples, n]`` indices of methods drawn with replacement, from
  ``default_rng([seed, crc32('spearman')])``."""
  rng = np.random.default_rng([int(seed), zlib.crc32(b'spearman')])
  return rng.integers(0, n, size=(resamples, n))


def spearman_test(
  x: Sequence[float],
  y: Sequence[float],
  *,
  resamples: int = intervals.DEFAULT_RESAMPLES,
  seed: int = intervals.DEFAULT_SEED,
  confidence: float = intervals.CONFIDENCE,
) -> dict[str, Any]:
  """Spearman's ρ of paired values with its permutation p-value and bootstrap interval.

  Returns:
    ``{'n', 'rho', 'p', 'p_method' ('exact' | 'monte carlo'), 'min_p', 'interval'}``. ``p`` is
    two-sided, ``min(1, 2 min(P(ρ* >= ρ), P(ρ* <= ρ)))`` over the pairings ``ρ*`` of ``y`` with
    ``x`` (every ``n!`` of them up to ``EXACT_MAX_N``, else ``PERMUTATIONS`` random ones with the
    observed pairing counted: ``(1 + k) / (1 + B)``); ``min_p`` the smallest p the test can give.
    ``interval``: the percentile interval of ρ over ``resamples`` bootstrap draws of the pairs
    (draws where one side is constant are left out). With ``n < MIN_N`` everything but ``n`` is
    ``None``.
  """
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f'spearman_test needs two equal-length 1-D inputs, got {x.shape}, {y.shape}')
  n = int(x.size)
  out: dict[str, Any] = {'n': n, 'rho': None, 'p': None, 'p_method': None, 'min_p': None}
  out['interval'] = None
  if n < MIN_N:
    return out
  rx, ry = average_ranks(x), average_ranks(y)
  rho = float(_pearson_rows(rx, ry))
  out['rho'] = None if math.isnan(rho) else rho
  if math.isnan(rho):
    return out
  if n <= EXACT_MAX_N:
    pairings = np.asarray(list(itertools.permutations(range(n))), dtype=np.int64)
    adjustment, method = 0, 'exact'
    out['min_p'] = min(1.0, 2.0 / math.factorial(n))
  else:
    rng = np.random.default_rng([int(seed), zlib.crc32(b'permutation')])
    pairings = np.argsort(rng.random((PERMUTATIONS, n)), axis=-1)
    adjustment, method = 1, 'monte carlo'
    out['min_p'] = min(1.0, 2.0 / (PERMUTATIONS + 1))
  null = _pearson_rows(np.broadcast_to(rx, pairings.shape), ry[pairings])
  tolerance = 1e-9 * max(abs(rho), 1e-12)
  greater = (np.sum(null >= rho - tolerance) + adjustment) / (len(pairings) + adjustment)
  less = (np.sum(null <= rho + tolerance) + adjustment) / (len(pairings) + adjustment)
  out['p'] = float(min(1.0, 2.0 * min(greater, less)))
  out['p_method'] = method
  draws = bootstrap_indices(n, resamples, seed)
  replicates = _pearson_rows(average_ranks(x[draws]), average_ranks(y[draws]))
  out['interval'] = intervals.percentile_interval(replicates, confidence)
  return out


def sign(interval: Optional[Sequence[float]]) -> int:
  """+1 when an interval lies above 0, -1 below 0, 0 when it holds 0 (or is ``None``)."""
  if interval is None:
    return 0
  lo, hi = float(interval[0]), float(interval[1])
  return 1 if lo > 0 else -1 if hi < 0 else 0


def _correlation_sign(test: Mapping[str, Any]) -> int:
  """+1 / -1 for a significant positive / negative ρ, 0 otherwise."""
  if test['p'] is None or test['p'] >= ALPHA:
    return 0
  return 1 if test['rho'] > 0 else -1


def combine(parts: Sequence[int]) -> str:
  """The verdict of a claim from its parts: +1 (significant as claimed), -1 (significant against
  the claim), 0 (not significant). Any -1: disagrees; all +1 (and at least one): agrees."""
  if any(p < 0 for p in parts):
    return 'disagrees'
  if parts and all(p > 0 for p in parts):
    return 'agrees'
  return 'inconclusive'


# ---- differences from stage outputs ---------------------------------------------------------


class _Run:
  """The stage outputs the claims read, and the paired differences between them (cached)."""

  def __init__(self, base, per_method, target, general_tasks, resamples, seed):
    self.base, self.target = base, target
    self.evals = {m: s['eval'] for m, s in per_method.items() if s.get('eval') is not None}
    self.stages = per_method
    self.general = list(general_tasks)
    self.resamples, self.seed = resamples, seed
    self._cache: dict = {}

  def has(self, *methods: str) -> bool:
    return all(m in self.evals for m in methods)

  def _scores(self, name: str) -> Mapping[str, Any]:
    return self.base if name == 'base' else self.evals[name]

  def diff(self, a: str, b: str) -> dict[str, dict]:
    """``{'gain': T_a − T_b, 'forget': F_a − F_b = G_b − G_a}``, each ``{'delta', 'interval'}``
    (``b = 'base'``: a's Target gain and Forget)."""
    key = (a, b)
    if key not in self._cache:
      sa, sb = self._scores(a), self._scores(b)
      out = {
        'gain': {'delta': float(sa['tasks'][self.target]) - float(sb['tasks'][self.target])},
        'forget': {'delta': float(sb['general']) - float(sa['general'])},
      }
      out['gain']['interval'] = out['forget']['interval'] = None
      if sa.get('per_example') and sb.get('per_example'):
        paired = intervals.paired_intervals(
          sb['per_example'],
          sa['per_example'],
          target_tasks=[self.target],
          general_tasks=self.general,
          resamples=self.resamples,
          seed=self.seed,
        )
        for name, key_ in (('gain', 'target_gain'), ('forget', 'forget')):
          if math.isfinite(paired[key_]['delta']):
            out[name] = {'delta': paired[key_]['delta'], 'interval': paired[key_]['interval']}
      self._cache[key] = out
    return self._cache[key]


def _pts(d: Mapping[str, Any]) -> str:
  return fmt.fmt_points_ci(d['delta'], d['interval'], signed=True)


def _missing(run: _Run, methods: Sequence[str]) -> str:
  absent = [m for m in methods if m not in run.evals]
  return f'needs {", ".join(absent)} (not in this run)'


def _claim(number, finding, rule, verdict, evidence, reason, **numbers) -> dict:
  assert verdict in VERDICTS
  return {
    'id': number,
    'finding': finding,
    'rule': rule,
    'verdict': verdict,
    'evidence': evidence,
    'reason': reason,
    'numbers': numbers,
  }


def _reason(verdict: str, against: Sequence[str], unresolved: Sequence[str]) -> str:
  if verdict == 'agrees':
    return 'every part significant as claimed'
  if verdict == 'disagrees':
    return 'significant against the claim: ' + '; '.join(against)
  return 'not significant: ' + ('; '.join(unresolved) or 'no part could be tested')


def _parts_verdict(parts: Sequence[tuple[str, int]]) -> tuple[str, str]:
  verdict = combine([s for _, s in parts])
  return verdict, _reason(verdict, [n for n, s in parts if s < 0], [n for n, s in parts if s == 0])


# ---- the claims -----------------------------------------------------------------------------

SIGNIFICANT = 'its 95% paired bootstrap interval excludes 0'


def _claim_full(run: _Run) -> dict:
  finding = 'Full fine-tuning gains the most on the target and forgets the most.'
  rule = (
    'For every other method m: Target(full) − Target(m) > 0 and Forget(full) − Forget(m) > 0, '
    f'each significant ({SIGNIFICANT}) → agrees; any of them significantly < 0 → disagrees.'
  )
  others = [m for m in run.evals if m != FULL]
  if not run.has(FULL) or not others:
    why = _missing(run, [FULL]) if not run.has(FULL) else 'no other method to compare with'
    return _claim(1, finding, rule, 'inconclusive', why, why)
  base = run.diff(FULL, 'base')
  parts, lines = [], [f'full: gain {_pts(base["gain"])}, Forget {_pts(base["forget"])}']
  for m in others:
    d = run.diff(FULL, m)
    parts += [(f'gain vs {m}', sign(d['gain']['interval']))]
    parts += [(f'Forget vs {m}', sign(d['forget']['interval']))]
    lines.append(f'full − {m}: gain {_pts(d["gain"])}, Forget {_pts(d["forget"])}')
  verdict, reason = _parts_verdict(parts)
  return _claim(1, finding, rule, verdict, '; '.join(lines), reason, compared=others)


def _claim_lora_type(run: _Run) -> dict:
  finding = (
    'LoRA-type methods (LoRA, DoRA, PiSSA, DISeL) forget less than full fine-tuning, but '
    'noticeably.'
  )
  rule = (
    'For every LoRA-type method m in the run: Forget(full) − Forget(m) > 0 and Forget(m) > 0 '
    f'(vs the base), each significant ({SIGNIFICANT}) → agrees; any significantly < 0 → '
    'disagrees.'
  )
  present = [m for m in LORA_TYPE if m in run.evals]
  if not run.has(FULL) or not present:
    why = _missing(run, [FULL] if not run.has(FULL) else list(LORA_TYPE))
    return _claim(2, finding, rule, 'inconclusive', why, why)
  parts, lines = [], []
  for m in present:
    own, vs_full = run.diff(m, 'base'), run.diff(FULL, m)
    parts += [(f'full − {m}', sign(vs_full['forget']['interval']))]
    parts += [(f'Forget({m})', sign(own['forget']['interval']))]
    lines.append(f'{m}: Forget {_pts(own["forget"])}, full − {m} {_pts(vs_full["forget"])}')
  verdict, reason = _parts_verdict(parts)
  return _claim(2, finding, rule, verdict, '; '.join(lines), reason, compared=present)


def _pair_claim(run, number, finding, rule, a, b, expected) -> dict:
  """A claim about method ``a`` against ``b``: the signs ``expected`` of (gain, Forget) of
  a − b."""
  if not run.has(a, b):
    why = _missing(run, [a, b])
    return _claim(number, finding, rule, 'inconclusive', why, why)
  d = run.diff(a, b)
  own_a, own_b = run.diff(a, 'base'), run.diff(b, 'base')
  parts = [
    ('gain', expected[0] * sign(d['gain']['interval'])),
    ('Forget', expected[1] * sign(d['forget']['interval'])),
  ]
  verdict, reason = _parts_verdict(parts)
  evidence = (
    f'{a}: gain {_pts(own_a["gain"])}, Forget {_pts(own_a["forget"])}; '
    f'{b}: gain {_pts(own_b["gain"])}, Forget {_pts(own_b["forget"])}; '
    f'{a} − {b}: gain {_pts(d["gain"])}, Forget {_pts(d["forget"])}'
  )
  return _claim(number, finding, rule, verdict, evidence, reason)


def _claim_pissa(run: _Run) -> dict:
  return _pair_claim(
    run,
    3,
    'PiSSA gains fast and forgets much, compared with LoRA.',
    'At the same step budget: Target(PiSSA) − Target(LoRA) > 0 and Forget(PiSSA) − '
    f'Forget(LoRA) > 0, both significant ({SIGNIFICANT}) → agrees; either significantly < 0 → '
    'disagrees.',
    PISSA,
    LORA,
    (1, 1),
  )


def _claim_vera(run: _Run) -> dict:
  return _pair_claim(
    run,
    4,
    'VeRA is stable, with small gains.',
    'Against LoRA: Forget(VeRA) − Forget(LoRA) < 0 (stable) and Target(VeRA) − Target(LoRA) '
    f'< 0 (small gains), both significant ({SIGNIFICANT}) → agrees; either significantly > 0 '
    '→ disagrees.',
    VERA,
    LORA,
    (-1, -1),
  )


def _claim_oft(run: _Run) -> dict:
  finding = 'OFT lies on a better frontier of target gain against forgetting.'
  rule = (
    'm dominates n when Target(m) − Target(n) and Forget(n) − Forget(m) are both not '
    f'significantly < 0 and one is significantly > 0 ({SIGNIFICANT}). No method dominates OFT '
    'and OFT dominates at least one → agrees; some method dominates OFT → disagrees.'
  )
  others = [m for m in run.evals if m != OFT]
  if not run.has(OFT) or not others:
    why = _missing(run, [OFT]) if not run.has(OFT) else 'no other method to compare with'
    return _claim(5, finding, rule, 'inconclusive', why, why)
  over, under, lines = [], [], []
  for m in others:
    d = run.diff(OFT, m)
    gain, keep = sign(d['gain']['interval']), -sign(d['forget']['interval'])
    if gain >= 0 and keep >= 0 and (gain > 0 or keep > 0):
      over.append(m)
    if gain <= 0 and keep <= 0 and (gain < 0 or keep < 0):
      under.append(m)
    lines.append(f'oft − {m}: gain {_pts(d["gain"])}, Forget {_pts(d["forget"])}')
  if under:
    verdict, reason = 'disagrees', f'dominated by {", ".join(under)}'
  elif over:
    verdict, reason = 'agrees', f'dominates {", ".join(over)}; dominated by none'
  else:
    verdict, reason = 'inconclusive', 'no dominance is significant either way'
  evidence = '; '.join(lines)
  return _claim(5, finding, rule, verdict, evidence, reason, dominates=over, dominated_by=under)


def _path_replicates(per_example: Sequence[Mapping], points: Sequence[int], run: _Run):
  """Target and General replicates ``[len(points), B]`` and point values ``[len(points)]`` of
  the α-grid points ``points``, every point on the same resample indices (a task's indices
  depend only on the seed, its name and its size); ``None`` when a task lacks statistics."""
  tasks = [run.target] + [t for t in run.general if t != run.target]
  if len(tasks) < 2:
    return None
  reps, values = {}, {}
  for task in tasks:
    stats = [per_example[i].get(task) for i in points]
    if any(s is None for s in stats):
      return None
    units = [intervals.parse_units(s, f'paths per_example[{task!r}]') for s in stats]
    if any(not np.array_equal(u.stratum, units[0].stratum) for u in units):
      raise ValueError(f'paths: task {task!r} has different examples at different α')
    indices = intervals.resample_indices(
      units[0], run.resamples, intervals.task_rng(run.seed, task)
    )
    reps[task] = np.stack([intervals.estimate(u, indices) for u in units])
    values[task] = np.array([intervals.point_estimate(u) for u in units])
  general = tasks[1:]
  return (
    (reps[run.target], values[run.target]),
    (np.mean([reps[t] for t in general], axis=0), np.mean([values[t] for t in general], axis=0)),
  )


def _ratio(part: float, whole: float) -> float:
  return float(part) / float(whole) if whole != 0 else math.nan


def _contrast(replicates: np.ndarray, values: np.ndarray, weights) -> dict:
  w = np.asarray(weights, dtype=np.float64)
  return {
    'delta': float(w @ values),
    'interval': intervals.percentile_interval(w @ replicates),
  }


def _claim_paths(run: _Run) -> dict:
  finding = (
    'Intermediate points of the path from the base keep most of the target gain and restore '
    'much of the general score.'
  )
  rule = (
    "On each method's own path (paths_<m>: the rewinding path; additive methods: the "
    'interpolation), for methods whose α = 1 end gains and forgets significantly '
    '(T(1) − T(0) > 0, G(0) − G(1) > 0): an interior α keeps more than half the gain, '
    'T(α) − (T(0) + T(1))/2 > 0, and restores more than half the loss, G(α) − (G(0) + G(1))/2 '
    f'> 0, both significant ({SIGNIFICANT}, paired over the α-grid examples). A method agrees '
    'when some interior α satisfies both, disagrees when at every interior α one is '
    'significantly < 0; the claim agrees when every such method agrees and disagrees when one '
    'disagrees.'
  )
  sub, lines, skipped = {}, [], []
  for m in run.evals:
    paths = (run.stages.get(m) or {}).get('paths')
    if not paths:
      skipped.append(f'{m} (no paths stage)')
      continue
    curve = paths.get('rewind') or paths.get('interpolation')
    alphas = [float(a) for a in paths['alpha']]
    if not alphas or alphas[0] != 0.0 or alphas[-1] != 1.0:
      skipped.append(f'{m} (the α-grid does not run from 0 to 1)')
      continue
    interior = [i for i, a in enumerate(alphas) if 0.0 < a < 1.0]
    last = len(alphas) - 1
    if not interior:
      skipped.append(f'{m} (no interior α)')
      continue
    pe = curve.get('per_example')
    reps = None if not pe else _path_replicates(pe, [0, last] + interior, run)
    if reps is None:
      skipped.append(f'{m} (no per-example statistics on the α-grid)')
      continue
    (t_rep, t_val), (g_rep, g_val) = reps
    k = len(interior)
    gain = _contrast(t_rep, t_val, [-1.0, 1.0] + [0.0] * k)
    loss = _contrast(g_rep, g_val, [1.0, -1.0] + [0.0] * k)
    if sign(gain['interval']) <= 0 or sign(loss['interval']) <= 0:
      skipped.append(f'{m} (gain {_pts(gain)}, loss {_pts(loss)}: not both significant)')
      continue
    best, rows = [], []
    for j, i in enumerate(interior):
      weights = [-0.5, -0.5] + [1.0 if jj == j else 0.0 for jj in range(k)]
      keep, restore = _contrast(t_rep, t_val, weights), _contrast(g_rep, g_val, weights)
      best.append((sign(keep['interval']), sign(restore['interval'])))
      kept = _ratio(t_val[2 + j] - t_val[0], t_val[1] - t_val[0])
      back = _ratio(g_val[2 + j] - g_val[1], g_val[0] - g_val[1])
      rows.append(
        f'α={alphas[i]:.2f} keeps {100 * kept:.0f}% of the gain ({_pts(keep)} over half) and '
        f'restores {100 * back:.0f}% of the loss ({_pts(restore)} over half)'
      )
    if any(a > 0 and b > 0 for a, b in best):
      sub[m] = 1
    elif all(a < 0 or b < 0 for a, b in best):
      sub[m] = -1
    else:
      sub[m] = 0
    lines.append(f'{m} (gain {_pts(gain)}, loss {_pts(loss)}): ' + ', '.join(rows))
  if not sub:
    why = 'no method both gained and forgot significantly on the α-grid examples'
    evidence = why + (f'; {"; ".join(skipped)}' if skipped else '')
    return _claim(6, finding, rule, 'inconclusive', evidence, why, methods={})
  verdict = combine(list(sub.values()))
  reason = _reason(
    verdict, [m for m, s in sub.items() if s < 0], [m for m, s in sub.items() if s == 0]
  )
  evidence = '; '.join(lines) + (f'; left out: {", ".join(skipped)}' if skipped else '')
  return _claim(6, finding, rule, verdict, evidence, reason, methods=sub)


def _mean(values) -> float:
  array = np.asarray(values, dtype=np.float64)
  array = array[np.isfinite(array)]
  return float(array.mean()) if array.size else math.nan


def _per_method(run: _Run, kind: str, read) -> dict[str, float]:
  out = {}
  for m in run.evals:
    stage = (run.stages.get(m) or {}).get(kind)
    if stage:
      value = read(stage)
      if math.isfinite(value):
        out[m] = value
  return out


def _correlation(run: _Run, claim: int, name: str, xs: Mapping[str, float], ys, expected: int):
  methods = [m for m in xs if m in ys and math.isfinite(ys[m])]
  test = spearman_test(
    [xs[m] for m in methods],
    [ys[m] for m in methods],
    resamples=run.resamples,
    seed=run.seed,
  )
  return dict(test, claim=claim, pair=name, expected=expected, methods=methods)


def _corr_text(c: Mapping[str, Any]) -> str:
  if c['rho'] is None:
    return f'{c["pair"]}: n = {c["n"]}, too few methods with both values'
  text = (
    f'{c["pair"]}: ρ = {c["rho"]:+.3f}, n = {c["n"]}, p = {c["p"]:.3g} ({c["p_method"]}), '
    f'bootstrap {_rho_interval(c["interval"])}'
  )
  if c['min_p'] >= ALPHA:
    text += f' (no p below {c["min_p"]:.3g} is possible at this n)'
  return text


def _rho_interval(interval) -> str:
  if interval is None:
    return fmt.NO_INTERVAL
  return f'[{interval[0]:+.3f}, {interval[1]:+.3f}]'


def _claim_csd(run: _Run, forget, gain) -> tuple[dict, list]:
  finding = (
    'CSD on general inputs rises with forgetting, while CSD on target inputs does not predict '
    'the target gain.'
  )
  rule = (
    'Across methods (mean CSD_rel over the adapted modules): Spearman ρ(CSD general, Forget) > '
    f'0 with p < {ALPHA}, and the 95% bootstrap interval of ρ(CSD target, Target gain) inside '
    f'(−{EQUIVALENCE}, {EQUIVALENCE}) → agrees; ρ(CSD general, Forget) < 0 with p < {ALPHA}, '
    f'or ρ(CSD target, Target gain) with p < {ALPHA} → disagrees.'
  )
  general = _per_method(run, 'geometry', lambda g: _mean([r['general/rel'] for r in g['csd']]))
  target = _per_method(run, 'geometry', lambda g: _mean([r['target/rel'] for r in g['csd']]))
  a = _correlation(run, 7, 'CSD general vs Forget', general, forget, +1)
  b = _correlation(run, 7, 'CSD target vs Target gain', target, gain, 0)
  first = _correlation_sign(a)
  interval = b['interval']
  second = -1 if _correlation_sign(b) != 0 else 0
  if (
    second == 0
    and interval is not None
    and -EQUIVALENCE < interval[0]
    and interval[1] < EQUIVALENCE
  ):
    second = 1
  verdict, reason = _parts_verdict([('CSD general vs Forget', first), ('CSD target', second)])
  evidence = f'{_corr_text(a)}; {_corr_text(b)}'
  return _claim(7, finding, rule, verdict, evidence, reason), [a, b]


def _claim_activation(run: _Run, forget) -> tuple[dict, list]:
  finding = (
    'A larger Procrustes residual and Gram distortion, and a lower CKA, go with more forgetting.'
  )
  rule = (
    'Across methods (means over layers of the residual stream on general prompts): Spearman '
    f'ρ(Procrustes, Forget) > 0, ρ(Gram, Forget) > 0 and ρ(CKA, Forget) < 0, each with p < '
    f'{ALPHA} → agrees; any significant with the other sign → disagrees.'
  )
  tests = []
  for key, label, expected in (
    ('procrustes', 'Procrustes vs Forget', +1),
    ('gram', 'Gram vs Forget', +1),
    ('cka', 'CKA vs Forget', -1),
  ):
    xs = _per_method(run, 'geometry', lambda g, k=key: _mean(g['activation'][k]))
    tests.append(_correlation(run, 8, label, xs, forget, expected))
  verdict, reason = _parts_verdict(
    [(t['pair'], t['expected'] * _correlation_sign(t)) for t in tests]
  )
  evidence = '; '.join(_corr_text(t) for t in tests)
  return _claim(8, finding, rule, verdict, evidence, reason), tests


def compute_claims(
  base: Mapping[str, Any],
  per_method: Mapping[str, Mapping[str, Any]],
  target: str,
  general_tasks: Optional[Sequence[str]] = None,
  *,
  resamples: Optional[int] = None,
  seed: Optional[int] = None,
) -> dict[str, Any]:
  """The claims table of a run from its stage outputs.

  Args:
    base: the ``base_eval`` stage result (``evaluate_scores``: ``tasks``, ``general``,
      ``per_example``, ``bootstrap``).
    per_method: ``{method: {'eval', 'geometry', 'paths'}}`` stage results (others ignored).
    target: the target task.
    general_tasks: the tasks of General (default: ``kind == 'general'`` in the base's
      statistics).
    resamples, seed: bootstrap settings (default: the base's ``bootstrap`` record).
  Returns:
    ``{'claims': [{'id', 'finding', 'rule', 'verdict', 'evidence', 'reason', 'numbers'}],
    'correlations': [spearman_test dicts with 'claim', 'pair', 'expected', 'methods'],
    'methods': [...], 'alpha', 'resamples', 'seed'}``.
  """
  settings = base.get('bootstrap') or {}
  resamples = int(resamples or settings.get('resamples', intervals.DEFAULT_RESAMPLES))
  seed = int(settings.get('seed', intervals.DEFAULT_SEED) if seed is None else seed)
  if general_tasks is None:
    general_tasks = [
      t for t, s in (base.get('per_example') or {}).items() if s and s.get('kind') == 'general'
    ]
  run = _Run(base, per_method, target, general_tasks, resamples, seed)
  # The correlations read the scores as the report shows them (axes.forget / target_gain).
  forget = {m: axes.forget(base['general'], ev['general']) for m, ev in run.evals.items()}
  gain = {
    m: axes.target_gain(base['tasks'][target], ev['tasks'][target]) for m, ev in run.evals.items()
  }
  csd, csd_tests = _claim_csd(run, forget, gain)
  activation, activation_tests = _claim_activation(run, forget)
  claims = [
    _claim_full(run),
    _claim_lora_type(run),
    _claim_pissa(run),
    _claim_vera(run),
    _claim_oft(run),
    _claim_paths(run),
    csd,
    activation,
  ]
  return {
    'claims': claims,
    'correlations': csd_tests + activation_tests,
    'methods': list(run.evals),
    'alpha': ALPHA,
    'resamples': resamples,
    'seed': seed,
  }
