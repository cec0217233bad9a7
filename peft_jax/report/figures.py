"""Figures of the arena report, one PNG per function.

Every function takes the part of the results dict it draws (schema: `peft_jax.report`) and an
output path, writes a PNG at `DPI` dots per inch, and returns the path. Figures are built on
`matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so drawing touches no global
backend state and works headless. Files are written atomically (a temporary file in the same
directory, then `os.replace`), so a reader never sees half a PNG.

A method keeps one colour and one marker in every figure (`method_styles`), in the canonical order
full, lora, dora, pissa, vera, oft, miss, disel; other method names take the next free colours.

Example:
  >>> plot_training_loss({"lora": {"train_loss": [2.0, 1.5, 1.2]}}, "/tmp/loss.png")
  '/tmp/loss.png'
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

from peft_jax.adapters.api import method_names
from peft_jax.common.files import atomic_write

DPI = 110
FLAG_MARK = '⚑'

_MARKERS = ('o', 's', 'D', '^', 'v', 'P', 'X', 'h', '<', '>', 'p', '*')
_TARGET_COLOR = '#1f77b4'
_GENERAL_COLOR = '#d62728'
# A white outline keeps point labels legible where they cross arrows or grid lines.
_HALO = [patheffects.withStroke(linewidth=3.0, foreground='white')]
_RC = {
  'font.size': 10,
  'axes.titlesize': 11,
  'axes.titleweight': 'bold',
  'axes.labelsize': 10,
  'legend.fontsize': 9,
  'xtick.labelsize': 9,
  'ytick.labelsize': 9,
  'axes.grid': True,
  'grid.alpha': 0.3,
  'grid.linewidth': 0.6,
  'axes.spines.top': False,
  'axes.spines.right': False,
  'legend.frameon': False,
  'figure.dpi': DPI,
  'savefig.dpi': DPI,
  'savefig.facecolor': 'white',
}


def method_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
  """Colour and marker per method name, stable across figures.

  Args:
    names: method names, e.g. ``["full", "lora", "my_method"]``.

  Returns:
    ``{name: (hex colour, matplotlib marker)}``. Registered methods (``peft_jax.adapters.METHODS``)
    take the palette in registry order; other names take the remaining colours in the order given.
  """
  palette = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps['tab10'].colors]
  palette += [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps['Dark2'].colors]
  order = method_names()
  styles, extra = {}, len(order)
  for name in names:
    if name in order:
      index = order.index(name)
    else:
      index, extra = extra, extra + 1
    styles[name] = (palette[index % len(palette)], _MARKERS[index % len(_MARKERS)])
  return styles


def short_module_name(name: str) -> str:
  """A compact tick label for a module path.

  ``layers_3/self_attn/q_proj/kernel`` and ``model.layers.3.self_attn.q_proj`` both become
  ``L3 q_proj``; names without a layer index are returned without a trailing ``/kernel``.
  """
  match = re.search(r'layers[._](\d+)', name)
  leaf = re.split(r'[./]', re.sub(r'[./](kernel|weight)$', '', name))[-1]
  return f'L{match.group(1)} {leaf}' if match else re.sub(r'[./](kernel|weight)$', '', name)


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  FigureCanvasAgg(figure)
  figure.get_layout_engine().set(w_pad=0.06, h_pad=0.06)
  return figure


def _save(figure: Figure, path: str | os.PathLike) -> str:
  return atomic_write(
    path, lambda stream: figure.savefig(stream, format='png', dpi=DPI), binary=True
  )


def _with_key(methods: Mapping[str, Any], key: str) -> dict[str, Any]:
  return {name: m[key] for name, m in methods.items() if m.get(key) is not None}


def _require_any(data: Mapping[str, Any], what: str) -> None:
  if not data:
    raise ValueError(f'no method has {what} data to plot')


def _as_array(values: Any) -> np.ndarray:
  return np.asarray(values, dtype=np.float64)


def _use_log_scale(arrays: Sequence[np.ndarray], *, min_decades: float = 1.5) -> bool:
  """True when the finite values are (almost) all positive and span `min_decades` decades."""
  values = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
  if values.size == 0:
    return False
  positive = values[values > 0]
  if positive.size < 0.9 * values.size or positive.size == 0:
    return False
  return math.log10(positive.max() / positive.min()) >= min_decades


def _finite_mean(values: np.ndarray) -> float:
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else math.nan


def _positive_or_nan(values: np.ndarray) -> np.ndarray:
  return np.where(values > 0, values, np.nan)


def _centred_mean(values: np.ndarray, window: int) -> np.ndarray:
  """Moving average over a centred window, shrunk at the ends; NaNs are skipped."""
  half = window // 2
  finite = np.isfinite(values)
  sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
  counts = np.concatenate([[0], np.cumsum(finite)])
  index = np.arange(values.size)
  lo, hi = np.maximum(index - half, 0), np.minimum(index + half + 1, values.size)
  count = counts[hi] - counts[lo]
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, (sums[hi] - sums[lo]) / np.maximum(count, 1), np.nan)


def _method_legend(
  figure: Figure,
  names: Sequence[str],
  styles: Mapping[str, tuple[str, str]],
  *,
  linestyle: str = '-',
) -> None:
  handles = [
    Line2D(
      [], [], color=styles[n][0], marker=styles[n][1], linestyle=linestyle, markersize=6, label=n
    )
    for n in names
  ]
  figure.legend(
    handles=handles,
    loc='outside lower center',
    ncol=min(len(names), 8),
    title='method',
    title_fontsize=9,
  )


def _place_point_labels(
  figure: Figure,
  ax,
  points: Sequence[tuple[float, float]],
  labels: Sequence[str],
  colors: Sequence[str],
) -> None:
  """Labels scatter points, choosing offsets that avoid other labels, markers and the frame.

  Greedy: each label tries offsets around its point at growing radii and keeps the first whose
  box stays inside the axes and clear of every marker and earlier label.
  """
  figure.canvas.draw()  # settles the layout so data->pixel transforms are final.
  renderer = figure.canvas.get_renderer()
  frame = ax.get_window_extent(renderer)
  pixels = ax.transData.transform(np.asarray(points, dtype=np.float64))
  half = 6.0 * DPI / 72.0  # half the marker size (s=80 points² → ~9 pt wide), plus a margin
  obstacles = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in pixels]
  directions = [
    (1, 1, 'left', 'bottom'),
    (1, -1, 'left', 'top'),
    (-1, 1, 'right', 'bottom'),
    (-1, -1, 'right', 'top'),
    (0, 1, 'center', 'bottom'),
    (0, -1, 'center', 'top'),
    (1, 0, 'left', 'center'),
    (-1, 0, 'right', 'center'),
  ]
  for point, label, color in zip(points, labels, colors):
    placed = None
    for radius in (9, 18, 30, 44):
      for dx, dy, ha, va in directions:
        annotation = ax.annotate(
          label,
          point,
          xytext=(dx * radius, dy * radius),
          textcoords='offset points',
          ha=ha,
          va=va,
          fontsize=9,
          fontweight='bold',
          color=color,
          zorder=6,
          path_effects=_HALO,
          arrowprops=None
          if radius < 18
          else dict(arrowstyle='-', color=color, lw=0.7, shrinkA=0, shrinkB=4),
        )
        box = annotation.get_window_extent(renderer)
        inside = (
          box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
        )
        # Only the text box matters for collisions; a leader line may cross a marker.
        text_box = matplotlib.text.Text.get_window_extent(annotation, renderer)
        if inside and not any(text_box.overlaps(o) for o in obstacles):
          placed = annotation
          obstacles.append(text_box.padded(2))
          break
        annotation.remove()
      if placed is not None:
        break
    if placed is None:
      annotation = ax.annotate(
        label,
        point,
        xytext=(9, 9),
        textcoords='offset points',
        fontsize=9,
        fontweight='bold',
        color=color,
        zorder=6,
        path_effects=_HALO,
      )
      obstacles.append(matplotlib.text.Text.get_window_extent(annotation, renderer))


def _error_bar(entry: Mapping[str, Any], key: str, value: float) -> np.ndarray | None:
  """``[[below], [above]]`` distances from ``value`` to the ends of the entry's ``key`` interval
  (``entry['intervals'][key]``), for ``errorbar``; ``None`` without an interval."""
  interval = (entry.get('intervals') or {}).get(key)
  if interval is None:
    return None
  lo, hi = float(interval[0]), float(interval[1])
  if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(value)):
    return None
  return np.array([[max(value - lo, 0.0)], [max(hi - value, 0.0)]])


def plot_stability_plasticity(
  base: Mapping[str, Any],
  methods: Mapping[str, Mapping[str, Any]],
  path: str | os.PathLike,
  *,
  target_task: str | None = None,
) -> str:
  """General vs Target scores: the stability–plasticity plane.

  The base model is a star; each method is a point joined to the base by an arrow, with its 95%
  intervals of General and Target as error bars when the entries have them. Dashed lines
  through the base split the plane: right of the vertical line a method lost no general score,
  above the horizontal line it gained on the target. The top axis reads the same x position as
  forgetting, Forget = (General_base − General) × 100 points, so vertical lines are iso-forget
  lines.

  Args:
    base: ``{"target": float, "general": float, ...}`` of the base model.
    methods: ``{name: {"target": float, "general": float, ...}}``.
    path: output PNG path.
    target_task: name of the target domain, for the y-axis label.

  Returns:
    `path`.
  """
  _require_any(methods, 'score')
  styles = method_styles(list(methods))
  # A method whose score is NaN (evaluation failed) has no place on the plane.
  names = [
    n
    for n in methods
    if math.isfinite(float(methods[n]['general'])) and math.isfinite(float(methods[n]['target']))
  ]
  base_general, base_target = float(base['general']), float(base['target'])
  xs = np.array([float(methods[n]['general']) for n in names])
  ys = np.array([float(methods[n]['target']) for n in names])
  with matplotlib.rc_context(_RC):
    figure = _new_figure(9.0, 6.6)
    ax = figure.add_subplot()
    all_x, all_y = np.append(xs, base_general), np.append(ys, base_target)
    # The axes hold the error bars too.
    for entry in [base, *(methods[n] for n in names)]:
      for key, into in (('general', 'x'), ('target', 'y')):
        interval = (entry.get('intervals') or {}).get(key)
        if interval is not None:
          ends = np.asarray(interval, dtype=np.float64)
          if into == 'x':
            all_x = np.append(all_x, ends)
          else:
            all_y = np.append(all_y, ends)
    all_x, all_y = all_x[np.isfinite(all_x)], all_y[np.isfinite(all_y)]
    span_x = max(np.ptp(all_x), 0.02)
    span_y = max(np.ptp(all_y), 0.02)
    x_lo, x_hi = all_x.min() - 0.16 * span_x, all_x.max() + 0.16 * span_x
    y_lo, y_hi = all_y.min() - 0.14 * span_y, all_y.max() + 0.14 * span_y
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.fill_between(
      [base_general, x_hi],
      [base_target] * 2,
      [y_hi] * 2,
      color='#2ca02c',
      alpha=0.07,
      zorder=0,
      linewidth=0,
    )
    ax.annotate(
      'target gain,\nno forgetting',
      (x_hi, y_hi),
      xytext=(-5, -5),
      textcoords='offset points',
      ha='right',
      va='top',
      fontsize=8.5,
      style='italic',
      color='#2b7a2b',
    )
    ax.axvline(base_general, color='0.45', linestyle='--', linewidth=0.9, zorder=1)
    ax.axhline(base_target, color='0.45', linestyle='--', linewidth=0.9, zorder=1)
    for name, x, y in zip(names, xs, ys):
      color, marker = styles[name]
      x_err, y_err = _error_bar(methods[name], 'general', x), _error_bar(methods[name], 'target', y)
      if x_err is not None or y_err is not None:
        ax.errorbar(
          [x],
          [y],
          xerr=x_err,
          yerr=y_err,
          fmt='none',
          ecolor=color,
          alpha=0.6,
          lw=1.0,
          capsize=2.5,
          zorder=3,
        )
      ax.annotate(
        '',
        xy=(x, y),
        xytext=(base_general, base_target),
        zorder=2,
        arrowprops=dict(
          arrowstyle='-|>', color=color, alpha=0.45, lw=1.1, shrinkA=9, shrinkB=6, mutation_scale=11
        ),
      )
      ax.scatter(
        [x], [y], s=80, color=color, marker=marker, edgecolor='black', linewidth=0.6, zorder=4
      )
    base_x_err = _error_bar(base, 'general', base_general)
    base_y_err = _error_bar(base, 'target', base_target)
    if base_x_err is not None or base_y_err is not None:
      ax.errorbar(
        [base_general],
        [base_target],
        xerr=base_x_err,
        yerr=base_y_err,
        fmt='none',
        ecolor='0.35',
        alpha=0.7,
        lw=1.0,
        capsize=2.5,
        zorder=3,
      )
    ax.scatter(
      [base_general],
      [base_target],
      s=320,
      marker='*',
      color='#ffd700',
      edgecolor='black',
      linewidth=0.9,
      zorder=5,
    )
    ax.set_xlabel('General score (held-out capabilities)  →  more stable')
    target_name = f' ({target_task})' if target_task else ''
    ax.set_ylabel(f'Target score{target_name}  →  more plastic')
    ax.set_title('Stability–plasticity plane')
    top = ax.secondary_xaxis(
      'top', functions=(lambda g: (base_general - g) * 100.0, lambda f: base_general - f / 100.0)
    )
    top.set_xlabel('Forget (points) = (General_base − General) × 100')
    _place_point_labels(
      figure,
      ax,
      [(base_general, base_target), *zip(xs, ys)],
      ['base', *names],
      ['black', *[styles[n][0] for n in names]],
    )
    return _save(figure, path)


def plot_paths(
  methods: Mapping[str, Mapping[str, Any]],
  path: str | os.PathLike,
  *,
  base: Mapping[str, Any] | None = None,
) -> str:
  """Interpolation (solid) and rewinding (dashed) curves, one small panel per method.

  Each panel plots the target and general scores against α, the position on the path from the
  base (α = 0) to the fine-tuned model (α = 1). Interpolation scales ΔW; rewinding follows the
  method's own path (additive, or the scaled Cayley generator for OFT).

  Args:
    methods: ``{name: {"interpolation": {"alpha", "target", "general"}, "rewind": {...,
      "kind"}}}``; methods with neither are skipped.
    path: output PNG path.
    base: optional base scores, drawn as dotted reference lines.

  Returns:
    `path`.
  """
  names = [
    n
    for n, m in methods.items()
    if m.get('interpolation') is not None or m.get('rewind') is not None
  ]
  _require_any(names, 'interpolation or rewind')
  columns = min(4, len(names))
  rows = math.ceil(len(names) / columns)
  with matplotlib.rc_context(_RC):
    figure = _new_figure(2.8 * columns + 0.5, 2.6 * rows + 1.0)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for index, ax in enumerate(axes.flat):
      if index >= len(names):
        ax.set_visible(False)
        continue
      name = names[index]
      method = methods[name]
      title = name
      for key, linestyle in (('interpolation', '-'), ('rewind', '--')):
        curve = method.get(key)
        if curve is None:
          continue
        alpha = _as_array(curve['alpha'])
        order = np.argsort(alpha)
        ax.plot(
          alpha[order],
          _as_array(curve['target'])[order],
          linestyle=linestyle,
          color=_TARGET_COLOR,
          marker='o',
          markersize=3.5,
          linewidth=1.6,
        )
        ax.plot(
          alpha[order],
          _as_array(curve['general'])[order],
          linestyle=linestyle,
          color=_GENERAL_COLOR,
          marker='s',
          markersize=3.5,
          linewidth=1.6,
        )
        if key == 'rewind':
          title = f'{name} (rewind: {curve["kind"]})'
      if base is not None:
        ax.axhline(
          float(base['target']), color=_TARGET_COLOR, linestyle=':', linewidth=0.9, alpha=0.7
        )
        ax.axhline(
          float(base['general']), color=_GENERAL_COLOR, linestyle=':', linewidth=0.9, alpha=0.7
        )
      ax.set_title(title, fontsize=10)
      if index // columns == rows - 1 or index + columns >= len(names):
        ax.set_xlabel('α (0 = base, 1 = fine-tuned)')
        ax.tick_params(labelbottom=True)
      if index % columns == 0:
        ax.set_ylabel('score')
    handles = [
      Line2D([], [], color=_TARGET_COLOR, marker='o', markersize=4, label='target, interpolation'),
      Line2D(
        [],
        [],
        color=_TARGET_COLOR,
        marker='o',
        markersize=4,
        linestyle='--',
        label='target, rewind',
      ),
      Line2D(
        [], [], color=_GENERAL_COLOR, marker='s', markersize=4, label='general, interpolation'
      ),
      Line2D(
        [],
        [],
        color=_GENERAL_COLOR,
        marker='s',
        markersize=4,
        linestyle='--',
        label='general, rewind',
      ),
    ]
    if base is not None:
      handles.append(Line2D([], [], color='0.4', linestyle=':', label='base score'))
    figure.legend(handles=handles, loc='outside lower center', ncol=len(handles))
    figure.suptitle('Interpolation and rewinding paths', fontweight='bold')
    return _save(figure, path)


def plot_spectra(methods: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> str:
  """Retention and update-energy profiles of the analysed module, one line per method.

  Left: the retention profile ΔP_diag(i) = |u_iᵀ ΔW v_i| against the singular index i of the
  pretrained weight W0 = U diag(σ) Vᵀ. Right: the update-energy share E_Δ(i) / Σ_j E_Δ(j), with
  E_Δ(i) = ‖ΔW v_i‖₂. The y axes are logarithmic when the values span more than 1.5 decades.

  Args:
    methods: ``{name: {"spectral": {"module", "retention", "energy", "summary"}}}``; methods
      without spectral data are skipped.
    path: output PNG path.

  Returns:
    `path`.
  """
  spectral = _with_key(methods, 'spectral')
  _require_any(spectral, 'spectral')
  names = list(spectral)
  styles = method_styles(list(methods))
  modules = sorted({s['module'] for s in spectral.values()})
  with matplotlib.rc_context(_RC):
    figure = _new_figure(12.0, 4.9)
    retention_ax, energy_ax = figure.subplots(1, 2)
    retention = {n: _as_array(spectral[n]['retention']) for n in names}
    energy = {}
    for n in names:
      values = _as_array(spectral[n]['energy'])
      total = np.nansum(values)
      energy[n] = values / total if total > 0 else values
    for ax, profile in ((retention_ax, retention), (energy_ax, energy)):
      log = _use_log_scale(list(profile.values()))
      for n in names:
        values = _positive_or_nan(profile[n]) if log else profile[n]
        color, marker = styles[n]
        index = np.arange(values.size)
        ax.plot(
          index,
          values,
          color=color,
          linewidth=1.4,
          marker=marker if values.size <= 40 else None,
          markersize=3.5,
          markevery=1,
        )
      if log:
        ax.set_yscale('log')
      ax.set_xlabel('singular index i of W0 (largest σ first)')
    retention_ax.set_ylabel('ΔP_diag(i) = |u_iᵀ ΔW v_i|')
    retention_ax.set_title('Retention profile')
    energy_ax.set_ylabel('share of update energy  E_Δ(i) / Σ_j E_Δ(j)')
    energy_ax.set_title('Update-energy profile, E_Δ(i) = ‖ΔW v_i‖')
    figure.suptitle(f'Weight spectra of {", ".join(modules)}', fontweight='bold')
    _method_legend(figure, names, styles)
    return _save(figure, path)


def plot_activation_geometry(
  methods: Mapping[str, Mapping[str, Any]], path: str | os.PathLike
) -> str:
  """Linear CKA, Procrustes residual and Gram distortion per layer, one line per method.

  All three compare the activations of the base model (X0) and the fine-tuned model (X1) on the
  same general prompts: CKA is a similarity (1 = same up to rotation and scale), the Procrustes
  residual and the Gram distortion are distances (0 = unchanged).

  Args:
    methods: ``{name: {"activation": {"layers", "cka", "procrustes", "gram"}}}``; methods
      without activation data are skipped.
    path: output PNG path.

  Returns:
    `path`.
  """
  activation = _with_key(methods, 'activation')
  _require_any(activation, 'activation')
  names = list(activation)
  styles = method_styles(list(methods))
  panels = (
    ('cka', 'Linear CKA (X0, X1)', 'higher = more similar'),
    ('procrustes', 'Procrustes residual', 'lower = more similar'),
    ('gram', 'Gram (cosine) distortion', 'lower = more similar'),
  )
  all_layers = sorted({int(l) for a in activation.values() for l in a['layers']})
  with matplotlib.rc_context(_RC):
    figure = _new_figure(12.0, 4.6)
    axes = figure.subplots(1, 3)
    for ax, (key, title, hint) in zip(axes, panels):
      for n in names:
        color, marker = styles[n]
        ax.plot(
          [int(l) for l in activation[n]['layers']],
          _as_array(activation[n][key]),
          color=color,
          marker=marker,
          markersize=5,
          linewidth=1.4,
        )
      ax.set_title(title)
      ax.set_xlabel('layer')
      ax.set_ylabel(f'{key} ({hint})')
      if len(all_layers) <= 16:
        ax.set_xticks(all_layers)
    figure.suptitle('Activation geometry, base vs fine-tuned', fontweight='bold')
    _method_legend(figure, names, styles)
    return _save(figure, path)


def plot_csd(methods: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> str:
  """Capability-conditioned drift: CSD on general vs target inputs.

  Left: one point per (method, module), CSD on general-prompt inputs (x) against CSD on
  target-prompt inputs (y), with the line y = x; points below it move general inputs more than
  target inputs. Right: the mean over modules of the ratio CSD_G / CSD_T per method.

  Args:
    methods: ``{name: {"csd": {"modules", "general", "target", "ratio"}}}``; methods without CSD
      data are skipped.
    path: output PNG path.

  Returns:
    `path`.
  """
  csd = _with_key(methods, 'csd')
  _require_any(csd, 'CSD')
  names = list(csd)
  styles = method_styles(list(methods))
  with matplotlib.rc_context(_RC):
    figure = _new_figure(12.0, 5.2)
    scatter_ax, ratio_ax = figure.subplots(1, 2, width_ratios=(1.15, 1.0))
    general = {n: _as_array(csd[n]['general']) for n in names}
    target = {n: _as_array(csd[n]['target']) for n in names}
    log = _use_log_scale(list(general.values()) + list(target.values()), min_decades=1.0)
    for n in names:
      color, marker = styles[n]
      scatter_ax.scatter(
        general[n],
        target[n],
        s=42,
        color=color,
        marker=marker,
        edgecolor='black',
        linewidth=0.4,
        alpha=0.9,
        zorder=3,
      )
    values = np.concatenate(list(general.values()) + list(target.values()))
    values = values[np.isfinite(values) & ((values > 0) if log else True)]
    lo, hi = (values.min(), values.max()) if values.size else (0.0, 1.0)
    if log:
      scatter_ax.set_xscale('log')
      scatter_ax.set_yscale('log')
      lo, hi = lo / 1.6, hi * 1.6
    else:
      pad = 0.06 * (hi - lo or 1.0)
      lo, hi = lo - pad, hi + pad
    scatter_ax.plot([lo, hi], [lo, hi], color='0.3', linestyle='--', linewidth=1.0, zorder=2)
    scatter_ax.text(
      hi, hi, 'y = x ', ha='right', va='bottom', fontsize=8.5, color='0.3', rotation=0
    )
    scatter_ax.set_xlim(lo, hi)
    scatter_ax.set_ylim(lo, hi)
    scatter_ax.annotate(
      'acts more on\ntarget inputs',
      (0.03, 0.97),
      xycoords='axes fraction',
      ha='left',
      va='top',
      fontsize=8.5,
      style='italic',
      color='0.35',
    )
    scatter_ax.annotate(
      'acts more on\ngeneral inputs',
      (0.97, 0.03),
      xycoords='axes fraction',
      ha='right',
      va='bottom',
      fontsize=8.5,
      style='italic',
      color='0.35',
    )
    scatter_ax.set_xlabel('CSD on general inputs')
    scatter_ax.set_ylabel('CSD on target inputs')
    scatter_ax.set_title('CSD per module: general vs target')

    means = np.array([_finite_mean(_as_array(csd[n]['ratio'])) for n in names])
    positions = np.arange(len(names))
    ratio_ax.bar(
      positions,
      means,
      color=[styles[n][0] for n in names],
      edgecolor='black',
      linewidth=0.5,
      zorder=3,
    )
    if _use_log_scale([means], min_decades=1.0):
      ratio_ax.set_yscale('log')
    ratio_ax.axhline(1.0, color='0.3', linestyle='--', linewidth=1.0, zorder=2)
    ratio_ax.set_xticks(
      positions,
      names,
      rotation=30 if max(map(len, names)) > 5 else 0,
      ha='right' if max(map(len, names)) > 5 else 'center',
    )
    ratio_ax.grid(axis='x', visible=False)
    ratio_ax.set_ylabel('mean over modules of CSD_G / CSD_T')
    ratio_ax.set_title('General / target ratio (1 = no preference)')
    figure.suptitle('Capability-conditioned drift (CSD)', fontweight='bold')
    _method_legend(figure, names, styles, linestyle='none')
    return _save(figure, path)


def plot_disel_gates(gates: Mapping[str, Any], path: str | os.PathLike) -> str:
  """DISeL mean gate per module and rank component, on general vs target prompts.

  Left and middle panels share one colour scale: the token-averaged gate ḡ_{m,i}(D) of rank
  component i in module m, on general and on target prompts. The right panel is the selectivity
  ḡ(target) − ḡ(general), on a diverging scale centred at 0.

  Args:
    gates: ``{"layers": [module names], "general": [[per-rank mean gate]], "target": [[...]]}``.
    path: output PNG path.

  Returns:
    `path`.
  """
  modules = list(gates['layers'])
  general = _as_array(gates['general'])
  target = _as_array(gates['target'])
  if general.shape != target.shape or general.ndim != 2:
    raise ValueError(
      f'gate matrices must be [modules, rank] of one shape; got general '
      f'{general.shape} and target {target.shape}'
    )
  difference = target - general
  rows, rank = general.shape
  with matplotlib.rc_context(_RC):
    figure = _new_figure(
      min(13.0, max(11.5, 0.3 * rank * 3 + 4.5)), min(14.0, max(3.6, 0.32 * rows + 2.0))
    )
    axes = figure.subplots(1, 3, sharey=True)
    finite = np.concatenate([general[np.isfinite(general)], target[np.isfinite(target)]])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
      vmax = vmin + 1e-6
    image = None
    for ax, data, title in (
      (axes[0], general, 'general prompts'),
      (axes[1], target, 'target prompts'),
    ):
      image = ax.imshow(
        data, aspect='auto', cmap='viridis', vmin=vmin, vmax=vmax, interpolation='nearest'
      )
      ax.set_title(f'mean gate ḡ, {title}')
    bound = float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 1.0
    bound = bound or 1e-6
    selectivity = axes[2].imshow(
      difference,
      aspect='auto',
      cmap='RdBu_r',
      interpolation='nearest',
      norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
    )
    axes[2].set_title('selectivity ḡ(target) − ḡ(general)')
    step = max(1, math.ceil(rank / 16))
    for ax in axes:
      ax.grid(False)
      ax.set_xticks(np.arange(0, rank, step))
      ax.set_xlabel('rank component i')
    axes[0].set_yticks(np.arange(rows), [short_module_name(m) for m in modules])
    axes[0].set_ylabel('module')
    figure.colorbar(image, ax=axes[:2].tolist(), shrink=0.9, pad=0.02, label='mean gate ḡ')
    figure.colorbar(selectivity, ax=axes[2], shrink=0.9, pad=0.02, label='Δ mean gate')
    figure.suptitle('DISeL gates by module and rank component', fontweight='bold')
    return _save(figure, path)


def plot_capability_drift(drift: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Capability-drift matrix: realized gain Δ = score(adapter) − score(base) per task.

  Rows are adapters (labelled with their nominal label), columns tasks; the colour map diverges
  at 0 (blue = gain, red = loss) and every cell is annotated. Flagged adapters get a red tick
  label prefixed with ⚑.

  Args:
    drift: ``{"adapters", "labels", "tasks", "delta": [[adapter x task]], "flagged"}``.
    path: output PNG path.

  Returns:
    `path`.
  """
  adapters, tasks = list(drift['adapters']), list(drift['tasks'])
  delta = _as_array(drift['delta'])
  if delta.shape != (len(adapters), len(tasks)):
    raise ValueError(
      f'drift delta must be [{len(adapters)} adapters, {len(tasks)} tasks], got {delta.shape}'
    )
  flagged = set(drift.get('flagged') or {})
  labels = drift.get('labels') or {}
  bound = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1.0
  bound = bound or 1e-6
  with matplotlib.rc_context(_RC):
    figure = _new_figure(
      min(13.0, max(7.5, 1.05 * len(tasks) + 4.2)), min(14.0, max(3.4, 0.5 * len(adapters) + 2.0))
    )
    ax = figure.add_subplot()
    ax.grid(False)
    image = ax.imshow(
      delta,
      aspect='auto',
      cmap='RdBu',
      norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
      interpolation='nearest',
    )
    fontsize = 9 if len(tasks) <= 8 else 7.5 if len(tasks) <= 14 else 6
    for row in range(delta.shape[0]):
      for col in range(delta.shape[1]):
        value = delta[row, col]
        text = 'n/a' if not np.isfinite(value) else f'{value:+.3f}'
        dark = np.isfinite(value) and abs(value) > 0.55 * bound
        ax.text(
          col,
          row,
          text,
          ha='center',
          va='center',
          fontsize=fontsize,
          color='white' if dark else 'black',
        )
    long_task = max(map(len, tasks)) > 6
    ax.set_xticks(
      np.arange(len(tasks)),
      tasks,
      rotation=35 if long_task else 0,
      ha='right' if long_task else 'center',
      rotation_mode='anchor',
    )
    tick_labels = []
    for adapter in adapters:
      label = f' [{labels[adapter]}]' if adapter in labels else ''
      tick_labels.append(
        f'{FLAG_MARK} {adapter}{label}' if adapter in flagged else f'{adapter}{label}'
      )
    ax.set_yticks(np.arange(len(adapters)), tick_labels)
    for tick, adapter in zip(ax.get_yticklabels(), adapters):
      if adapter in flagged:
        tick.set_color('#c00000')
        tick.set_fontweight('bold')
    ax.set_xlabel('task')
    ax.set_ylabel('adapter [nominal label]')
    ax.set_title(f'Capability drift: Δ score vs base ({FLAG_MARK} = flagged)')
    figure.colorbar(image, ax=ax, shrink=0.9, pad=0.02, label='Δ score (adapter − base)')
    return _save(figure, path)


