"""Tests of the arena report: every section, every image, every number in the methods table."""

import html.parser
import os
import re

import numpy as np
import pytest
from PIL import Image

from peft_jax import report
from peft_jax.arena import drift_study
from peft_jax.evals import drift
from peft_jax.report import rlvr as report_rlvr
from peft_jax.report import sae as report_sae
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
  'Claims',
  'Delta-activation SAEs',
  'SFT vs RLVR',
  'Training',
  'Configuration',
  'Versions & timing',
)
# The full fixture also has the optional sections, after the sections they follow.
FULL_HEADINGS = (
  *HEADINGS[:3],
  'Learning-rate sweep',
  HEADINGS[3],
  'Trajectory',
  *HEADINGS[4:],
)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
NUM_LAYERS = 4
RANK = 8
N_PER_TASK = {
  'gsm8k_synth': 200,
  'math500_synth': 120,
  'ifeval_strict': 150,
  'bbh_avg': 270,
  'nq_open': 300,
}
# Methods whose target gain / forget intervals contain 0 in the fixture.
GAIN_NOISE = ('vera', 'miss')
FORGET_NOISE = ('oft', 'vera')


def _around(value, half):
  return [value - half, value + half]


def add_intervals(results: dict, rng: np.random.Generator) -> dict:
  """Intervals, paired differences, n, a learning-rate sweep and a trajectory, as
  peft_jax.report.results.assemble_results writes them."""
  base = results['base']
  base['n'] = dict(N_PER_TASK)
  base['intervals'] = {
    'target': _around(base['target'], 0.05),
    'general': _around(base['general'], 0.03),
    'tasks': {t: _around(v, 0.04 + 0.01 * i) for i, (t, v) in enumerate(base['tasks'].items())},
  }
  results['bootstrap'] = {'resamples': 1000, 'seed': 0, 'confidence': 0.95}
  lrs = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
  for index, (name, m) in enumerate(results['methods'].items()):
    m['n'] = dict(N_PER_TASK)
    m['intervals'] = {
      'target': _around(m['target'], 0.06),
      'general': _around(m['general'], 0.035),
      'tasks': {t: _around(v, 0.05 + 0.005 * i) for i, (t, v) in enumerate(m['tasks'].items())},
    }
    gain = m['target'] - base['target']
    gain_half = abs(gain) + 0.01 if name in GAIN_NOISE else abs(gain) / 2
    forget_half = abs(m['forget']) + 0.01 if name in FORGET_NOISE else abs(m['forget']) / 2
    task_deltas = {}
    for i, task in enumerate(m['tasks']):
      delta = m['tasks'][task] - base['tasks'][task]
      interval = _around(delta, 0.03 + 0.01 * i)
      task_deltas[task] = {
        'delta': delta,
        'interval': interval,
        'within_noise': interval[0] <= 0 <= interval[1],
      }
    m['paired'] = {
      'target_gain': {
        'delta': gain,
        'interval': _around(gain, gain_half),
        'within_noise': name in GAIN_NOISE,
      },
      'forget': {
        'delta': m['forget'],
        'interval': _around(m['forget'], forget_half),
        'within_noise': name in FORGET_NOISE,
      },
      'tasks': task_deltas,
    }
    if name != 'full':  # a method without a sweep: the section names it
      target = 0.2 + 0.2 * np.exp(-((np.log10(lrs) + 4 - 0.3 * (index % 3)) ** 2))
      m['sweep'] = {
        'lr': list(lrs),
        'target': target.tolist(),
        'general': (0.5 - 0.1 * np.arange(5) / 4).tolist(),
        'chosen_lr': lrs[int(np.argmax(target))],
        'split': 'validation',
        'steps': 40,
      }
      if name == 'lora':
        m['sweep']['seeds'] = [0, 1, 2]
        m['sweep']['target_by_seed'] = (target + rng.normal(0, 0.02, (3, 5))).tolist()
    if name != 'disel':
      steps = [0, 30, 60, 90, 120]
      m['trajectory'] = {
        'step': steps,
        'distance': (0.01 * (index + 1) * np.sqrt(np.array(steps) / 120)).tolist(),
        'cka': (1.0 - 0.05 * np.array(steps) / 120).tolist(),
        'target': np.linspace(base['target'], m['target'], 5).tolist(),
        'general': np.linspace(base['general'], m['general'], 5).tolist(),
      }
  return results


