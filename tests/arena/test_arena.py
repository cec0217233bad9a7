"""The arena end to end on a reduced preset: report sections, figures, resumability.

One session-scoped run builds a seconds-long world (suite, tokenizer, 4 pretraining steps,
HF export) and runs the smoke preset on it; the tests read what it wrote.
"""

import gc
import json
import math
import os
import warnings
from fractions import Fraction

import helpers_hf
import numpy as np
import pytest
from scipy import stats

from configs.arena import quick as arena_presets
from peft_jax.arena import context, pipeline, study
from peft_jax.arena import stages as stages_lib
from peft_jax.report import SECTIONS, claims
from peft_jax.report import rlvr as report_rlvr
from peft_jax.report import sae as report_sae
from peft_jax.train import trainer

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def smoke_config(base: str):
  """The smoke preset on ``base`` with its smallest SAE study (the ``sae`` stage) and RLVR
  phase (full FT: ``rlvr_full``, ``eval_rlvr_full``, ``passk``) turned on."""
  config = arena_presets.get_config('smoke')
  config.base = base
  config.sae.enabled = True
  config.rlvr.enabled = True
  return config


@pytest.fixture(scope='module')
def arena_run(tmp_path_factory, smoke_world):
  root = tmp_path_factory.mktemp('arena')
  config = smoke_config(smoke_world['hf_dir'])
  workdir = str(root / 'run')
  original = study.stage_eval

  def counting(ctx, tree, out_dir, *args, **kwargs):
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated module proxies warns
      warnings.simplefilter('ignore')
      alive = sum(isinstance(o, trainer.TrainResult) for o in gc.get_objects())
    # out_dir: the stage's work folder, '.<stage><TMP_MARK><pid>' (or the stage folder, in place)
    LIVE_TRAIN_RESULTS.append((os.path.basename(out_dir.rstrip(os.sep)).lstrip('.'), alive))
    return original(ctx, tree, out_dir, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(study, 'stage_eval', counting)
    results = pipeline.run_arena(config, workdir)
  return config, workdir, results


# (stage folder, TrainResults alive) at each call of study.stage_eval in the fixture's run.
LIVE_TRAIN_RESULTS = []


def test_one_methods_weights_in_memory_at_a_time(arena_run):
  """Every evaluated method's restored run is freed when the next one loads (the real preset
  ran out of 24 GiB holding all eight), so each eval stage sees only its own."""
  config, _, _ = arena_run
  seen = dict(LIVE_TRAIN_RESULTS)
  assert len(config.method_order) >= 8
  for method in config.method_order:
    name = next(n for n in seen if n.startswith(f'eval_{method}'))
    assert seen[name] <= 1, LIVE_TRAIN_RESULTS
  assert max(n for _, n in LIVE_TRAIN_RESULTS) <= 2, LIVE_TRAIN_RESULTS  # + an RLVR run


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
    # One compilation per method; a continued sweep run reuses the sweep's (then 0 here).
    assert len(train['train_loss']) == 4
    assert train['num_compiles'] == (0 if 'continued_sweep_run' in train else 1)
  # α = 0 of every path, of every method, is the base model itself.
  at_zero = {
    (entry[path]['general'][0], entry[path]['target'][0])
    for entry in results['methods'].values()
    for path in ('interpolation', 'rewind')
  }
  assert len(at_zero) == 1


def test_claims_from_the_stage_outputs(arena_run):
  config, workdir, results = arena_run
  found = results['claims']
  assert [c['id'] for c in found['claims']] == list(range(1, 9))
  assert all(c['verdict'] in claims.VERDICTS for c in found['claims'])
  # Claims 7 and 8 correlate over every method, with scipy's Spearman on the stage outputs.
  runner = stages_lib.StageRunner(workdir)
  base = runner.result('base_eval')
  forget = [base['general'] - runner.result(f'eval_{m}')['general'] for m in config.method_order]
  tests = {t['pair']: t for t in found['correlations']}
  for key, pair in (('procrustes', 'Procrustes vs Forget'), ('cka', 'CKA vs Forget')):
    values = [
      np.mean(runner.result(f'geometry_{m}')['activation'][key]) for m in config.method_order
    ]
    assert tests[pair]['n'] == len(config.method_order) == 8
    rho = stats.spearmanr(values, forget).statistic
    if np.isnan(rho):  # a constant side (every Forget equal at this size): no test
      assert tests[pair]['rho'] is None
    else:
      np.testing.assert_allclose(tests[pair]['rho'], rho, rtol=1e-12, atol=1e-15)
  markdown = open(os.path.join(workdir, 'report', 'index.md')).read()
  section = markdown.split('## Claims', 1)[1].split('\n## ', 1)[0]
  for claim in found['claims']:
    assert f'| {claim["id"]} | {claim["finding"]} |' in section
    assert f'| {claim["verdict"]}: ' in section


def test_sae_section_from_the_stage_outputs(arena_run):
  config, workdir, results = arena_run
  stage = stages_lib.StageRunner(workdir).result('sae')
  entry = results['sae']
  # One row per (rank, site) of the smoke block, each number the stage's own.
  assert entry['ranks'] == list(config.sae.ranks) and entry['sites'] == list(config.sae.sites)
  assert len(entry['rows']) == len(stage['rows']) == len(config.sae.ranks) * len(config.sae.sites)
  for row, study_row in zip(entry['rows'], stage['rows']):
    c = study_row['comparison']
    assert (row['adapter'], row['site']) == (study_row['adapter'], study_row['site'])
    assert row['mmcs']['value'] == c['mmcs']['value']
    assert c['mmcs']['value'] == pytest.approx(np.mean(c['per_feature']['max_cos']), rel=1e-12)
    assert row['divergence'] == c['divergence'] == 1.0 - c['mmcs']['value']
    assert row['mean_density'] == study_row['sae']['mean_density']
    assert row['one_to_one']['value'] == c['one_to_one']['mean_cosine']['value']
  # The claims: recomputed from the stage result with the base evaluation's bootstrap settings.
  settings = stages_lib.StageRunner(workdir).result('base_eval')['bootstrap']
  again = report_sae.compute_sae_claims(
    stage, resamples=settings['resamples'], seed=settings['seed']
  )
  assert json.dumps(entry['claims'], sort_keys=True) == json.dumps(again, sort_keys=True)
  rows = stage['rows']
  rho = stats.spearmanr([r['rank'] for r in rows], [r['sae']['mean_density'] for r in rows])
  density_rank = entry['claims']['correlations'][0]
  assert density_rank['pair'] == 'density vs rank over all rows' and density_rank['n'] == 4
  if np.isnan(rho.statistic):
    assert density_rank['rho'] is None
  else:
    np.testing.assert_allclose(density_rank['rho'], rho.statistic, rtol=1e-12, atol=1e-15)
  markdown = open(os.path.join(workdir, 'report', 'index.md')).read()
  section = markdown.split('## Delta-activation SAEs', 1)[1].split('\n## ', 1)[0]
  for claim in entry['claims']['claims']:
    assert f'| {claim["id"]} | {claim["finding"]} |' in section
  first = rows[0]
  mmcs = first['comparison']['mmcs']
  assert (
    f'| {first["adapter"]} | {first["rank"]} | {first["site"]} | {first["depth"]:.2f} | '
    f'{mmcs["value"]:.3f} [{mmcs["interval"][0]:.3f}, {mmcs["interval"][1]:.3f}] |'
  ) in section
  for name in report_sae.FIGURES:
    assert f'{name}.png' in section


def test_rlvr_section_from_the_stage_outputs(arena_run):
  config, workdir, results = arena_run
  runner = stages_lib.StageRunner(workdir)
  (m,) = config.rlvr.methods  # full: the changed LoRA rank below leaves the phase alone
  base, sft = runner.result('base_eval'), runner.result(f'eval_{m}')
  rl, run = runner.result(f'eval_rlvr_{m}'), runner.result(f'rlvr_{m}')
  passk = runner.result('passk')
  entry = results['rlvr']
  row = entry['methods'][m]
  assert list(entry['methods']) == [m]
  for name, ev in (('sft', sft), ('rlvr', rl)):
    assert row[name]['target'] == ev['tasks'][config.target]
    assert row[name]['general'] == ev['general']
    assert row[name]['forget'] == pytest.approx(base['general'] - ev['general'], abs=1e-15)
  forget = row['difference']['forget']
  assert forget['delta'] == pytest.approx(sft['general'] - rl['general'], abs=1e-12)
  assert row['difference']['target']['delta'] == pytest.approx(
    rl['tasks'][config.target] - sft['tasks'][config.target], abs=1e-12
  )
  # 2 GRPO steps, the early pass@k after step 1; the reward curve is the run's metrics.jsonl.
  assert (run['steps'], run['early_step']) == (row['steps'], row['early_step']) == (2, 1)
  logged = [json.loads(line) for line in open(os.path.join(run['run_dir'], 'metrics.jsonl'))]
  assert row['reward_mean'] == [m['reward_mean'] for m in logged] and len(logged) == 2
  assert all(0.0 <= r <= 1.0 for r in row['reward_mean'])
  # pass@k: 4 held-out prompts x 4 samples per model; the RLVR counts are the run's own.
  n, ks = config.rlvr.passk.num_samples, list(config.rlvr.passk.ks)
  assert passk['methods'][m]['early'] == run['passk']['early']
  assert passk['methods'][m]['late'] == run['passk']['late']
  curves = entry['passk']['methods'][m]
  stage_entries = [('base', passk['base'], entry['passk']['base'])] + [
    (name, passk['methods'][m][name], curves[name]) for name in ('sft', 'early', 'late')
  ]
  for name, stage, shown in stage_entries:
    assert len(stage['counts']) == config.rlvr.passk.num_prompts, name
    assert shown['counts'] == stage['counts'] and stage['num_samples'] == n
    exact = [
      float(np.mean([1 - Fraction(math.comb(n - c, k), math.comb(n, k)) for c in stage['counts']]))
      for k in ks
    ]
    # float64: n factors, each rounded in its division and in the product
    np.testing.assert_allclose(shown['curve'], exact, rtol=0, atol=2 * n * 2.3e-16)
    # the stage's float32 estimator (evals.scorers.pass_at_k, log space): n log1p terms, their
    # sum, the exp and the mean over prompts, each rounded to 2^-24 relative, at most 1 each
    float32 = [stage['pass_at_k'][f'pass@{k}'] for k in ks]
    np.testing.assert_allclose(float32, exact, rtol=0, atol=(2 * n + 4) * 2.0**-24)
  assert (curves['early']['step'], curves['late']['step']) == (1, 2)
  markdown = open(os.path.join(workdir, 'report', 'index.md')).read()
  section = markdown.split('## SFT vs RLVR', 1)[1].split('\n## ', 1)[0]
  assert '| ' + ' | '.join(report_rlvr.row_cells(m, row)) + ' |' in section
  late = ' | '.join(f'{v:.3f}' for v in curves['late']['curve'])
  assert f'| {m} | RLVR late | 2 | {late} |' in section
  for name in report_rlvr.FIGURES:
    assert f'{name}.png' in section


def test_rerun_skips_completed_stages_and_redoes_interrupted_ones(arena_run):
  config, workdir, _ = arena_run
  root = os.path.join(workdir, 'stages')
  # An interrupted run leaves a stage's temporary folder and no completed folder.
  stages_lib.shutil.rmtree(os.path.join(root, 'paths_lora'))
  os.makedirs(os.path.join(root, '.paths_lora.tmp-12345', 'partial'))
  stages_lib.shutil.rmtree(os.path.join(root, 'drift'))
  # The sae stage killed after its SAEs: no result, no study file, one SAE's outputs gone (its
  # checkpoint kept). It resumes in place and gives the same rows; no adapter is retrained.
  sae_dir = os.path.join(root, 'sae')
  first = json.load(open(os.path.join(sae_dir, 'result.json')))
  adapter = os.path.join(sae_dir, 'study', 'adapters', 'lora_r2', 'export', 'adapter')
  adapter_mtime = os.path.getmtime(os.path.join(adapter, 'adapter_model.safetensors'))
  one_sae = os.path.join(sae_dir, 'study', 'saes', 'lora_r4', 'layers_1.residual')
  for name in ('result.json', os.path.join('study', 'sae_study.json')):
    os.remove(os.path.join(sae_dir, name))
  for name in ('params.npz', 'metrics.json'):
    os.remove(os.path.join(one_sae, name))
  before = {
    name: os.path.getmtime(os.path.join(root, name, 'result.json'))
    for name in os.listdir(root)
    if not name.startswith('.') and os.path.exists(os.path.join(root, name, 'result.json'))
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
  assert redone == ['drift', 'paths_lora', 'sae']
  again = json.load(open(os.path.join(sae_dir, 'result.json')))
  # (wall times aside: the study's timings_s and the runner's seconds)
  strip = lambda r: json.dumps(
    {k: v for k, v in r.items() if k not in ('timings_s', 'seconds', 'memory')}, sort_keys=True
  )
  assert strip(again) == strip(first)
  assert os.path.getmtime(os.path.join(adapter, 'adapter_model.safetensors')) == adapter_mtime
  assert results['sae']['rows'] == report_sae.results_entry(again)['rows']
  assert results['methods']['lora']['interpolation']['alpha'] == list(config.paths.alphas)


def test_stage_runner_is_atomic(tmp_path):
  runner = stages_lib.StageRunner(str(tmp_path))

  def failing(out_dir):
    with open(os.path.join(out_dir, 'half.txt'), 'w') as f:
      f.write('partial')
    raise RuntimeError('killed mid-stage')

  with pytest.raises(RuntimeError):
    runner.run('stage', failing, config={'k': 1})
  assert not runner.done('stage') and not os.path.exists(runner.path('stage'))
  assert not [n for n in os.listdir(runner.root) if n.startswith('.')]  # no orphan left
  result = runner.run('stage', lambda out_dir: {'value': 3}, config={'k': 1})
  assert result['value'] == 3 and runner.done('stage')
  calls = []
  again = runner.run('stage', lambda out_dir: calls.append(1) or {'value': 4}, config={'k': 1})
  assert again['value'] == 3 and not calls and runner.skipped == ['stage']
  # A changed config slice recomputes the stage and, through its result digest, its dependants.
  runner.run('after', lambda out_dir: {'value': 10}, config={}, inputs=['stage'])
  decision = runner.decide('stage', {'k': 2})
  assert decision.action == 'run' and 'k: 1 -> 2' in decision.reason
  planned = stages_lib.plan(
    runner,
    [stages_lib.StageSpec('stage', {'k': 2}), stages_lib.StageSpec('after', {}, ('stage',))],
  )
  assert [(d.action, d.reason) for d in planned] == [
    ('run', 'config changed: k: 1 -> 2'),
    ('run', 'input stage changed: stage'),
  ]
  assert runner.run('stage', lambda out_dir: {'value': 5}, config={'k': 2})['value'] == 5
  assert runner.decide('after', {}, ['stage']).reason == 'input stage changed: stage'
  with pytest.raises(ValueError, match='invalid stage name'):
    runner.run('a/b', lambda out_dir: {}, config={})
  # An in-place stage made under another record is deleted, never resumed.
  os.makedirs(os.path.join(runner.path('inplace'), 'state'))
  stages_lib.files.write_json(
    os.path.join(runner.path('inplace'), stages_lib.RECORD_FILE),
    {'config': {'lr': 1}, 'config_digest': stages_lib.digest({'lr': 1}), 'inputs': {}},
  )
  assert runner.decide('inplace', {'lr': 1}, in_place=True).action == 'resume'
  seen = []
  runner.run(
    'inplace', lambda d: seen.append(sorted(os.listdir(d))) or {}, config={'lr': 2}, in_place=True
  )
  assert seen == [[stages_lib.RECORD_FILE]]


def test_train_time_is_summed_across_attempts(tmp_path):
  run_dir = str(tmp_path / 'run')
  os.makedirs(run_dir)
  # A killed attempt: started at t=1000, its last metrics line written at t=1060.
  stages_lib.files.write_json(
    os.path.join(run_dir, study.ATTEMPTS_FILE), [{'start': 1000.0, 'end': None}]
  )
  metrics = os.path.join(run_dir, 'metrics.jsonl')
  open(metrics, 'w').write('{}\n')
  os.utime(metrics, (1060.0, 1060.0))
  result, seconds = study.timed_attempt(run_dir, lambda: 'done')
  attempts = json.load(open(os.path.join(run_dir, study.ATTEMPTS_FILE)))
  assert result == 'done' and len(attempts) == 2 and attempts[0]['estimated']
  assert seconds == pytest.approx(60.0 + attempts[1]['end'] - attempts[1]['start'])


def test_budget_is_derived_from_the_data():
  config = arena_presets.get_config('custom')
  derived, why = pipeline.derive_budget(config, num_sequences=20, num_devices=8)
  train = derived.train
  # batch: largest power of two <= min(16, 20) = 16, a multiple of 8 devices; 3 epochs of 20
  # sequences -> ceil(60 / 16) = 4 steps; warmup a tenth of that, rounded down -> 0.
  assert (train.batch_size, train.total_steps, train.optimizer.warmup_steps) == (16, 4, 0)
  assert '20 packed training sequences' in why and '4 steps (3 epochs)' in why
  small, _ = pipeline.derive_budget(config, num_sequences=5, num_devices=1)
  assert (small.train.batch_size, small.train.total_steps) == (4, 4)
  with pytest.raises(ValueError, match='cannot fill one batch over 8 devices'):
    pipeline.derive_budget(config, num_sequences=5, num_devices=8)
  config.train.batch_size = 32
  with pytest.raises(ValueError, match='batch_size=32 exceeds the 20 packed'):
    pipeline.derive_budget(config, num_sequences=20, num_devices=1)


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


def test_sweep_keeps_the_best_validation_rate_and_its_run(arena_run):
  config, workdir, results = arena_run
  runner = stages_lib.StageRunner(workdir)
  sweep = runner.result('sweep_lora')
  centre = config.methods.lora.optimizer.peak_lr
  assert sweep['lr'] == pytest.approx([0.5 * centre, centre])
  assert sweep['split'] == 'validation' and sweep['validation_tasks'] == {'gsm': 2, 'nq': 2}
  best = max(range(2), key=lambda i: (sweep['target'][i], sweep['general'][i], -abs(i - 1)))
  assert sweep['chosen_index'] == best
  train = runner.result('train_lora')
  assert train['peak_lr'] == sweep['chosen_lr']
  # select_fraction 0.5: candidates stop at step 2 of the 4-step schedule; the kept one is
  # continued to step 4 as the final run, bit for bit the uninterrupted run at that rate.
  assert sweep['steps'] == train['selected_at_step'] == 2
  assert train['continued_sweep_run'] == f'sweep_lora/lr{sweep["chosen_index"]}_seed0/run'
  kept = sweep['runs'][sweep['chosen_index']]
  assert len(train['train_loss']) == 4 and train['train_loss'][1] == kept['final_loss']
  final_config = pipeline.method_train_config(
    config, 'lora', config.base, os.path.join(workdir, context.SPLITS_DIR, 'gsm_sft.jsonl')
  )
  final_config.optimizer.peak_lr = sweep['chosen_lr']
  uninterrupted = trainer.train(final_config, os.path.join(workdir, 'uninterrupted'))
  assert [loss for _, loss in uninterrupted.losses] == train['train_loss']
  assert train['num_compiles'] == 0  # the sweep's compiled step served the continuation
  assert not runner.done('sweep_full')  # config.sweep.methods = ('lora',)
  # The validation problems are held out of the SFT data and disjoint from the test split.
  split_dir = os.path.join(workdir, context.SPLITS_DIR)
  validation = [json.loads(line)['question'] for line in open(f'{split_dir}/gsm_validation.jsonl')]
  sft = open(f'{split_dir}/gsm_sft.jsonl').read()
  test = open(os.path.join(workdir, 'suite', 'targets', 'gsm_test.jsonl')).read()
  assert len(validation) == 2 and not any(q in sft or q in test for q in validation)


def test_trajectory_along_snapshots(arena_run):
  _, workdir, _ = arena_run
  traj = stages_lib.StageRunner(workdir).result('trajectory_lora')
  assert traj['step'] == [0, 2, 4]
  assert traj['distance'][0] == 0.0 and traj['distance'][-1] > 0.0
  assert traj['cka'][0] == pytest.approx(1.0, abs=1e-5)  # step 0 is the base itself
  assert len(traj['target']) == len(traj['general']) == 3


def test_changed_rank_reruns_exactly_that_method(arena_run):
  config, workdir, first = arena_run
  changed = smoke_config(config.base)
  changed.methods.lora.adapter.kwargs.rank = 4
  lora = sorted(n for n in os.listdir(os.path.join(workdir, 'stages')) if n.endswith('_lora'))
  assert lora == ['eval_lora', 'geometry_lora', 'paths_lora'] + [
    'sweep_lora',
    'train_lora',
    'trajectory_lora',
  ]
  planned = pipeline.plan_arena(changed, workdir)
  assert sorted(d.name for d in planned if d.action != 'reuse') == sorted(
    lora + ['drift', 'report']
  )
  why = {d.name: d.reason for d in planned}
  assert 'adapter.kwargs.rank: 8 -> 4' in why['train_lora']
  assert why['eval_lora'] == 'input stage changed: train_lora'
  results = pipeline.run_arena(changed, workdir, log=None)
  assert sorted(results['timing']['ran']) == sorted(lora + ['drift'])
  assert (
    results['methods']['lora']['trainable_params'] * 2
    == first['methods']['lora']['trainable_params']
  )
  assert results['methods']['dora'] == first['methods']['dora']
  markdown = open(os.path.join(workdir, 'report', 'index.md')).read()
  assert '"rank": 4' in markdown
  kept = json.load(open(os.path.join(workdir, 'config.1.json')))
  assert kept['methods']['lora']['adapter']['kwargs']['rank'] == 8
  assert json.load(open(os.path.join(workdir, 'config.json')))['methods']['lora']['adapter'][
    'kwargs'
  ] == {'rank': 4, 'alpha': 16.0}
  # Nothing changed: nothing reruns.
  assert all(d.action == 'reuse' for d in pipeline.plan_arena(changed, workdir)[:-1])
  assert pipeline.run_arena(changed, workdir, log=None)['timing']['ran'] == []
