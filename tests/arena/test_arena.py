"""The arena end to end on a reduced preset: report sections, figures, resumability.

One session-scoped run builds a seconds-long world (suite, tokenizer, 4 pretraining steps,
HF export) and runs the smoke preset on it; the tests read what it wrote.
"""

import json
import os

import helpers_hf
import pytest

from configs.arena import quick as arena_presets
from peft_jax.arena import context, pipeline
from peft_jax.arena import stages as stages_lib
from peft_jax.report import SECTIONS

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def arena_run(tmp_path_factory, smoke_world):
  root = tmp_path_factory.mktemp('arena')
  config = arena_presets.get_config('smoke')
  config.base = smoke_world['hf_dir']
  workdir = str(root / 'run')
  results = pipeline.run_arena(config, workdir)
  return config, workdir, results


def test_world_is_a_transformers_checkpoint(arena_run):
  config, _, _ = arena_run
  helpers_hf.assert_logits_match_transformers(config.base)


def test_every_section_and_method_in_the_report(arena_run):
  config, workdir, results = arena_run
  report_dir = os.path.join(workdir, 'report')
  html = open(os.path.join(report_dir, 'index.html')).read()
  markdown = open(os.path.join(report_dir, 'index.md')).read()
  for section in SECTIONS:
    title = section[1] if isinstance(section, tuple) else section
    assert title.replace('&', '&amp;') in html or title in html, title
    assert title in markdown, title
  assert set(results['methods']) == set(config.method_order)
  for method, entry in results['methods'].items():
    for key in ('interpolation', 'rewind', 'spectral', 'activation', 'csd'):
      assert key in entry, (method, key)
    assert len(entry['interpolation']['target']) == len(config.paths.alphas)
    assert len(entry['activation']['cka']) == 2  # layers of the smoke model
  assert 'Not run' not in html


def test_figures_are_valid_pngs(arena_run):
  _, workdir, _ = arena_run
  report_dir = os.path.join(workdir, 'report')
  html = open(os.path.join(report_dir, 'index.html')).read()
  images = [f for f in os.listdir(report_dir) if f.endswith('.png')]
  assert len(images) >= 8
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  for name in images:
    with open(os.path.join(report_dir, name), 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE, name
    pixels = matplotlib.image.imread(os.path.join(report_dir, name))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, name
    assert f'src="{name}"' in html, name


def test_numbers_come_from_stage_outputs(arena_run):
  _, workdir, results = arena_run
  runner = stages_lib.StageRunner(workdir)
  base = runner.result('base_eval')
  assert results['base']['general'] == base['general']
  for method, entry in results['methods'].items():
    evaluation = runner.result(f'eval_{method}')
    assert entry['tasks'] == evaluation['tasks']
    assert entry['forget'] == pytest.approx(base['general'] - evaluation['general'])
    paths = runner.result(f'paths_{method}')
    assert entry['interpolation']['general'] == paths['interpolation']['general']
    train = runner.result(f'train_{method}')
    assert entry['train_loss'] == train['train_loss']
    assert len(train['train_loss']) == 4 and train['num_compiles'] == 1
  # α = 0 of every path, of every method, is the base model itself.
  at_zero = {
    (entry[path]['general'][0], entry[path]['target'][0])
    for entry in results['methods'].values()
    for path in ('interpolation', 'rewind')
  }
  assert len(at_zero) == 1


def test_rerun_skips_completed_stages_and_redoes_interrupted_ones(arena_run):
  config, workdir, _ = arena_run
  root = os.path.join(workdir, 'stages')
  # An interrupted run leaves a stage's temporary folder and no completed folder.
  stages_lib.shutil.rmtree(os.path.join(root, 'paths_lora'))
  os.makedirs(os.path.join(root, '.paths_lora.tmp-12345', 'partial'))
  stages_lib.shutil.rmtree(os.path.join(root, 'drift'))
  before = {
    name: os.path.getmtime(os.path.join(root, name, 'result.json'))
    for name in os.listdir(root)
    if not name.startswith('.')
  }
  results = pipeline.run_arena(config, workdir)
  ran = json.load(open(os.path.join(root, 'report', 'result.json')))
  assert ran['paths']['html'].endswith('index.html')
  after = {
    name: os.path.getmtime(os.path.join(root, name, 'result.json'))
    for name in os.listdir(root)
    if not name.startswith('.') and name != 'report'
  }
  redone = sorted(n for n in after if before.get(n) != after[n])
  assert redone == ['drift', 'paths_lora']
  assert results['methods']['lora']['interpolation']['alpha'] == list(config.paths.alphas)


def test_stage_runner_is_atomic(tmp_path):
  runner = stages_lib.StageRunner(str(tmp_path))

  def failing(out_dir):
    with open(os.path.join(out_dir, 'half.txt'), 'w') as f:
      f.write('partial')
    raise RuntimeError('killed mid-stage')

  with pytest.raises(RuntimeError):
    runner.run('stage', failing)
  assert not runner.done('stage') and not os.path.exists(runner.path('stage'))
  result = runner.run('stage', lambda out_dir: {'value': 3})
  assert result['value'] == 3 and runner.done('stage')
  calls = []
  again = runner.run('stage', lambda out_dir: calls.append(1) or {'value': 4})
  assert again['value'] == 3 and not calls and runner.skipped == ['stage']
  with pytest.raises(ValueError, match='invalid stage name'):
    runner.run('a/b', lambda out_dir: {})


def test_custom_preset_reads_any_checkpoint_and_task_files(arena_run):
  smoke_config, workdir, _ = arena_run
  suite_dir = os.path.join(workdir, 'suite')
  config = arena_presets.get_config('custom')
  config.base = smoke_config.base
  config.target = 'word_problems'
  config.target_train_path = os.path.join(suite_dir, 'sft', 'gsm.jsonl')
  config.tasks = [
    dict(
      type='gsm8k',
      name='word_problems',
      kind='target',
      limit=3,
      path=os.path.join(suite_dir, 'targets', 'gsm_test.jsonl'),
    ),
    dict(
      type='nq_open',
      name='facts',
      limit=3,
      path=os.path.join(suite_dir, 'general', 'nq_test.jsonl'),
    ),
  ]
  ctx = context.build_context(config, str(os.path.join(workdir, 'custom')))
  assert [t.name for t in ctx.tasks] == ['word_problems', 'facts']
  assert [t.kind for t in ctx.tasks] == ['target', 'general']
  assert len(ctx.tasks[0].examples) == 3 and ctx.target_prompts
  assert ctx.suite_dir is None and ctx.target_train_path == config.target_train_path
  config.target = 'missing'
  with pytest.raises(ValueError, match="config.target='missing' is not an evaluated task"):
    context.build_context(config, str(os.path.join(workdir, 'custom')))
