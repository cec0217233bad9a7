"""run_sae_study end to end on a tiny random Llama: rows recomputed in float64 NumPy/SciPy from
the saved SAEs and stores, claims re-derived by their stated rules, resume without recompute."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats

from configs.sae import quick
from peft_jax import hub
from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted
from peft_jax.sae import collect, fit, store, study

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import helpers_hf  # noqa: E402  pylint: disable=g-import-not-at-top

SITES = ('layers_0/residual', 'layers_1/mlp/down_proj/out')


def _random_adapter(params, rank, path, seed):
  tree = api.inject(
    params, api.make_method('lora', rank=rank, alpha=2.0 * rank), ['q_proj', 'down_proj'],
    jax.random.key(seed),
  )  # fmt: skip
  rng = np.random.default_rng(seed)
  tree = jax.tree.map(
    lambda n: Adapted(n.base, {**n.params, 'lora_b': jnp.asarray(
      0.3 * rng.normal(size=n.params['lora_b'].shape), jnp.float32)}, n.frozen, n.method)
    if isinstance(n, Adapted) else n,
    tree, is_leaf=lambda n: isinstance(n, Adapted),
  )  # fmt: skip
  hub.save_adapter(tree, str(path))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('sae_study')
  base = helpers_hf.save_tiny_hf_model('llama', root / 'base')
  helpers_hf.save_tiny_tokenizer(base)
  _, params, _ = hub.load_pretrained(str(base))
  _random_adapter(params, 2, root / 'r2', 1)
  rng = np.random.default_rng(0)
  words = [w for w in helpers_hf.TOKENIZER_WORDS if w not in (':',)]
  rows = [
    {'prompt': ' '.join(rng.choice(words, 6)), 'completion': ' ' + ' '.join(rng.choice(words, 14))}
    for _ in range(60)
  ]
  data = root / 'sft.jsonl'
  data.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  config = quick.get_config()
  config.base = str(base)
  config.world = 'custom'
  config.data_path = str(data)
  config.adapters.ranks = (2, 4)
  config.adapters.targets = ('q_proj', 'down_proj')
  config.adapters.paths = {'lora_r2': str(root / 'r2')}
  config.data.update(dict(activation_rows=40, eval_fraction=0.25, seq_len=24, batch_rows=10))
  config.sites = SITES
  config.memory_budget_mb = 0.25
  config.sae.update(dict(expansion=1, l1_coeff=1.0, num_steps=100, batch_size=64, log_every=50,
                         dead_after=50, resample_every=50, resample_pool=256))  # fmt: skip
  config.compare.update(dict(subspace_k=8, block_rows=64, num_resamples=50, ce_sequences=0))
  calls = []

  def train_fn(overrides, run_dir):  # stands in for trainer.train: writes the PEFT export
    calls.append((overrides, run_dir))
    _random_adapter(
      params, overrides['adapter']['kwargs']['rank'], os.path.join(run_dir, 'export', 'adapter'), 2
    )

  workdir = str(root / 'work')
  result = study.run_sae_study(config, workdir, train_fn=train_fn, log=lambda m: None)
  return dict(config=config, workdir=workdir, result=result, calls=calls, train_fn=train_fn)


def test_adapters_trained_with_the_configured_lora(run):
  ((overrides, run_dir),) = run['calls']  # only lora_r4: lora_r2 came from config.adapters.paths
  assert run_dir.endswith(os.path.join('adapters', 'lora_r4'))
  assert overrides['adapter'] == dict(method='lora', targets=('q_proj', 'down_proj'),
                                      target_regex='', kwargs=dict(rank=4, alpha=8.0))  # fmt: skip
  assert overrides['export']['adapter'] and overrides['data']['path'].endswith(
    'adapter_train.jsonl'
  )
  with open(overrides['data']['path']) as f:
    assert sum(1 for _ in f) == 20  # 60 rows, 40 held out for activations


def _load(workdir, tag, site):
  d = os.path.join(workdir, 'saes', tag, collect.site_dir(site))
  with open(os.path.join(d, 'metrics.json')) as f:
    return {k: np.asarray(v, np.float64) for k, v in fit.load_params(os.path.join(d, 'params.npz')).items()}, json.load(f)  # fmt: skip


def _codes(p, x):
  return np.maximum((x - p['b_dec']) @ p['W_enc'] + p['b_enc'], 0.0)


def test_rows_equal_independent_recomputation(run):
  r, workdir = run['result'], run['workdir']
  json.loads(json.dumps(r))
  assert r['schema_version'] == 1 and len(r['rows']) == 4 and set(r['base_rows']) == set(SITES)
  acts = os.path.join(workdir, 'activations')
  for row in r['rows']:
    site = row['site']
    pd, md = _load(workdir, row['adapter'], site)
    pb, mb = _load(workdir, 'base', site)
    sd = store.ActivationStore(collect.store_path(acts, row['adapter'], site))
    sb = store.ActivationStore(collect.store_path(acts, 'base', site))
    start = r['tokens']['train']
    xd = sd.read(start).astype(np.float64) * np.sqrt(sd.d) / sd.mean_norm
    xb = sb.read(start).astype(np.float64) * np.sqrt(sb.d) / sb.mean_norm
    # Reconstruction metrics on the evaluation tokens.
    fd = _codes(pd, xd)
    res = xd - (fd @ pd['W_dec'] + pd['b_dec'])
    fvu = np.sum(res**2) / np.sum((xd - xd.mean(0)) ** 2)
    np.testing.assert_allclose(row['sae']['fvu']['value'], fvu, rtol=1e-3)
    np.testing.assert_allclose(row['sae']['mse']['value'], np.sum(res**2) / len(xd), rtol=1e-3)
    np.testing.assert_allclose(row['sae']['l0']['value'], np.mean(np.sum(fd > 0, 1)), rtol=1e-3)
    freq = np.mean(fd > 0, 0)
    assert row['sae']['dead_fraction'] == pytest.approx(np.mean(freq == 0), abs=2 / len(freq))
    lo, hi = row['sae']['fvu']['interval']
    assert lo <= row['sae']['fvu']['value'] <= hi
    # Decoder comparison of the alive features (frequencies as recorded).
    c = row['comparison']
    unit = lambda w: w / np.linalg.norm(w, axis=1, keepdims=True)
    dd = unit(pd['W_dec'][np.asarray(md['frequency']) > 0])
    bd = unit(pb['W_dec'][np.asarray(mb['frequency']) > 0])
    cos = np.abs(dd @ bd.T)
    np.testing.assert_allclose(c['mmcs']['value'], cos.max(1).mean(), rtol=1e-6)
    i, j = scipy.optimize.linear_sum_assignment(cos, maximize=True)
    np.testing.assert_allclose(c['one_to_one']['mean_cosine']['value'], cos[i, j].mean(), rtol=1e-6)
    k = c['principal_angles']['k']
    qd = np.linalg.svd(dd, full_matrices=False)[2][:k].T
    qb = np.linalg.svd(bd, full_matrices=False)[2][:k].T
    ref = np.sort(np.degrees(scipy.linalg.subspace_angles(qd, qb)))
    np.testing.assert_allclose(c['principal_angles']['angles_deg'], ref, atol=1e-4)
    # Code CKA on the same tokens (biased linear CKA, float64).
    a = fd - fd.mean(0)
    b = _codes(pb, xb)
    b = b - b.mean(0)
    cka = np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    np.testing.assert_allclose(c['code_cka']['value'], cka, rtol=1e-3)
    ce = row['sae']['ce']
    np.testing.assert_allclose(
      ce['ce_loss_recovered']['value'],
      (ce['loss_ablated'] - ce['loss_spliced']) / (ce['loss_ablated'] - ce['loss_clean']),
      rtol=1e-9,
    )
    assert ce['n_sequences'] == r['tokens']['eval_sequences']
    assert row['delta_norm_ratio'] == pytest.approx(sd.mean_norm / sb.mean_norm)


def test_claims_follow_their_rules(run):
  rows, claims = run['result']['rows'], run['result']['claims']
  rank = [r['rank'] for r in rows]
  density = [r['sae']['mean_density'] for r in rows]
  rho, p = scipy.stats.spearmanr(rank, density)
  got = claims['density_rises']['rank']
  assert got['rho'] == pytest.approx(rho) and got['p'] == pytest.approx(p) and got['n'] == 4
  assert got['holds'] == bool(rho > 0 and p < 0.05)
  weak = claims['weak_alignment']
  a = [
    (r['comparison']['mmcs']['value'] - r['comparison']['mmcs_null'])
    / (run['result']['base_rows'][r['site']]['reseed_mmcs']['value'] - r['comparison']['mmcs_null'])
    for r in rows
  ]
  assert weak['median_normalised_alignment'] == pytest.approx(np.median(a))
  assert weak['holds'] == bool(np.median(a) < 0.5) and weak['n'] == 4
  div = [r['comparison']['divergence'] for r in rows]
  rho, p = scipy.stats.spearmanr(rank, div)
  assert claims['divergence_stable']['rank_trend']['rho'] == pytest.approx(rho)


def test_rerun_resumes_without_recomputing(run):
  params_file = os.path.join(run['workdir'], 'saes', 'lora_r4', 'layers_0.residual', 'params.npz')
  mtime = os.path.getmtime(params_file)
  again = study.run_sae_study(run['config'], run['workdir'], train_fn=None, log=lambda m: None)
  assert os.path.getmtime(params_file) == mtime  # nothing retrained, no adapter trained either
  strip = lambda r: {k: v for k, v in r.items() if k != 'timings_s'}
  # (as JSON text: NaN claims statistics compare equal there)
  assert json.dumps(strip(again), sort_keys=True) == json.dumps(
    strip(run['result']), sort_keys=True
  )
  changed = run['config'].copy_and_resolve_references()
  changed.sae.l1_coeff = 2.0
  with pytest.raises(ValueError, match='different config'):
    study.run_sae_study(changed, run['workdir'], log=lambda m: None)
