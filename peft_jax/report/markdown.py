"""The Markdown twin of the report page.

`render_markdown` renders the same `Document` as `peft_jax.report.html.render_html`: the same
section headings, tables (GitHub pipe tables, numbers right-aligned) and image links to the PNGs
beside the file, so the report reads the same on a code-review page as in a browser.
"""

from __future__ import annotations

from peft_jax.report import document as doc


def _cell(text: str) -> str:
  # A pipe would end the cell and a newline the row.
  return text.replace('\\', '\\\\').replace('|', '\\|').replace('\n', ' ')


def _table(table: doc.Table) -> str:
  lines = [f'**{_cell(table.caption)}**', ''] if table.caption else []
  lines.append('| ' + ' | '.join(_cell(c) for c in table.columns) + ' |')
  lines.append('|' + '|'.join('---:' if a == 'r' else ':---' for a in table.align) + '|')
  for row in table.rows:
    lines.append('| ' + ' | '.join(_cell(c) for c in row) + ' |')
  return '\n'.join(lines)


def _fence(text: str) -> str:
  longest = max((len(run) for run in text.split('\n') if set(run) == {'`'}), default=0)
  return '`' * max(3, longest + 1)


def _block(block: doc.Block) -> str:
  if isinstance(block, doc.Paragraph):
    return block.text
  if isinstance(block, doc.Note):
    label = {'not-run': 'Not run', 'partial': 'Partial', 'info': 'Note'}[block.kind]
    text = block.text
    if block.kind == 'not-run' and text.startswith('Not run: '):
      text = text[len('Not run: ') :]
    return f'> **{label}:** {text}'
  if isinstance(block, doc.Table):
    return _table(block)
  if isinstance(block, doc.Image):
    return f'![{block.alt}]({block.src})\n\n*{block.caption}*'
  if isinstance(block, doc.Code):
    fence = _fence(block.text)
    return f'{fence}{block.language}\n{block.text}\n{fence}'
  if isinstance(block, doc.Bullets):
    return '\n'.join(f'- {item}' for item in block.items)
  raise TypeError(f'unknown report block {type(block).__name__}')


def render_markdown(document: doc.Document) -> str:
  """Renders a report `Document` as Markdown.

  Args:
    document: the laid-out report (`peft_jax.report.document.build_document`).

  Returns:
    The Markdown text, ending with a newline.
  """
  parts = [f'# {document.title}', '', f'*{document.subtitle}*', '', '## Contents', '']
  parts += [f'{i}. [{s.title}](#{s.anchor})' for i, s in enumerate(document.sections, 1)]
  for section in document.sections:
    parts += ['', f'<a id="{section.anchor}"></a>', '', f'## {section.title}']
    for block in section.blocks:
      parts += ['', _block(block)]
  return '\n'.join(parts) + '\n'
