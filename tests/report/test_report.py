"""Tests of the arena report: every section, every image, every number in the methods table."""

import copy
import html.parser
import os
import re

import numpy as np
import pytest
from PIL import Image

from peft_jax import report
from peft_jax.report import schema

METHODS = ('full', 'lora', 'dora', 'pissa', 'vera', 'oft', 'miss', 'disel')
HEADINGS = (
  'Summary',
  'Stability–plasticity',
  'Methods table',
  'Paths',
  'Weight spectra',
  'Activation geometry',
  'CSD',
  'DISeL gates',
  'Capability drift',
  'Training',
  'Configuration',
  'Versions & timing',
)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
NUM_LAYERS = 4
RANK = 8


def make_results(seed: int = 0) -> dict:
  """A realistic arena results dict: 8 methods, 4 layers, 8 rank components, seeded numbers."""
  rng = np.random.default_rng(seed)
  target_tasks = ['gsm8k_synth', 'math500_synth']
  general_tasks = ['ifeval_strict', 'bbh_avg', 'nq_open']
  base_tasks = {t: float(rng.uniform(0.25, 0.45)) for t in target_tasks}
  base_tasks |= {t: float(rng.uniform(0.35, 0.6)) for t in general_tasks}
  base = {
    'target': float(np.mean([base_tasks[t] for t in target_tasks])),
    'general': float(np.mean([base_tasks[t] for t in general_tasks])),
    'tasks': base_tasks,
  }
  total = 2_345_678
  trainable = {
    'full': total,
    'lora': 36_864,
    'dora': 38_400,
    'pissa': 36_864,
    'vera': 1_536,
    'oft': 24_576,
    'miss': 18_432,
    'disel': 41_472,
  }
  alpha = np.linspace(0.0, 1.0, 6)
  methods = {}
  for index, name in enumerate(METHODS):
    tasks = {t: float(np.clip(base_tasks[t] + rng.uniform(0.02, 0.2), 0, 1)) for t in target_tasks}
    tasks |= {
      t: float(np.clip(base_tasks[t] - rng.uniform(-0.01, 0.15), 0, 1)) for t in general_tasks
    }
    target = float(np.mean([tasks[t] for t in target_tasks]))
    general = float(np.mean([tasks[t] for t in general_tasks]))
    steps = 120
    loss = 2.6 * np.exp(-np.arange(steps) / rng.uniform(20, 60)) + 0.6 + rng.normal(0, 0.05, steps)
    k = 32
    sigma_decay = np.exp(-np.arange(k) / 6.0)
    method = {
      'target': target,
      'general': general,
      'forget': base['general'] - general,
      'tasks': tasks,
      'trainable_params': trainable[name],
      'total_params': total,
      'train_time_s': float(rng.uniform(20, 400)),
      'peak_memory_mb': float(rng.uniform(300, 3000)),
      'train_loss': loss.tolist(),
      'interpolation': {
        'alpha': alpha.tolist(),
        'target': (base['target'] + (target - base['target']) * alpha**0.7).tolist(),
        'general': (base['general'] + (general - base['general']) * alpha**1.5).tolist(),
      },
      'rewind': {
        'alpha': alpha.tolist(),
        'target': (base['target'] + (target - base['target']) * alpha**0.5).tolist(),
        'general': (base['general'] + (general - base['general']) * alpha**2).tolist(),
        'kind': 'cayley' if name == 'oft' else 'additive',
      },
      'spectral': {
        'module': 'layers_2/mlp/down_proj',
        'retention': (
          rng.uniform(0.5, 1.5, k) * 1e-3 * (1 + 30 * sigma_decay * (index % 3))
        ).tolist(),
        'energy': (rng.uniform(0.5, 1.5, k) * 1e-2 * (1 + 10 * sigma_decay)).tolist(),
        'summary': {
          'delta_P_diag_mean': float(rng.uniform(1e-3, 1e-2)),
          'E_delta_mean': float(rng.uniform(1e-2, 1e-1)),
          'effective_rank': float(rng.uniform(1, 8)),
          'smoothness_retention': float(rng.uniform(1e-4, 1e-3)),
        },
      },
      'activation': {
        'layers': list(range(NUM_LAYERS)),
        'cka': np.sort(rng.uniform(0.7, 0.99, NUM_LAYERS))[::-1].tolist(),
        'procrustes': np.sort(rng.uniform(0.05, 0.4, NUM_LAYERS)).tolist(),
        'gram': np.sort(rng.uniform(0.05, 0.6, NUM_LAYERS)).tolist(),
      },
      'csd': {
        'modules': [f'layers_{i}/mlp/down_proj' for i in range(NUM_LAYERS)],
        'general': (10 ** rng.uniform(-4, -2, NUM_LAYERS)).tolist(),
        'target': (10 ** rng.uniform(-4, -2, NUM_LAYERS)).tolist(),
      },
    }
    method['csd']['ratio'] = (
      np.array(method['csd']['general']) / np.array(method['csd']['target'])
    ).tolist()
    methods[name] = method
  # DISeL has no static ΔW, so the spectral stage skips it.
  methods['disel']['spectral'] = None
  gate_modules = [
    f'layers_{i}/self_attn/{m}' for i in range(NUM_LAYERS) for m in ('q_proj', 'v_proj')
  ]
  general_gates = rng.uniform(0.02, 0.3, (len(gate_modules), RANK))
  drift_tasks = [*target_tasks, *general_tasks]
  delta = np.array([[methods[m]['tasks'][t] - base_tasks[t] for t in drift_tasks] for m in METHODS])
  return {
    'title': 'PEFT arena: tiny base on synthetic math',
    'created': '2026-11-25T14:00:00+00:00',
    'base': base,
    'target_task': 'math',
    'general_tasks': general_tasks,
    'target_tasks': target_tasks,
    'methods': methods,
    'disel_gates': {
      'layers': gate_modules,
      'general': general_gates.tolist(),
      'target': np.clip(general_gates + rng.normal(0.05, 0.08, general_gates.shape), 0, 1).tolist(),
    },
    'drift': {
      'adapters': list(METHODS),
      'labels': {m: 'math' for m in METHODS},
      'tasks': drift_tasks,
      'delta': delta.tolist(),
      'flagged': {
        'pissa': ['off-target gain on nq_open exceeds nominal gain on gsm8k_synth'],
        'vera': ['nominal gain ≤ 0', 'largest gain off-target (bbh_avg)'],
      },
    },
    'config': {
      'model': {'name': 'bundled:tiny', 'layers': NUM_LAYERS},
      'train': {'steps': 120, 'lr': 2e-4, 'batch_size': 8},
      'adapter': {'rank': RANK, 'alpha': 16, 'targets': ['q_proj', 'v_proj']},
    },
    'versions': {'jax': '0.10.0', 'flax': '0.12.1', 'optax': '0.2.8', 'numpy': np.__version__},
    'timing': {
      'total_s': 1234.5,
      'stages': {'train': 900.0, 'evaluate': 200.0, 'geometry': 80.5, 'paths': 50.0, 'report': 4.0},
    },
  }