def plot_training_loss(methods: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> str:
  """Training loss per step, one line per method.

  Long curves (more than 30 steps) show the raw loss faintly and a centred moving average
  (window about 1/15 of the run, so the smoothed curve does not lag) on top. The y axis is
  logarithmic when the losses span more than 1.5 decades.

  Args:
    methods: ``{name: {"train_loss": [float per step]}}``; methods without a loss are skipped.
    path: output PNG path.

  Returns:
    `path`.
  """
  losses = {n: _as_array(v) for n, v in _with_key(methods, 'train_loss').items()}
  _require_any(losses, 'train_loss')
  names = list(losses)
  styles = method_styles(list(methods))
  with matplotlib.rc_context(_RC):
    figure = _new_figure(10.5, 4.8)
    ax = figure.add_subplot()
    for n in names:
      color, _ = styles[n]
      values = losses[n]
      steps = np.arange(1, values.size + 1)
      if values.size > 30:
        ax.plot(steps, values, color=color, alpha=0.22, linewidth=0.8)
        smoothed = _centred_mean(values, max(3, values.size // 15))
        ax.plot(steps, smoothed, color=color, linewidth=1.7, label=n)
      else:
        ax.plot(
          steps, values, color=color, linewidth=1.7, marker=styles[n][1], markersize=3.5, label=n
        )
    if _use_log_scale(list(losses.values())):
      ax.set_yscale('log')
    ax.set_xlabel('training step')
    ax.set_ylabel('training loss (cross-entropy)')
    ax.set_title(
      'Training loss (raw faint, centred moving average solid)'
      if max(v.size for v in losses.values()) > 30
      else 'Training loss'
    )
    figure.legend(loc='outside right upper', title='method', title_fontsize=9)
    return _save(figure, path)


def plot_lr_sweep(methods: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> str:
  """Validation Target (left) and General (right) against the learning rate, one line per method.

  The learning-rate axis is logarithmic; a ring marks each method's chosen learning rate. With
  per-seed Targets (``target_by_seed``) the band spans their min and max at each learning rate.

  Args:
    methods: ``{name: {"sweep": {"lr", "target", "general" (optional), "chosen_lr",
      "target_by_seed" (optional), ...}}}``; methods without a sweep are skipped.
    path: output PNG path.

  Returns:
    `path`.
  """
  sweeps = _with_key(methods, 'sweep')
  _require_any(sweeps, 'sweep')
  names = list(sweeps)
  styles = method_styles(list(methods))
  with matplotlib.rc_context(_RC):
    figure = _new_figure(11.0, 4.6)
    axes = figure.subplots(1, 2, sharex=True)
    for ax, key, title in (
      (axes[0], 'target', 'Validation Target'),
      (axes[1], 'general', 'Validation General'),
    ):
      drawn = False
      for n in names:
        sweep = sweeps[n]
        if sweep.get(key) is None:
          continue
        color, marker = styles[n]
        lrs = _as_array(sweep['lr'])
        order = np.argsort(lrs)
        values = _as_array(sweep[key])
        ax.plot(lrs[order], values[order], color=color, marker=marker, markersize=5, linewidth=1.5)
        if key == 'target' and sweep.get('target_by_seed') is not None:
          by_seed = _as_array(sweep['target_by_seed'])
          ax.fill_between(
            lrs[order],
            np.nanmin(by_seed, axis=0)[order],
            np.nanmax(by_seed, axis=0)[order],
            color=color,
            alpha=0.15,
            linewidth=0,
          )
        chosen = float(sweep['chosen_lr'])
        at = int(np.argmin(np.abs(np.log(lrs) - math.log(chosen)))) if chosen > 0 else 0
        if chosen > 0 and math.isclose(lrs[at], chosen, rel_tol=1e-6):
          ax.scatter(
            [chosen],
            [values[at]],
            s=190,
            facecolors='none',
            edgecolors=color,
            linewidths=1.8,
            zorder=5,
          )
        else:
          ax.axvline(chosen, color=color, linestyle=':', linewidth=1.0)
        drawn = True
      if not drawn:
        ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
      ax.set_xscale('log')
      ax.set_xlabel('learning rate (log scale)')
      ax.set_ylabel(f'{key} score (validation)')
      ax.set_title(title)
    figure.suptitle(
      'Learning-rate sweep (ring = chosen; band = min–max over seeds)', fontweight='bold'
    )
    _method_legend(figure, names, styles)
    return _save(figure, path)


def plot_trajectory(methods: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> str:
  """Training trajectories: distance from the base, CKA to the base, Target and General vs
  step, one line per method (four panels).

  Args:
    methods: ``{name: {"trajectory": {"step", "distance", "cka", "target", "general"}}}``;
      methods without a trajectory are skipped.
    path: output PNG path.

  Returns:
    `path`.
  """
  trajectories = _with_key(methods, 'trajectory')
  _require_any(trajectories, 'trajectory')
  names = list(trajectories)
  styles = method_styles(list(methods))
  panels = (
    ('distance', 'Relative distance from base', '‖θ − θ0‖ / ‖θ0‖'),
    ('cka', 'Mean CKA to base over layers', 'CKA (1 = unchanged)'),
    ('target', 'Target', 'target score'),
    ('general', 'General', 'general score'),
  )
  with matplotlib.rc_context(_RC):
    figure = _new_figure(11.0, 7.6)
    axes = figure.subplots(2, 2, sharex=True)
    for ax, (key, title, label) in zip(axes.flat, panels):
      for n in names:
        color, marker = styles[n]
        steps = _as_array(trajectories[n]['step'])
        order = np.argsort(steps)
        ax.plot(
          steps[order],
          _as_array(trajectories[n][key])[order],
          color=color,
          marker=marker,
          markersize=4,
          linewidth=1.5,
        )
      ax.set_title(title)
      ax.set_ylabel(label)
    for ax in axes[1]:
      ax.set_xlabel('training step')
    figure.suptitle('Trajectories during training', fontweight='bold')
    _method_legend(figure, names, styles)
    return _save(figure, path)