SAE_RANKS = (4, 8, 16, 32)
SAE_LAYERS = (0, 3)  # two residual sites of a 4-layer model: depths 0 and 1


def _sae_ci(value, half=0.02, n=None):
  out = {'value': float(value), 'interval': [value - half, value + half], 'level': 0.95}
  return out if n is None else dict(out, n=n)


def make_sae_study(
  density, divergence, *, null=0.2, ceiling=0.6, features=64, seed=0, ranks=SAE_RANKS
):
  """A ``sae_study.json``-like dict: one row per (rank, layer); ``density(i_rank, i_layer)`` and
  ``divergence(i_rank, i_layer)`` give each row's mean density and 1 − MMCS; the per-feature
  max cosines are drawn around 1 − divergence."""
  rng = np.random.default_rng(seed)
  sites = [f'layers_{layer}/residual' for layer in SAE_LAYERS]
  rows, base_rows = [], {}
  for j, (layer, site) in enumerate(zip(SAE_LAYERS, sites)):
    base_rows[site] = {
      'site': site,
      'kind': 'residual',
      'layer': layer,
      'mean_norm': 1.0,
      'sae': {'fvu': _sae_ci(0.2), 'l0': _sae_ci(12.0), 'mean_density': 12.0 / 64},
      'reseed_mmcs': _sae_ci(ceiling),
    }
    for i, rank in enumerate(ranks):
      max_cos = np.clip(1.0 - divergence(i, j) + rng.normal(0.0, 0.05, features), 0.0, 1.0)
      rows.append(
        {
          'adapter': f'lora_r{rank}',
          'rank': rank,
          'site': site,
          'kind': 'residual',
          'layer': layer,
          'depth': layer / 3,
          'delta_norm_ratio': 0.1,
          'sae': {
            'mean_density': density(i, j),
            'l0': _sae_ci(64 * density(i, j)),
            'fvu': _sae_ci(0.3),
            'dead_fraction': 0.1,
            'ce': {'ce_loss_recovered': _sae_ci(0.8)},
          },
          'comparison': {
            'mmcs': _sae_ci(max_cos.mean(), n=features),
            'mmcs_null': null,
            'one_to_one': {'mean_cosine': _sae_ci(max_cos.mean() - 0.05, n=features)},
            'principal_angles': {'mean_deg': 50.0},
            'divergence': float(1.0 - max_cos.mean()),
            'per_feature': {'max_cos': [float(v) for v in max_cos]},
          },
        }
      )
  return {
    'base': 'bundled:tiny',
    'model': {'num_layers': 4, 'hidden_size': 32, 'model_type': 'llama'},
    'adapters': [{'name': f'lora_r{r}', 'rank': r} for r in ranks],
    'sites': sites,
    'tokens': {'train': 3000, 'eval': 1000},
    'rows': rows,
    'base_rows': base_rows,
    'timings_s': {'total': 42.0},
  }


def _eval(general_rows, target_rows):
  """An eval_<m>-like result on one target task (gsm) and one general task (nq)."""
  return {
    'tasks': {'gsm': float(np.mean(target_rows)), 'nq': float(np.mean(general_rows))},
    'general': float(np.mean(general_rows)),
    'intervals': {'tasks': {'gsm': [0.0, 1.0], 'nq': [0.0, 1.0]}, 'general': [0.0, 1.0]},
    'per_example': {
      'gsm': {'kind': 'target', 'numerator': [int(v) for v in target_rows]},
      'nq': {'kind': 'general', 'numerator': [int(v) for v in general_rows]},
    },
  }