def minimal_results() -> dict:
  """Only the required keys: every optional section must say "Not run"."""
  results = make_results(1)
  for key in schema.OPTIONAL_TOP_KEYS:
    del results[key]
  for method in results['methods'].values():
    for key in schema.OPTIONAL_METHOD_KEYS:
      del method[key]
  return results


class _PageParser(html.parser.HTMLParser):
  """Collects h2 headings, img sources, tables (id -> rows of cell text) and section texts."""

  def __init__(self):
    super().__init__()
    self.headings, self.images, self.tables, self.sections = [], [], {}, {}
    self._heading = self._table = self._row = self._cell = self._section = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'h2':
      self._heading = ''
    elif tag == 'img':
      self.images.append(attrs['src'])
    elif tag == 'table':
      self._table = self.tables.setdefault(attrs.get('id'), [])
    elif tag == 'tr' and self._table is not None:
      self._row = []
    elif tag in ('td', 'th') and self._row is not None:
      self._cell = ''
    elif tag == 'section':
      self._section = attrs['id']
      self.sections[self._section] = ''

  def handle_endtag(self, tag):
    if tag == 'h2':
      self.headings.append(self._heading)
      self._heading = None
    elif tag == 'table':
      self._table = None
    elif tag == 'tr' and self._row is not None:
      self._table.append(self._row)
      self._row = None
    elif tag in ('td', 'th') and self._cell is not None:
      self._row.append(self._cell)
      self._cell = None
    elif tag == 'section':
      self._section = None

  def handle_data(self, data):
    if self._heading is not None:
      self._heading += data
    if self._cell is not None:
      self._cell += data
    if self._section is not None:
      self.sections[self._section] += data


def parse(path) -> _PageParser:
  parser = _PageParser()
  with open(path, encoding='utf-8') as stream:
    parser.feed(stream.read())
  return parser


