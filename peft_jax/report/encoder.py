"""The encoder study's report: the stability–plasticity plane of a sentence encoder, a table per
method, the gates of gated methods, training curves, the config and the machine.

``write_encoder_report(results, out_dir)`` writes ``index.md``, ``index.html`` and the PNGs.
It reuses the decoder report's document model (`peft_jax.report.document`), renderers and
figure helpers; every number comes from the results dict (built by the arena from its stage
outputs), formatted by `peft_jax.report.formatting`.

Results schema (every key required unless marked optional):

.. code-block:: text

  results = {
    "title": str, "created": str, "base_name": str,
    "task": {"name": str, "labels": [str], "num_train": int, "num_test": int, "chance": float},
    "general": {"num_texts": int},
    "base": {"accuracy": float, "interval": [lo, hi] | None},     # the base with its fresh head
    "probe": {"accuracy", "interval", "train_loss", "train_time_s", "trainable_params",
              "peak_lr"} | None,                       # optional: the head alone, frozen base
    "methods": {name: {
        "accuracy": float, "interval": [lo, hi] | None,           # test accuracy, 95% bootstrap
        "drift": {"cka", "procrustes", "gram", "similarity_spearman": float},  # general text
        "drift_intervals": {"similarity_spearman": [lo, hi] | None},  # bootstrap of the texts
        "trainable_params": int, "head_params": int, "total_params": int,
        "train_time_s": float, "num_compiles": int, "peak_lr": float, "steps": int,
        "train_loss": [float per step],
        "gain_over_probe": {"delta", "interval", "within_noise"}}},  # optional: paired bootstrap
    "gates": {name: {"layers": [module], "general": [[g per rank]], "target": [[...]]}},
    "excluded": {name: reason},
    "bootstrap": {"resamples": int, "seed": int, "confidence": float},
    "config": dict, "versions": {package: str}, "machine": {"cpu", "cores", "platform"},
    "timing": {"total_s": float, "stages": {stage: s}, "ran": [...], "reused": [...],
               "load_start": [1, 5, 15 min], "load_end": [...]},       # optional
  }

Sections (headings, in order): Summary, Stability–plasticity, Methods table, Gates, Training,
Configuration, Versions & timing.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np

from peft_jax.common.files import write_text
from peft_jax.report import document as doc
from peft_jax.report import figures as figs
from peft_jax.report import formatting as fmt
from peft_jax.report.html import render_html
from peft_jax.report.markdown import render_markdown

SECTIONS = (
  ('summary', 'Summary'),
  ('stability-plasticity', 'Stability–plasticity'),
  ('methods', 'Methods table'),
  ('gates', 'Gates'),
  ('training', 'Training'),
  ('configuration', 'Configuration'),
  ('versions-timing', 'Versions & timing'),
)
PLANE_FILE = 'stability_plasticity.png'
LOSS_FILE = 'training_loss.png'
DRIFT_KEYS = ('cka', 'procrustes', 'gram', 'similarity_spearman')
# x axes of the plane: (drift key, axis label). Both are 1 for the base itself.
RETENTION_AXES = (
  ('similarity_spearman', 'Spearman ρ of pairwise similarities vs base (general text)'),
  ('cka', 'linear CKA vs base (general text)'),
)


def gates_file(method: str) -> str:
  return f'gates_{re.sub(r"[^A-Za-z0-9_.-]", "_", method)}.png'


def validate(results: Mapping[str, Any]) -> None:
  """Raises ``KeyError`` naming the first missing key (``results['methods']['lora']['drift']``)."""

  def need(mapping, key, where):
    if not isinstance(mapping, Mapping) or key not in mapping:
      raise KeyError(f'encoder report: missing required key {where}[{key!r}]')
    return mapping[key]

  for key in ('title', 'created', 'base_name', 'task', 'general', 'base', 'methods', 'gates'):
    need(results, key, 'results')
  for key in ('name', 'labels', 'num_train', 'num_test', 'chance'):
    need(results['task'], key, "results['task']")
  need(results['base'], 'accuracy', "results['base']")
  if not results['methods']:
    raise KeyError("encoder report: results['methods'] is empty")
  for name, entry in results['methods'].items():
    where = f"results['methods'][{name!r}]"
    for key in (
      'accuracy',
      'interval',
      'drift',
      'drift_intervals',
      'trainable_params',
      'total_params',
      'train_time_s',
      'train_loss',
    ):
      need(entry, key, where)
    for key in DRIFT_KEYS:
      need(entry['drift'], key, where + "['drift']")
  for name, gates in results['gates'].items():
    for key in ('layers', 'general', 'target'):
      need(gates, key, f"results['gates'][{name!r}]")


# ---- figures -----------------------------------------------------------------------------------


def plot_plane(results: Mapping[str, Any], path: str) -> str:
  """Target accuracy against general-text retention, one panel per retention measure
  (`RETENTION_AXES`). The base (its fresh head) is the star at retention 1; error bars are the
  95% bootstrap intervals."""
  methods = results['methods']
  names = list(methods)
  styles = figs.method_styles(names)
  base = results['base']
  with matplotlib.rc_context(figs._RC):  # pylint: disable=protected-access
    figure = figs._new_figure(13.0, 5.8)  # pylint: disable=protected-access
    axes = figure.subplots(1, len(RETENTION_AXES), sharey=True)
    for ax, (key, label) in zip(axes, RETENTION_AXES):
      xs = [float(methods[n]['drift'][key]) for n in names]
      ys = [float(methods[n]['accuracy']) for n in names]
      for name, x, y in zip(names, xs, ys):
        color, marker = styles[name]
        entry = {
          'intervals': {
            'x': methods[name]['drift_intervals'].get(key),
            'y': methods[name]['interval'],
          }
        }
        x_err = figs._error_bar(entry, 'x', x)  # pylint: disable=protected-access
        y_err = figs._error_bar(entry, 'y', y)  # pylint: disable=protected-access
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
        ax.scatter(
          [x], [y], s=80, color=color, marker=marker, edgecolor='black', linewidth=0.6, zorder=4
        )
      anchor = results.get('probe') or base  # the frozen base: with its trained head if run
      base_y = float(anchor['accuracy'])
      base_entry = {'intervals': {'y': anchor.get('interval')}}
      base_err = figs._error_bar(base_entry, 'y', base_y)  # pylint: disable=protected-access
      ax.errorbar([1.0], [base_y], yerr=base_err, fmt='none', ecolor='0.35', lw=1.0, capsize=2.5)
      ax.scatter(
        [1.0],
        [base_y],
        s=320,
        marker='*',
        color='#ffd700',
        edgecolor='black',
        linewidth=0.9,
        zorder=5,
      )
      ax.axhline(float(results['task']['chance']), color='0.5', linestyle=':', linewidth=0.9)
      finite = [v for v in xs if math.isfinite(v)] + [1.0]
      lows = [methods[n]['drift_intervals'].get(key) for n in names]
      finite += [lo[0] for lo in lows if lo is not None and math.isfinite(lo[0])]
      span = max(1.0 - min(finite), 0.02)
      ax.set_xlim(1.0 - 1.15 * span, 1.0 + 0.12 * span)
      ax.set_xlabel(f'{label}  →  more stable')
      figs._place_point_labels(  # pylint: disable=protected-access
        figure,
        ax,
        [(1.0, base_y), *zip(xs, ys)],
        ['base + head' if results.get('probe') else 'base', *names],
        ['black', *[styles[n][0] for n in names]],
      )
    axes[0].set_ylabel(f'test accuracy ({results["task"]["name"]})  →  more plastic')
    figure.suptitle(
      'Stability–plasticity plane of the encoder (dotted: majority class)', fontweight='bold'
    )
    return figs._save(figure, path)  # pylint: disable=protected-access


def _draw(results: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  drawn = {'plane': plot_plane(results, os.path.join(out_dir, PLANE_FILE))}
  drawn['training_loss'] = figs.plot_training_loss(
    results['methods'], os.path.join(out_dir, LOSS_FILE)
  )
  for name, gates in results['gates'].items():
    drawn[f'gates_{name}'] = figs.plot_disel_gates(gates, os.path.join(out_dir, gates_file(name)))
  return drawn


# ---- sections ----------------------------------------------------------------------------------


def _ci(value: Any, interval: Any) -> str:
  return fmt.fmt_score_ci(value, interval)


def _summary(results: Mapping[str, Any]) -> list[doc.Block]:
  methods = results['methods']
  task = results['task']
  best = max(methods, key=lambda n: float(methods[n]['accuracy']))
  stable = max(methods, key=lambda n: float(methods[n]['drift']['similarity_spearman']))
  boot = results.get('bootstrap') or {}
  top, kept = methods[best], methods[stable]
  probe = results.get('probe')
  kept_rho = _ci(
    kept['drift']['similarity_spearman'], kept['drift_intervals'].get('similarity_spearman')
  )
  blocks: list[doc.Block] = [
    doc.Paragraph(
      f'{results["base_name"]} fine-tuned on {task["name"]} ({len(task["labels"])} classes, '
      f'{task["num_train"]} train / {task["num_test"]} test examples) with '
      f'{len(methods)} methods, each with the classification head trained in full beside it '
      f'(modules_to_save). Forgetting is measured without labels on '
      f'{results["general"]["num_texts"]} held-out general texts: the sentence embeddings of '
      "each fine-tuned model against the base model's (CKA, Procrustes residual, cosine-Gram "
      'distortion, and the Spearman correlation of all pairwise similarities).'
    ),
    doc.Bullets(
      (
        f'Highest test accuracy: {best}, {_ci(top["accuracy"], top["interval"])}'
        f' (majority class {fmt.fmt_score(task["chance"])}; base with its untrained head '
        f'{_ci(results["base"]["accuracy"], results["base"].get("interval"))}'
        + (
          f'; head alone on the frozen base {_ci(probe["accuracy"], probe.get("interval"))}).'
          if probe
          else ').'
        ),
        f'Most retained general-text geometry (similarity Spearman): {stable}, {kept_rho}.',
        f'Intervals are {int(100 * float(boot.get("confidence", 0.95)))}% percentile bootstrap '
        f'intervals ({boot.get("resamples", "?")} resamples of the test examples or of the '
        'general texts).',
      )
    ),
  ]
  for name, reason in (results.get('excluded') or {}).items():
    blocks.append(doc.Note('info', f'{name} was not run: {reason}.'))
  return blocks


def _plane(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[doc.Block]:
  star = (
    'the base encoder with only its head trained (the linear probe)'
    if results.get('probe')
    else 'the base with its fresh, untrained head'
  )
  return [
    doc.Paragraph(
      "y: test accuracy on the target task. x: how much of the base model's geometry of "
      f'general text survives, 1 for the base itself. The star is {star}: what the frozen '
      'features give. Up is plasticity, right is stability.'
    ),
    doc.Image(
      figures['plane'],
      'stability-plasticity plane',
      'Accuracy vs similarity Spearman (left) and vs CKA (right); bars: 95% bootstrap '
      'intervals of accuracy (test examples) and of the Spearman (general texts).',
    ),
  ]


def method_rows(results: Mapping[str, Any]) -> list[tuple[str, ...]]:
  """The methods table's rows (the numbers tests compare with the stage outputs)."""
  rows = []
  for name, m in results['methods'].items():
    d, di = m['drift'], m['drift_intervals']
    rows.append(
      (
        name,
        _ci(m['accuracy'], m['interval']),
        _ci(d['similarity_spearman'], di.get('similarity_spearman')),
        fmt.fmt_score(d['cka']),
        fmt.fmt_metric(d['procrustes']),
        fmt.fmt_metric(d['gram']),
        fmt.fmt_params(m['trainable_params']),
        fmt.fmt_percent(m['trainable_params'], m['total_params']),
        fmt.fmt_seconds(m['train_time_s']),
        _gain(m.get('gain_over_probe')),
      )
    )
  return rows


