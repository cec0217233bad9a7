"""The HTML report page and `write_report`, the one call that produces the whole report.

`write_report(results, out_dir)` validates the results dict, draws every figure whose data are
present, lays the report out once (`peft_jax.report.document`) and renders it twice: as
``index.html`` (self-contained apart from the PNGs beside it: inline CSS, no scripts, no fonts or
styles fetched from anywhere) and as ``index.md``. All files are written atomically.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from typing import Any

from peft_jax.common.files import write_text as atomic_write_text
from peft_jax.report import document as doc
from peft_jax.report import figures as figs
from peft_jax.report import markdown as md
from peft_jax.report import rlvr as rlvr_lib
from peft_jax.report import sae as sae_lib
from peft_jax.report.schema import validate_results

_CSS = """
:root { --ink: #1d2330; --muted: #5a6372; --line: #d9dee7; --band: #f5f7fa; --accent: #2456a6;
        --warn-bg: #fff6e0; --warn-line: #e0a800; --flag: #c00000; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.55 -apple-system, "Segoe UI", "Helvetica Neue", Arial, "DejaVu Sans",
             sans-serif; }
header { background: #1f2a44; color: #fff; padding: 22px 32px 18px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; }
header p { margin: 0; color: #c9d3e6; font-size: 14px; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
      padding: 8px 32px; font-size: 13.5px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap;
        line-height: 1.9; }
nav a:hover { text-decoration: underline; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { border-bottom: 1px solid var(--line); padding: 10px 0 22px; }
section:last-child { border-bottom: none; }
h2 { font-size: 21px; margin: 18px 0 10px; scroll-margin-top: 52px; }
p { margin: 8px 0 12px; max-width: 980px; }
figure { margin: 14px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
.table-wrap { overflow-x: auto; margin: 10px 0 18px; }
table { border-collapse: collapse; font-size: 14px; min-width: 360px; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 6px;
          color: var(--ink); }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--band); text-align: left; font-weight: 600;
     border-bottom: 2px solid #b8c0cc; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #fafbfd; }
tbody tr:hover td { background: #eef3fb; }
tr.flagged td { color: var(--flag); font-weight: 600; }
.note { border-left: 4px solid var(--accent); background: #eef3fb; padding: 8px 12px;
        margin: 10px 0; border-radius: 0 4px 4px 0; }
.note.not-run { border-left-color: var(--warn-line); background: var(--warn-bg); }
.note.partial { border-left-color: #8a94a6; background: var(--band); }
ul.flags { margin: 6px 0 14px; padding-left: 22px; }
ul.flags li { margin: 3px 0; color: var(--flag); }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 12px 14px;
      overflow: auto; max-height: 560px; font: 13px/1.45 "DejaVu Sans Mono", Menlo, Consolas,
      monospace; }
"""


def _escape(text: str) -> str:
  return html.escape(text, quote=True)


def _table(table: doc.Table) -> str:
  out = [f'<div class="table-wrap"><table id="{_escape(table.table_id)}">']
  if table.caption:
    out.append(f'<caption>{_escape(table.caption)}</caption>')
  out.append('<thead><tr>')
  for column, align in zip(table.columns, table.align):
    klass = ' class="num"' if align == 'r' else ''
    out.append(f'<th scope="col"{klass}>{_escape(column)}</th>')
  out.append('</tr></thead><tbody>')
  for index, row in enumerate(table.rows):
    flagged = bool(table.flagged) and table.flagged[index]
    out.append('<tr class="flagged">' if flagged else '<tr>')
    for cell, align in zip(row, table.align):
      klass = ' class="num"' if align == 'r' else ''
      out.append(f'<td{klass}>{_escape(cell)}</td>')
    out.append('</tr>')
  out.append('</tbody></table></div>')
  return ''.join(out)


def _block(block: doc.Block) -> str:
  if isinstance(block, doc.Paragraph):
    return f'<p>{_escape(block.text)}</p>'
  if isinstance(block, doc.Note):
    text = _escape(block.text)
    if block.kind == 'not-run' and block.text.startswith('Not run: '):
      text = f'<strong>Not run:</strong> {_escape(block.text[len("Not run: ") :])}'
    return f'<p class="note {_escape(block.kind)}">{text}</p>'
  if isinstance(block, doc.Table):
    return _table(block)
  if isinstance(block, doc.Image):
    return (
      f'<figure><img src="{_escape(block.src)}" alt="{_escape(block.alt)}" loading="lazy">'
      f'<figcaption>{_escape(block.caption)}</figcaption></figure>'
    )
  if isinstance(block, doc.Code):
    language = _escape(block.language)
    return f'<pre><code class="language-{language}">{_escape(block.text)}</code></pre>'
  if isinstance(block, doc.Bullets):
    items = ''.join(f'<li>{_escape(item)}</li>' for item in block.items)
    return f'<ul class="flags">{items}</ul>'
  raise TypeError(f'unknown report block {type(block).__name__}')


def render_html(document: doc.Document) -> str:
  """Renders a report `Document` as one HTML page with inline CSS.

  Args:
    document: the laid-out report (`peft_jax.report.document.build_document`).

  Returns:
    The HTML text. Images are referenced by their relative ``src``; nothing else is external.
  """
  nav = ''.join(f'<a href="#{s.anchor}">{_escape(s.title)}</a>' for s in document.sections)
  body = []
  for section in document.sections:
    body.append(f'<section id="{section.anchor}"><h2>{_escape(section.title)}</h2>')
    body.extend(_block(b) for b in section.blocks)
    body.append('</section>')
  return (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    f'<title>{_escape(document.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n'
    f'<header><h1>{_escape(document.title)}</h1><p>{_escape(document.subtitle)}</p></header>\n'
    f'<nav>{nav}</nav>\n<main>\n' + '\n'.join(body) + '\n</main>\n</body>\n</html>\n'
  )


def _draw_figures(results: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Draws every figure whose data are present; returns {figure name: absolute path}."""
  methods = results['methods']
  base = results['base']

  def path(name: str) -> str:
    return os.path.join(out_dir, doc.FIGURE_FILES[name])

  drawn = {
    'stability_plasticity': figs.plot_stability_plasticity(
      base, methods, path('stability_plasticity'), target_task=results['target_task']
    ),
  }
  if any(
    m.get('interpolation') is not None or m.get('rewind') is not None for m in methods.values()
  ):
    drawn['paths'] = figs.plot_paths(methods, path('paths'), base=base)
  if any(m.get('spectral') is not None for m in methods.values()):
    drawn['spectra'] = figs.plot_spectra(methods, path('spectra'))
  if any(m.get('activation') is not None for m in methods.values()):
    drawn['activation_geometry'] = figs.plot_activation_geometry(
      methods, path('activation_geometry')
    )
  if any(m.get('csd') is not None for m in methods.values()):
    drawn['csd'] = figs.plot_csd(methods, path('csd'))
  if results.get('sae') is not None:
    for name in sae_lib.FIGURES:
      drawn[name] = sae_lib.PLOTS[name](results['sae'], path(name))
  if results.get('rlvr') is not None:
    drawn['rlvr_plane'] = rlvr_lib.plot_plane(results['rlvr'], base, path('rlvr_plane'))
    drawn['rlvr_passk'] = rlvr_lib.plot_passk(results['rlvr'], path('rlvr_passk'))
    drawn['rlvr_reward'] = rlvr_lib.plot_reward(results['rlvr'], path('rlvr_reward'))
  if results.get('disel_gates') is not None:
    drawn['disel_gates'] = figs.plot_disel_gates(results['disel_gates'], path('disel_gates'))
  if results.get('drift') is not None:
    drawn['capability_drift'] = figs.plot_capability_drift(
      results['drift'], path('capability_drift')
    )
  if results.get('drift_study') is not None:
    drawn['drift_study'] = figs.plot_capability_drift(results['drift_study'], path('drift_study'))
  if any(m.get('train_loss') is not None for m in methods.values()):
    drawn['training_loss'] = figs.plot_training_loss(methods, path('training_loss'))
  if any(m.get('sweep') is not None for m in methods.values()):
    drawn['lr_sweep'] = figs.plot_lr_sweep(methods, path('lr_sweep'))
  if any(m.get('trajectory') is not None for m in methods.values()):
    drawn['trajectory'] = figs.plot_trajectory(methods, path('trajectory'))
  return drawn


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
  """Writes the arena report: index.html, index.md and one PNG per figure, into `out_dir`.

  The results dict is validated first (`peft_jax.report.schema.validate_results`), so a missing
  required key fails before any file is written. Sections whose optional data are absent are
  rendered with a "Not run" note. Figure files of a previous report in `out_dir` that this
  report does not draw are removed, so the directory never mixes two runs.

  Args:
    results: the arena results dict (schema in the `peft_jax.report` docstring).
    out_dir: the report directory; created when missing.

  Returns:
    ``{"html": path, "markdown": path, <figure name>: path, ...}`` with absolute paths; figure
    names are the keys of `peft_jax.report.document.FIGURE_FILES` that were drawn.

  Raises:
    ResultsSchemaError: (a `KeyError`) naming the missing or malformed key.
  """
  validate_results(results)
  out_dir = os.path.abspath(os.fspath(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  drawn = _draw_figures(results, out_dir)
  for name, file_name in doc.FIGURE_FILES.items():
    stale = os.path.join(out_dir, file_name)
    if name not in drawn and os.path.exists(stale):
      os.remove(stale)
  document = doc.build_document(results, {name: os.path.basename(p) for name, p in drawn.items()})
  paths = {
    'html': atomic_write_text(os.path.join(out_dir, 'index.html'), render_html(document)),
    'markdown': atomic_write_text(os.path.join(out_dir, 'index.md'), md.render_markdown(document)),
  }
  paths.update(drawn)
  return paths