def markdown_sections(path) -> dict[str, str]:
  text = open(path, encoding='utf-8').read()
  parts = re.split(r'^## (.+)$', text, flags=re.M)
  return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.fixture(scope='module')
def full_report(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('report_full')
  results = make_results(0)
  paths = report.write_report(results, out_dir)
  return results, out_dir, paths


@pytest.fixture(scope='module')
def minimal_report(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('report_minimal')
  results = minimal_results()
  paths = report.write_report(results, out_dir)
  return results, out_dir, paths


def test_returns_paths_of_every_file(full_report):
  _, out_dir, paths = full_report
  assert set(paths) == {'html', 'markdown', *report.FIGURE_FILES}
  for path in paths.values():
    assert os.path.isfile(path) and os.path.dirname(path) == str(out_dir)
  assert not [f for f in os.listdir(out_dir) if f.startswith('.tmp-')]


@pytest.mark.parametrize('fixture', ['full_report', 'minimal_report'])
def test_every_section_heading_in_html_and_markdown(fixture, request):
  _, _, paths = request.getfixturevalue(fixture)
  assert tuple(parse(paths['html']).headings) == HEADINGS
  assert [h for h in markdown_sections(paths['markdown']) if h != 'Contents'] == list(HEADINGS)


def test_every_image_is_a_valid_png(full_report):
  _, out_dir, paths = full_report
  sources = parse(paths['html']).images
  assert len(sources) == len(report.FIGURE_FILES)
  markdown = open(paths['markdown'], encoding='utf-8').read()
  assert sorted(re.findall(r'!\[[^\]]*\]\(([^)]+)\)', markdown)) == sorted(sources)
  for source in sources:
    path = os.path.join(out_dir, source)
    with open(path, 'rb') as stream:
      assert stream.read(8) == PNG_SIGNATURE, source
    with Image.open(path) as image:
      image.load()
      width, height = image.size
    assert width > 300 and height > 200, (source, image.size)


def test_html_is_self_contained(full_report):
  _, _, paths = full_report
  page = open(paths['html'], encoding='utf-8').read()
  assert '<script' not in page and '<link' not in page
  assert not re.search(r'(src|href)=\"(https?:)?//', page)
  assert '<style>' in page


def test_methods_table_numbers_equal_input(full_report):
  results, _, paths = full_report
  rows = parse(paths['html']).tables['methods-table']
  header, base_row, *method_rows = rows
  assert header[:5] == ['Method', 'Target', 'Target gain (pts)', 'General', 'Forget (pts)']
  base = results['base']
  assert base_row[:5] == ['base', f'{base["target"]:.3f}', '—', f'{base["general"]:.3f}', '0.0']
  assert [r[0] for r in method_rows] == list(METHODS)
  for row, name in zip(method_rows, METHODS):
    m = results['methods'][name]
    assert row == [
      name,
      f'{m["target"]:.3f}',
      f'{(m["target"] - base["target"]) * 100:+.1f}',
      f'{m["general"]:.3f}',
      f'{100 * m["forget"]:.1f}',
      f'{m["trainable_params"]:,}',
      f'{m["total_params"]:,}',
      f'{100 * m["trainable_params"] / m["total_params"]:.3f}%',
      f'{m["train_time_s"]:.1f} s',
      f'{m["peak_memory_mb"]:,.1f} MB',
    ], name
  assert method_rows[0][5] == '2,345,678'


def test_markdown_tables_match_html(full_report):
  _, _, paths = full_report
  html_rows = [row for rows in parse(paths['html']).tables.values() for row in rows]
  markdown = open(paths['markdown'], encoding='utf-8').read()
  md_rows = [
    [c.strip() for c in line.strip()[1:-1].split(' | ')]
    for line in markdown.splitlines()
    if line.startswith('| ')
  ]
  assert len(html_rows) > 60
  assert md_rows == html_rows


def test_task_table_has_every_task(full_report):
  results, _, paths = full_report
  rows = parse(paths['html']).tables['tasks-table']
  assert rows[0] == ['Task', 'Kind', 'base', *METHODS]
  tasks = [r[0] for r in rows[1:]]
  assert tasks == [*results['target_tasks'], *results['general_tasks']]
  lora_column = rows[0].index('lora')
  for row in rows[1:]:
    assert row[lora_column] == f'{results["methods"]["lora"]["tasks"][row[0]]:.3f}'


def test_drift_lists_flagged_adapters_with_reasons(full_report):
  results, _, paths = full_report
  page = parse(paths['html'])
  text = page.sections['capability-drift']
  for name, reasons in results['drift']['flagged'].items():
    assert f'⚑ {name}' in text
    for reason in reasons:
      assert reason in text
  drift_rows = page.tables['drift-table']
  assert [r[-1] for r in drift_rows[1:]] == [
    '⚑ yes' if a in results['drift']['flagged'] else 'no' for a in results['drift']['adapters']
  ]
  markdown = markdown_sections(paths['markdown'])['Capability drift']
  assert '- ⚑ vera [math]: nominal gain ≤ 0; largest gain off-target (bbh_avg)' in markdown


def test_partial_data_is_named(full_report):
  _, _, paths = full_report
  text = parse(paths['html']).sections['weight-spectra']
  assert 'No spectral data for: disel.' in text
  spectra_rows = parse(paths['html']).tables['spectra-table']
  assert 'disel' not in [r[0] for r in spectra_rows]


def test_configuration_and_versions(full_report):
  results, _, paths = full_report
  page = parse(paths['html'])
  assert '"lr": 0.0002' in page.sections['configuration']
  assert ['jax', '0.10.0'] in page.tables['versions-table']
  assert ['total', '1,234.5 s', '100.000%'] in page.tables['timing-table']


NOT_RUN_SECTIONS = {
  'paths': 'Paths',
  'weight-spectra': 'Weight spectra',
  'activation-geometry': 'Activation geometry',
  'csd': 'CSD',
  'disel-gates': 'DISeL gates',
  'capability-drift': 'Capability drift',
  'training': 'Training',
  'configuration': 'Configuration',
  'versions-timing': 'Versions & timing',
}


def test_missing_optional_sections_say_not_run(minimal_report):
  _, out_dir, paths = minimal_report
  page = parse(paths['html'])
  markdown = markdown_sections(paths['markdown'])
  for anchor, heading in NOT_RUN_SECTIONS.items():
    assert 'Not run:' in page.sections[anchor], anchor
    assert '> **Not run:**' in markdown[heading], heading
  for anchor in ('summary', 'stability-plasticity', 'methods'):
    assert 'Not run:' not in page.sections[anchor]
  assert page.images == ['stability_plasticity.png']
  assert set(paths) == {'html', 'markdown', 'stability_plasticity'}
  assert sorted(os.listdir(out_dir)) == ['index.html', 'index.md', 'stability_plasticity.png']


def test_rewrite_removes_stale_figures(tmp_path):
  report.write_report(make_results(2), tmp_path)
  assert os.path.exists(tmp_path / 'capability_drift.png')
  report.write_report(minimal_results(), tmp_path)
  assert sorted(os.listdir(tmp_path)) == ['index.html', 'index.md', 'stability_plasticity.png']


def _delete(results, path):
  node = results
  for key in path[:-1]:
    node = node[key]
  del node[path[-1]]


@pytest.mark.parametrize(
  'path',
  [
    ('title',),
    ('base', 'general'),
    ('methods', 'lora', 'forget'),
    ('methods', 'dora', 'trainable_params'),
    ('methods', 'oft', 'rewind', 'kind'),
    ('drift', 'delta'),
    ('disel_gates', 'target'),
    ('timing', 'stages'),
  ],
)
def test_missing_required_key_raises_naming_it(path, tmp_path):
  results = make_results(3)
  _delete(results, path)
  expected = 'results' + ''.join(f'[{k!r}]' for k in path)
  with pytest.raises(report.ResultsSchemaError) as error:
    report.write_report(results, tmp_path / 'out')
  assert f'missing required key {expected}' in str(error.value)
  assert isinstance(error.value, KeyError)
  assert not os.path.exists(tmp_path / 'out')
  with pytest.raises(KeyError, match=re.escape(expected)):
    report.print_summary_table(results)


@pytest.mark.parametrize(
  'mutate, expected',
  [
    (
      lambda r: r['methods']['lora'].__setitem__('target', '0.4'),
      "results['methods']['lora']['target']: expected a number",
    ),
    (
      lambda r: r['methods']['vera']['interpolation']['general'].pop(),
      "results['methods']['vera']['interpolation']['general']: expected 6 values, got 5",
    ),
    (
      lambda r: r['methods']['oft']['rewind'].__setitem__('kind', 'spherical'),
      "results['methods']['oft']['rewind']['kind']: expected one of",
    ),
    (
      lambda r: r['disel_gates']['general'][0].pop(),
      "results['disel_gates']['general'][1]: expected 7 values, got 8",
    ),
    (
      lambda r: r['drift']['flagged'].__setitem__('nobody', ['x']),
      "results['drift']['flagged']['nobody']: flagged adapter is not in",
    ),
    (
      lambda r: r['methods']['full'].__setitem__('total_params', 0),
      "results['methods']['full']['total_params']: expected a positive count",
    ),
  ],
)
def test_malformed_values_raise_naming_the_key(mutate, expected):
  results = make_results(4)
  mutate(results)
  with pytest.raises(report.ResultsSchemaError, match=re.escape(expected)):
    report.validate_results(results)


def test_numpy_inputs_and_nan_scores_render(tmp_path):
  results = make_results(5)
  lora = results['methods']['lora']
  lora['train_loss'] = np.asarray(lora['train_loss'])
  lora['target'] = np.float32(0.5)
  lora['trainable_params'] = np.int64(36_864)
  results['methods']['vera']['general'] = float('nan')
  results['methods']['vera']['forget'] = float('nan')
  paths = report.write_report(results, tmp_path)
  rows = {r[0]: r for r in parse(paths['html']).tables['methods-table']}
  assert rows['lora'][1] == '0.500' and rows['lora'][5] == '36,864'
  assert rows['vera'][3] == 'n/a' and rows['vera'][4] == 'n/a'


def test_print_summary_table(full_report, capsys):
  results, _, _ = full_report
  table = report.print_summary_table(results)
  lines = table.splitlines()
  assert lines[0].split() == ['method', 'target', 'general', 'forget', 'params', 'time']
  assert set(lines[1].replace(' ', '')) == {'-'}
  assert [line.split()[0] for line in lines[2:]] == ['base', *METHODS]
  width = len(lines[1])
  assert all(len(line) <= width for line in lines)
  oft = results['methods']['oft']
  assert lines[2 + METHODS.index('oft') + 1].split() == [
    'oft',
    f'{oft["target"]:.3f}',
    f'{oft["general"]:.3f}',
    f'{100 * oft["forget"]:.1f}',
    f'{oft["trainable_params"]:,}',
    f'{oft["train_time_s"]:.1f}',
    's',
  ]
  # Right-aligned numbers: every time column ends at the same place.
  assert len({len(line) for line in lines[2:]}) == 1
  assert capsys.readouterr().out == ''
  import sys

  report.print_summary_table(results, file=sys.stdout)
  assert capsys.readouterr().out == table + '\n'


def test_figures_survive_degenerate_data(tmp_path):
  """One method, no spread, zero energies and CSD: every figure is still a readable PNG."""
  from peft_jax.report import figures

  results = make_results(6)
  lora = results['methods']['lora']
  lora['target'], lora['general'] = results['base']['target'], results['base']['general']
  lora['spectral']['energy'] = [0.0] * len(lora['spectral']['energy'])
  lora['spectral']['retention'] = [0.0] * len(lora['spectral']['retention'])
  lora['csd'] = {
    'modules': ['layers_0/mlp/down_proj'],
    'general': [0.0],
    'target': [0.0],
    'ratio': [float('nan')],
  }
  lora['train_loss'] = [2.0]
  methods = {'lora': lora}
  drawn = [
    figures.plot_stability_plasticity(results['base'], methods, tmp_path / 'a.png'),
    figures.plot_paths(methods, tmp_path / 'b.png'),
    figures.plot_spectra(methods, tmp_path / 'c.png'),
    figures.plot_activation_geometry(methods, tmp_path / 'd.png'),
    figures.plot_csd(methods, tmp_path / 'e.png'),
    figures.plot_disel_gates(
      {'layers': ['q_proj'], 'general': [[0.1]], 'target': [[0.1]]}, tmp_path / 'f.png'
    ),
    figures.plot_capability_drift(
      {
        'adapters': ['lora'],
        'labels': {'lora': 'math'},
        'tasks': ['gsm8k'],
        'delta': [[0.0]],
        'flagged': {},
      },
      tmp_path / 'g.png',
    ),
    figures.plot_training_loss(methods, tmp_path / 'h.png'),
  ]
  for path in drawn:
    with Image.open(path) as image:
      assert min(image.size) > 100, path
  with pytest.raises(ValueError, match='no method has spectral data'):
    figures.plot_spectra({'lora': {'spectral': None}}, tmp_path / 'x.png')
  assert figures.short_module_name('model.layers.3.self_attn.q_proj') == 'L3 q_proj'
  assert figures.short_module_name('layers_12/mlp/down_proj/kernel') == 'L12 down_proj'