def _gain(difference: Any) -> str:
  """``+1.7 [-5.0, +8.3]`` points, ``(noise)`` when the interval holds 0; ``n/a`` without."""
  if not difference:
    return fmt.NOT_AVAILABLE
  text = fmt.fmt_points_ci(difference['delta'], difference['interval'], signed=True)
  return text + (' (noise)' if difference.get('within_noise') else '')


METHOD_COLUMNS = (
  'Method',
  'Accuracy [95% CI]',
  'Similarity Spearman [95% CI]',
  'CKA',
  'Procrustes',
  'Gram',
  'Trainable params',
  'Trainable %',
  'Train time',
  'Gain over probe (pts) [95% CI]',
)


def base_rows(results: Mapping[str, Any]) -> list[tuple[str, ...]]:
  """Rows of the frozen base: its fresh head, and its trained head (the probe) when run. The
  encoder is the base's, so the geometry columns are the identity's values."""
  unchanged = (fmt.fmt_score(1.0), fmt.fmt_score(1.0), fmt.fmt_metric(0.0), fmt.fmt_metric(0.0))
  base = results['base']
  rows = [('base (untrained head)', _ci(base['accuracy'], base.get('interval')), *unchanged,
           '0', fmt.fmt_percent(0, 1), fmt.NOT_AVAILABLE, fmt.NOT_AVAILABLE)]  # fmt: skip
  probe = results.get('probe')
  if probe:
    total = next(iter(results['methods'].values()))['total_params']
    rows.append(('base + head (probe)', _ci(probe['accuracy'], probe.get('interval')),
                 *unchanged, fmt.fmt_params(probe['trainable_params']),
                 fmt.fmt_percent(probe['trainable_params'], total),
                 fmt.fmt_seconds(probe['train_time_s']), 'reference'))  # fmt: skip
  return rows