def rlvr_stage_outputs():
  """Hand-made stage results of the RLVR phase: base / SFT / RLVR evaluations on gsm and nq
  (SFT loses 40 of the base's general items, RLVR 4), a 6-step run and pass@k counts."""
  rng = np.random.default_rng(0)
  base_general = (rng.uniform(size=64) < 0.8).astype(int)
  base = _eval(base_general, np.zeros(32, int))
  base['bootstrap'] = {'resamples': 500, 'seed': 0, 'confidence': 0.95}
  # SFT forgets a lot (40 of the base's general items lost), RLVR a little (4 lost).
  sft_general, rlvr_general = base_general.copy(), base_general.copy()
  correct = np.flatnonzero(base_general)
  sft_general[correct[:40]] = 0
  rlvr_general[correct[:4]] = 0
  sft = _eval(sft_general, (np.arange(32) % 4 == 0).astype(int))
  rl = _eval(rlvr_general, (np.arange(32) % 8 == 0).astype(int))
  n, prompts = 16, 12

  def entry(counts, step=None):
    out = {'counts': counts, 'num_samples': n, 'pass_at_k': {}, 'mean_reward': 0.0}
    return out if step is None else dict(out, step=step)

  # Early: every prompt solved now and then; late: the same pass@1 mass on fewer prompts.
  early = [4] * prompts
  late = [12] * 4 + [0] * (prompts - 4)
  run = {
    'steps': 6,
    'early_step': 3,
    'peak_lr': 1e-3,
    'train_time_s': 12.5,
    'step': [1, 2, 3, 4, 5, 6],
    'reward_mean': [0.1, 0.2, 0.2, 0.3, 0.3, 0.4],
    'kl': [0.0, 0.01, 0.02, 0.02, 0.03, 0.03],
    'skipped': [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # step 3: every group's rewards equal
    'passk': {'early': entry(early, 3), 'late': entry(late, 6)},
  }
  passk = {
    'task': 'gsm',
    'num_prompts': prompts,
    'num_samples': n,
    'ks': [1, 2, 4, 8, 16],
    'base': entry([0] * prompts),
    'methods': {'lora': {'sft': entry([2] * prompts), **run['passk']}},
  }
  return base, sft, rl, run, passk


def rlvr_entry():
  base, sft, rl, run, passk = rlvr_stage_outputs()
  return report_rlvr.results_entry(
    base=base,
    sft={'lora': sft},
    rlvr={'lora': rl},
    runs={'lora': run},
    passk=passk,
    target='gsm',
    general_tasks=['nq'],
    resamples=500,
    seed=0,
  )


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
  # The drift study: two labels at two configurations (peft_jax.arena.drift_study's entry).
  study = drift.drift_report(
    {t: base_tasks[t] for t in drift_tasks},
    [
      drift.AdapterScores(
        f'{label}_{cfg}',
        label,
        task,
        {t: base_tasks[t] + float(rng.normal(0.0, 0.05)) for t in drift_tasks},
        cfg,
      )
      for label, task in (('instruction', 'ifeval_strict'), ('arithmetic', 'gsm8k_synth'))
      for cfg in ('lr1', 'lr3')
    ],
  )
  results = {
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
    'drift_study': drift_study.results_entry(
      dict(study, sensitivity=drift_study.sensitivity(study))
    ),
    'sae': report_sae.results_entry(
      make_sae_study(  # 3 ranks x 2 sites: 6 rows, 720 pairings for the exact p-values
        lambda i, j: 0.02 * (i + 1) + 0.1 * j, lambda i, j: 0.6, seed=seed, ranks=(4, 8, 16)
      ),
      resamples=200,
    ),
    'rlvr': rlvr_entry(),
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
  return add_intervals(results, rng)


def minimal_results() -> dict:
  """Only the required keys: every optional section must say "Not run"."""
  results = make_results(1)
  for key in schema.OPTIONAL_TOP_KEYS:
    results.pop(key, None)  # claims: absent from the hand-built fixture too
  for method in results['methods'].values():
    for key in schema.OPTIONAL_METHOD_KEYS:
      method.pop(key, None)
  for key in schema.OPTIONAL_BASE_KEYS:
    del results['base'][key]
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


@pytest.mark.parametrize(
  'fixture, headings', [('full_report', FULL_HEADINGS), ('minimal_report', HEADINGS)]
)
def test_every_section_heading_in_html_and_markdown(fixture, headings, request):
  _, _, paths = request.getfixturevalue(fixture)
  assert tuple(parse(paths['html']).headings) == headings
  assert [h for h in markdown_sections(paths['markdown']) if h != 'Contents'] == list(headings)


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


def _ci(value, interval):
  """The expected cell: the score and its interval, each with 3 decimals."""
  return f'{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]'


def _pts(value, interval, signed=False):
  f = '{:+.1f}' if signed else '{:.1f}'
  return f'{f.format(100 * value)} [{f.format(100 * interval[0])}, {f.format(100 * interval[1])}]'


def test_methods_table_numbers_equal_input(full_report):
  results, _, paths = full_report
  rows = parse(paths['html']).tables['methods-table']
  header, base_row, *method_rows = rows
  assert header[:6] == [
    'Method',
    'Target',
    'Target gain (pts)',
    'General',
    'Forget (pts)',
    'Within noise',
  ]
  base = results['base']
  assert base_row[:6] == [
    'base',
    _ci(base['target'], base['intervals']['target']),
    '—',
    _ci(base['general'], base['intervals']['general']),
    '0.0',
    '—',
  ]
  assert [r[0] for r in method_rows] == list(METHODS)
  for row, name in zip(method_rows, METHODS):
    m = results['methods'][name]
    noise = [k for k, names in (('gain', GAIN_NOISE), ('forget', FORGET_NOISE)) if name in names]
    assert row == [
      name,
      _ci(m['target'], m['intervals']['target']),
      _pts(m['target'] - base['target'], m['paired']['target_gain']['interval'], signed=True),
      _ci(m['general'], m['intervals']['general']),
      _pts(m['forget'], m['paired']['forget']['interval']),
      ', '.join(noise) or 'no',
      f'{m["trainable_params"]:,}',
      f'{m["total_params"]:,}',
      f'{100 * m["trainable_params"] / m["total_params"]:.3f}%',
      f'{m["train_time_s"]:.1f} s',
      f'{m["peak_memory_mb"]:,.1f} MB',
    ], name
  assert method_rows[0][6] == '2,345,678'


def test_summary_says_which_differences_are_within_noise(full_report):
  results, _, paths = full_report
  page = parse(paths['html'])
  text = page.sections['summary']
  assert (
    'Within noise (the 95% paired interval of the difference from the base contains 0): '
    'Target gain of vera, miss; Forget of vera, oft.'
  ) in text
  facts = dict(page.tables['summary-table'][1:])
  assert facts['Target gain within noise'] == 'vera, miss'
  assert facts['Forget within noise'] == 'vera, oft'
  assert facts['Examples per task (n)'] == ', '.join(f'{t} {n:,}' for t, n in N_PER_TASK.items())
  entries = [results['base'], *results['methods'].values()]
  widths = [hi - lo for e in entries for lo, hi in e['intervals']['tasks'].values()]
  gains = [
    hi - lo
    for m in results['methods'].values()
    for lo, hi in [m['paired']['target_gain']['interval']]
  ]
  forgets = [
    hi - lo for m in results['methods'].values() for lo, hi in [m['paired']['forget']['interval']]
  ]
  assert facts['Median interval width (points)'] == (
    f'task scores {100 * np.median(widths):.1f}, target gain {100 * np.median(gains):.1f}, '
    f'forget {100 * np.median(forgets):.1f}'
  )
  assert facts['Intervals'].startswith('95% percentile bootstrap over examples (B = 1,000')
  assert 'No bootstrap interval' not in text


def test_task_deltas_table(full_report):
  results, _, paths = full_report
  rows = parse(paths['html']).tables['task-deltas-table']
  assert rows[0] == ['Task', 'Kind', *METHODS]
  for row in rows[1:]:
    for name, cell in zip(METHODS, row[2:]):
      d = results['methods'][name]['paired']['tasks'][row[0]]
      assert cell == _pts(d['delta'], d['interval'], signed=True) + (
        ' ≈0' if d['within_noise'] else ''
      ), (name, row[0])
  assert any(cell.endswith(' ≈0') for row in rows[1:] for cell in row)


def test_sweep_section(full_report):
  results, out_dir, paths = full_report
  page = parse(paths['html'])
  assert 'lr_sweep.png' in page.images
  assert 'No sweep data for: full.' in page.sections['lr-sweep']
  summary = {r[0]: r for r in page.tables['sweep-summary-table'][1:]}
  assert list(summary) == [m for m in METHODS if m != 'full']
  lora = results['methods']['lora']['sweep']
  assert summary['lora'][1:6] == [f'{lora["chosen_lr"]:.1e}', 'validation', '40', '5', '3']
  assert summary['dora'][5] == '—'
  rows = [r for r in page.tables['sweep-table'][1:] if r[0] == 'lora']
  by_seed = np.asarray(lora['target_by_seed'])
  for i, row in enumerate(rows):
    assert row[1:4] == [
      f'{lora["lr"][i]:.1e}',
      f'{lora["target"][i]:.3f}',
      f'{lora["general"][i]:.3f}',
    ]
    column = by_seed[:, i]
    assert row[4] == f'{column.min():.3f}–{column.max():.3f} (std {column.std():.3f})'
    assert row[5] == ('◀ chosen' if lora['lr'][i] == lora['chosen_lr'] else '')
  assert [r[5] for r in rows].count('◀ chosen') == 1


def test_trajectory_section(full_report):
  results, _, paths = full_report
  page = parse(paths['html'])
  assert 'trajectory.png' in page.images
  assert 'No trajectory data for: disel.' in page.sections['trajectory']
  rows = {r[0]: r for r in page.tables['trajectory-table'][1:]}
  t = results['methods']['oft']['trajectory']
  assert rows['oft'][1:] == [
    '5',
    '120',
    f'{t["distance"][-1]:.4f}',
    f'{t["cka"][-1]:.4f}',
    f'{t["target"][0]:.3f} → {t["target"][-1]:.3f}',
    f'{t["general"][0]:.3f} → {t["general"][-1]:.3f}',
  ]


def test_results_without_intervals_still_render():
  """Stage results written before per-example statistics: every score reads "[—]", a note says
  why, and the summary says no difference can be told from noise."""
  results = make_results(7)
  for entry in [results['base'], *results['methods'].values()]:
    for key in ('intervals', 'paired', 'n'):
      entry.pop(key, None)
  del results['bootstrap']
  report.validate_results(results)
  page = _PageParser()  # the page without drawing figures (they do not depend on intervals)
  page.feed(report.render_html(report.build_document(results, {})))
  rows = {r[0]: r for r in page.tables['methods-table'][1:]}
  lora = results['methods']['lora']
  assert rows['lora'][1] == f'{lora["target"]:.3f} [—]'
  assert rows['lora'][4] == f'{100 * lora["forget"]:.1f} [—]'
  assert rows['lora'][5] == '—'
  assert rows['base'][1] == f'{results["base"]["target"]:.3f} [—]'
  summary = page.sections['summary']
  assert 'No interval could be computed, so no difference can be told from noise.' in summary
  assert 'No bootstrap interval ([—]) for: base, ' + ', '.join(METHODS) in summary
  facts = dict(page.tables['summary-table'][1:])
  assert facts['Target gain within noise'] == 'no interval'
  assert facts['Median interval width (points)'] == ('task scores n/a, target gain n/a, forget n/a')
  assert 'task-deltas-table' not in page.tables
  assert [r[2] for r in page.tables['tasks-table'][1:]] == ['—'] * 5
  table = report.print_summary_table(results)
  assert table.splitlines()[3].split()[:3] == [
    'full',
    f'{results["methods"]["full"]["target"]:.3f}',
    '[—]',
  ]


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
  assert rows[0] == ['Task', 'Kind', 'n', 'base', *METHODS]
  tasks = [r[0] for r in rows[1:]]
  assert tasks == [*results['target_tasks'], *results['general_tasks']]
  lora_column = rows[0].index('lora')
  lora = results['methods']['lora']
  for row in rows[1:]:
    assert row[2] == f'{N_PER_TASK[row[0]]:,}'
    assert row[lora_column] == _ci(lora['tasks'][row[0]], lora['intervals']['tasks'][row[0]])


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


def test_drift_study_tables(full_report):
  results, _, paths = full_report
  study = results['drift_study']
  page = parse(paths['html'])
  rows = page.tables['drift-study-table'][1:]
  assert [r[0] for r in rows] == study['adapters']
  assert [r[-1] != 'no' for r in rows] == [a in study['flagged'] for a in study['adapters']]
  sensitivity = page.tables['drift-sensitivity-table'][1:]
  assert [(r[0], r[1]) for r in sensitivity] == [
    (label, cfg) for label in ('arithmetic', 'instruction') for cfg in ('lr1', 'lr3')
  ]
  assert 'drift_study.png' in page.images


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
  'claims': 'Claims',
  'delta-activation-saes': 'Delta-activation SAEs',
  'sft-vs-rlvr': 'SFT vs RLVR',
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
    ('methods', 'lora', 'sweep', 'chosen_lr'),
    ('methods', 'oft', 'trajectory', 'step'),
    ('methods', 'vera', 'paired', 'forget', 'delta'),
    ('base', 'intervals', 'tasks'),
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
    (
      lambda r: r['methods']['lora']['sweep']['target'].pop(),
      "results['methods']['lora']['sweep']['target']: expected 5 values, got 4",
    ),
    (
      lambda r: r['methods']['lora']['sweep']['target_by_seed'].pop(),
      "results['methods']['lora']['sweep']['target_by_seed']: expected 3 rows, got 2",
    ),
    (
      lambda r: r['methods']['dora']['sweep']['lr'].__setitem__(0, 0.0),
      "results['methods']['dora']['sweep']['lr']: expected positive learning rates",
    ),
    (
      lambda r: r['methods']['oft']['trajectory']['cka'].pop(),
      "results['methods']['oft']['trajectory']['cka']: expected 5 values, got 4",
    ),
    (
      lambda r: r['methods']['lora']['paired']['forget'].__setitem__('within_noise', 'yes'),
      "results['methods']['lora']['paired']['forget']['within_noise']: expected true, false",
    ),
    (
      lambda r: r['base']['intervals'].__setitem__('target', [0.5, 0.4]),
      "results['base']['intervals']['target']: expected [lo, hi] with lo <= hi",
    ),
    (
      lambda r: r['methods']['pissa']['n'].__setitem__('nq_open', 0),
      "results['methods']['pissa']['n']['nq_open']: expected a positive example count",
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
  for method in results['methods'].values():  # two figures fewer to draw; not what is tested
    method.pop('sweep', None)
    method.pop('trajectory', None)
  lora = results['methods']['lora']
  lora['train_loss'] = np.asarray(lora['train_loss'])
  lora['target'] = np.float32(0.5)
  lora['trainable_params'] = np.int64(36_864)
  results['methods']['vera']['general'] = float('nan')
  results['methods']['vera']['forget'] = float('nan')
  paths = report.write_report(results, tmp_path)
  rows = {r[0]: r for r in parse(paths['html']).tables['methods-table']}
  assert rows['lora'][1].startswith('0.500 [') and rows['lora'][6] == '36,864'
  assert rows['vera'][3].startswith('n/a [') and rows['vera'][4].startswith('n/a [')


def test_print_summary_table(full_report, capsys):
  results, _, _ = full_report
  table = report.print_summary_table(results)
  lines = table.splitlines()
  assert lines[0].split() == ['method', 'target', 'general', 'forget', 'noise', 'params', 'time']
  assert set(lines[1].replace(' ', '')) == {'-'}
  assert [line.split()[0] for line in lines[2:]] == ['base', *METHODS]
  width = len(lines[1])
  assert all(len(line) <= width for line in lines)
  for name in ('oft', 'lora', 'vera'):
    m = results['methods'][name]
    noise = [k for k, names in (('gain', GAIN_NOISE), ('forget', FORGET_NOISE)) if name in names]
    cells = [
      name,
      *_ci(m['target'], m['intervals']['target']).split(),
      *_ci(m['general'], m['intervals']['general']).split(),
      *_pts(m['forget'], m['paired']['forget']['interval']).split(),
      ','.join(noise) or 'no',
      f'{m["trainable_params"]:,}',
      f'{m["train_time_s"]:.1f}',
      's',
    ]
    assert lines[2 + METHODS.index(name) + 1].split() == cells, name
  base = results['base']
  assert lines[2].split()[:5] == [
    'base',
    *_ci(base['target'], base['intervals']['target']).split(),
    *_ci(base['general'], base['intervals']['general']).split()[:1],
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


def test_summary_says_which_methods_did_not_learn_and_why():
  from peft_jax.report import document  # pylint: disable=g-import-not-at-top

  def method(interval, losses, sweep=None):
    entry = {
      'target': 0.1,
      'train_loss': losses,
      'paired': {'target_gain': {'delta': 0.02, 'interval': interval, 'within_noise': True}},
    }
    if sweep:
      entry['sweep'] = sweep
    return entry

  sweep = {'lr': [1e-3, 3e-3, 9e-3], 'target': [0.0, 0.05, 0.1], 'chosen_lr': 9e-3}
  methods = {
    'learned': method([0.01, 0.2], [2.0] * 10),
    'flat': method([-0.03, 0.06], [2.0] * 10 + [1.99] * 10),
    'edge': method([-0.01, 0.05], [2.0] * 10 + [1.0] * 10, sweep),
  }
  lines = document._not_learned(methods)  # pylint: disable=protected-access
  assert len(lines) == 2
  flat, edge = lines
  assert flat.startswith(
    'flat did not raise the Target beyond noise (gain +2.0 points, 95% interval'
  )
  assert '[-3.0, +6.0]' in flat and '2.000 -> 1.990 (-0.5%)' in flat and 'barely fitted' in flat
  assert '2.000 -> 1.000 (-50.0%)' in edge and '0.009: 0.100' in edge
  assert 'the kept rate is at the edge of the grid' in edge