def _methods(results: Mapping[str, Any]) -> list[doc.Block]:
  return [
    doc.Paragraph(
      'Accuracy on the test split; the four geometry columns compare sentence embeddings of '
      "the general texts with the base model's (Spearman and CKA: 1 = unchanged; Procrustes "
      'residual and Gram distortion: 0 = unchanged). Trainable parameters include the head '
      f'({fmt.fmt_params(next(iter(results["methods"].values())).get("head_params"))}). Train '
      'time includes the compilation of the step. The base rows keep the base encoder, so '
      'their geometry is unchanged by construction. Gain over probe: accuracy minus the '
      "probe's, in points, with a paired bootstrap interval over the same test examples; "
      '(noise) marks an interval that holds 0.'
    ),
    doc.Table(
      'methods-table',
      'Per method',
      METHOD_COLUMNS,
      tuple(base_rows(results) + method_rows(results)),
      ('l',) + ('r',) * (len(METHOD_COLUMNS) - 1),
    ),
  ]


def layer_means(gates: Mapping[str, Any]) -> dict[int, tuple[float, float]]:
  """``{layer: (mean gate on general, on target)}`` over the modules and rank components of
  each layer."""
  out: dict[int, list] = {}
  for module, general, target in zip(gates['layers'], gates['general'], gates['target']):
    match = re.search(r'layers_(\d+)', module)
    layer = int(match.group(1)) if match else -1
    out.setdefault(layer, [[], []])
    out[layer][0].extend(general)
    out[layer][1].extend(target)
  return {k: (float(np.mean(g)), float(np.mean(t))) for k, (g, t) in sorted(out.items())}


def _gates(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[doc.Block]:
  if not results['gates']:
    return [doc.Note('not-run', 'Not run: no method in this study has gates (has_gates).')]
  blocks: list[doc.Block] = [
    doc.Paragraph(
      'Methods with input-dependent gates: the mean gate of every rank component of every '
      'adapted module, over the real tokens of the general texts and of the target test '
      'texts.'
    )
  ]
  for name, gates in results['gates'].items():
    rows = tuple(
      (str(layer), fmt.fmt_metric(g), fmt.fmt_metric(t), fmt.fmt_metric(t - g))
      for layer, (g, t) in layer_means(gates).items()
    )
    blocks.append(
      doc.Table(
        f'gates-{name}',
        f'{name}: mean gate per layer',
        ('Layer', 'General', 'Target', 'Target − general'),
        rows,
        ('l', 'r', 'r', 'r'),
      )
    )
    blocks.append(
      doc.Image(
        figures[f'gates_{name}'],
        f'{name} gates',
        f'{name}: mean gate per module and rank component.',
      )
    )
  return blocks


def _training(results: Mapping[str, Any], figures: Mapping[str, str]) -> list[doc.Block]:
  rows = tuple(
    (
      name,
      str(m.get('steps', len(m['train_loss']))),
      fmt.fmt_lr(m.get('peak_lr')),
      fmt.fmt_metric(m['train_loss'][0]),
      fmt.fmt_metric(m['train_loss'][-1]),
      str(m.get('num_compiles', 'n/a')),
      fmt.fmt_seconds(m['train_time_s']),
    )
    for name, m in results['methods'].items()
  )
  probe = results.get('probe')
  if probe:
    loss = probe['train_loss']
    rows = ((
      'base + head (probe)', str(len(loss)), fmt.fmt_lr(probe['peak_lr']), fmt.fmt_metric(loss[0]),
      fmt.fmt_metric(loss[-1]), 'n/a', fmt.fmt_seconds(probe['train_time_s']),
    ),) + rows  # fmt: skip
  return [
    doc.Table(
      'training-table',
      'Training runs',
      ('Method', 'Steps', 'Peak lr', 'First loss', 'Last loss', 'Compiles', 'Time'),
      rows,
      ('l', 'r', 'r', 'r', 'r', 'r', 'r'),
    ),
    doc.Image(figures['training_loss'], 'training loss', 'Cross-entropy per step.'),
  ]


def _configuration(results: Mapping[str, Any]) -> list[doc.Block]:
  text = json.dumps(results.get('config', {}), indent=2, default=str, ensure_ascii=False)
  return [doc.Paragraph('The resolved configuration of the run.'), doc.Code('json', text)]


def _versions_timing(results: Mapping[str, Any]) -> list[doc.Block]:
  versions = results.get('versions') or {}
  blocks: list[doc.Block] = [
    doc.Table(
      'versions-table',
      'Package versions',
      ('Package', 'Version'),
      tuple((k, str(v)) for k, v in versions.items()),
      ('l', 'l'),
    ),
  ]
  machine = results.get('machine') or {}
  timing = results.get('timing')
  items = [f'{k}: {v}' for k, v in machine.items()]
  if timing is not None:
    for key, when in (('load_start', 'start'), ('load_end', 'end')):
      if timing.get(key):
        items.append(f'load average (1, 5, 15 min) at the {when}: {timing[key]}')
    if timing.get('reused'):
      items.append(f'{len(timing["reused"])} stages reused from an earlier run')
  if items:
    blocks.append(doc.Bullets(tuple(items)))
  if timing is not None:
    stages = timing['stages']
    total = float(sum(stages.values()))
    reused = set(timing.get('reused') or ())
    rows = [
      (stage, fmt.fmt_seconds(s), fmt.fmt_percent(s, total), 'yes' if stage in reused else '')
      for stage, s in stages.items()
    ]
    rows.append(('sum of the stages', fmt.fmt_seconds(total), fmt.fmt_percent(total, total), ''))
    rows.append(('this run, wall', fmt.fmt_seconds(timing['total_s']), '', ''))
    blocks.append(
      doc.Table(
        'timing-table',
        'Wall time per stage (a reused stage shows the time it took when computed)',
        ('Stage', 'Time', 'Share', 'Reused'),
        tuple(rows),
        ('l', 'r', 'r', 'l'),
      )
    )
  return blocks


def build_encoder_document(results: Mapping[str, Any], figures: Mapping[str, str]) -> doc.Document:
  bodies = {
    'summary': _summary(results),
    'stability-plasticity': _plane(results, figures),
    'methods': _methods(results),
    'gates': _gates(results, figures),
    'training': _training(results, figures),
    'configuration': _configuration(results),
    'versions-timing': _versions_timing(results),
  }
  sections = tuple(doc.Section(a, t, tuple(bodies[a])) for a, t in SECTIONS)
  subtitle = (
    f'Created {results["created"]} · {results["base_name"]} · '
    f'target {results["task"]["name"]} · {len(results["methods"])} methods'
  )
  return doc.Document(results['title'], subtitle, sections)


def write_encoder_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
  """Writes ``index.html``, ``index.md`` and the PNGs of the encoder study into ``out_dir``.

  Returns:
    ``{'html': path, 'markdown': path, <figure>: path, ...}``.
  Raises:
    KeyError: a required results key is missing (named).
  """
  validate(results)
  out_dir = os.path.abspath(os.fspath(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  drawn = _draw(results, out_dir)
  keep = {os.path.basename(p) for p in drawn.values()}
  for entry in os.listdir(out_dir):  # figures of an earlier report this one does not draw
    if entry.endswith('.png') and entry not in keep:
      os.remove(os.path.join(out_dir, entry))
  document = build_encoder_document(results, {k: os.path.basename(p) for k, p in drawn.items()})
  paths = {
    'html': write_text(os.path.join(out_dir, 'index.html'), render_html(document)),
    'markdown': write_text(os.path.join(out_dir, 'index.md'), render_markdown(document)),
  }
  paths.update(drawn)
  return paths


__all__ = ['SECTIONS', 'build_encoder_document', 'method_rows', 'validate', 'write_encoder_report']
