"""PEFT file-format and layer-level parity: real ``peft`` (PyTorch) vs peft_jax on the same weights.

A tiny torch module whose linear layers carry Hugging Face decoder module names
(``model.layers.{i}.self_attn.q_proj`` ...; square, narrowing and widening layers) is wrapped by
``peft.get_peft_model``, its adapter params are perturbed (so nothing is an identity), saved with
``save_pretrained`` and loaded by ``load_adapter``. Every adapted layer's output must match the PEFT
layer's output (1e-5 relative; OFT 1e-4). The reverse direction exports with ``save_adapter`` and
loads with ``PeftModel.from_pretrained`` on a fresh base.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from torch import nn

from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted, matmul
from peft_jax.hub.peft_format import load_adapter, save_adapter

D_MODEL, D_KV, D_MLP = 16, 8, 24
TARGETS = ['q_proj', 'v_proj', 'up_proj', 'down_proj']


class _Attn(nn.Module):
  def __init__(self):
    super().__init__()
    self.q_proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
    self.v_proj = nn.Linear(D_MODEL, D_KV, bias=False)


class _Mlp(nn.Module):
  def __init__(self):
    super().__init__()
    self.up_proj = nn.Linear(D_MODEL, D_MLP, bias=False)
    self.down_proj = nn.Linear(D_MLP, D_MODEL, bias=False)


class _Layer(nn.Module):
  def __init__(self):
    super().__init__()
    self.self_attn = _Attn()
    self.mlp = _Mlp()


class _Inner(nn.Module):
  def __init__(self):
    super().__init__()
    self.layers = nn.ModuleList([_Layer(), _Layer()])


class TinyTorch(nn.Module):
  """Only the module names matter: layers are called one by one."""

  def __init__(self):
    super().__init__()
    self.model = _Inner()

  def forward(self, x):
    return x


def _base_torch():
  torch.manual_seed(0)
  return TinyTorch().eval()


def _jax_params(module: nn.Module) -> dict:
  params = {}
  for name, p in module.named_parameters():
    parts = name.split('.')  # model.layers.i.block.proj.weight
    layer = f'layers_{parts[2]}'
    params.setdefault(layer, {}).setdefault(parts[3], {})[parts[4]] = {
      'kernel': jnp.asarray(p.detach().numpy().T)
    }
  return params


MODULES = [
  f'model.layers.{i}.{blk}.{proj}'
  for i in range(2)
  for blk, proj in [
    ('self_attn', 'q_proj'),
    ('self_attn', 'v_proj'),
    ('mlp', 'up_proj'),
    ('mlp', 'down_proj'),
  ]
]


def _kernel_path(module_name: str) -> list[str]:
  parts = module_name.split('.')
  return [f'layers_{parts[2]}', parts[3], parts[4], 'kernel']


def _node(tree, module_name):
  node = tree
  for k in _kernel_path(module_name):
    node = node[k]
  return node


def _x(d_in, seed=1):
  return np.random.RandomState(seed).randn(2, 3, d_in).astype(np.float32)


def _max_rel(ours, ref):
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def _compare(peft_model, tree, tol, extra_tol=None):
  """Max relative output error over the adapted layers; each layer's error must be below
  ``tol`` plus ``extra_tol(name, x, ref)`` (a bound that depends on the layer's weights)."""
  errs, bounds = [], []
  for name in MODULES:
    layer = peft_model.get_submodule('base_model.model.' + name)
    d_in = layer.in_features
    x = _x(d_in)
    with torch.no_grad():
      ref = layer(torch.from_numpy(x)).numpy()
    node = _node(tree, name)
    assert isinstance(node, Adapted), name
    ours = jax.jit(matmul)(jnp.asarray(x), node)
    errs.append(_max_rel(ours, ref))
    bounds.append(tol + (extra_tol(name, x, ref) if extra_tol is not None else 0.0))
  assert all(e < b for e, b in zip(errs, bounds)), (errs, bounds)
  return max(errs)


def _perturb(peft_model, scale, seed=2):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if p.requires_grad:
        p.add_(scale * torch.randn(p.shape, generator=gen))


CONFIGS = {
  'lora': (
    lambda: peft.LoraConfig(
      r=4,
      lora_alpha=8,
      target_modules=TARGETS,
      rank_pattern={'down_proj': 2},
      alpha_pattern={'up_proj': 3},
    ),
    0.3,
    1e-5,
  ),
  'rslora': (
    lambda: peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=TARGETS),
    0.3,
    1e-5,
  ),
  'dora': (
    lambda: peft.LoraConfig(r=3, lora_alpha=6, use_dora=True, target_modules=TARGETS),
    0.3,
    1e-5,
  ),
  'pissa': (
    lambda: peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights='pissa', target_modules=TARGETS),
    0.1,
    1e-5,
  ),
  'vera': (lambda: peft.VeraConfig(r=6, target_modules=TARGETS), 0.3, 1e-5),
  'oft_neumann': (lambda: peft.OFTConfig(oft_block_size=4, r=0, target_modules=TARGETS), 0.1, 1e-4),
  'oft_exact': (
    lambda: peft.OFTConfig(oft_block_size=8, r=0, use_cayley_neumann=False, target_modules=TARGETS),
    0.1,
    1e-4,
  ),
  'oft_share': (
    lambda: peft.OFTConfig(oft_block_size=4, r=0, block_share=True, target_modules=TARGETS),
    0.1,
    1e-4,
  ),
  'oft_coft': (
    lambda: peft.OFTConfig(oft_block_size=4, r=0, coft=True, eps=1e-2, target_modules=TARGETS),
    0.1,
    1e-4,
  ),
  'miss': (lambda: peft.MissConfig(r=5, target_modules=TARGETS), 0.3, 1e-5),
  'miss_bat': (lambda: peft.MissConfig(r=4, init_weights='bat', target_modules=TARGETS), 0.1, 1e-5),
  'miss_mini': (
    lambda: peft.MissConfig(r=4, init_weights='mini', mini_r=4, target_modules=TARGETS),
    0.3,
    1e-5,
  ),
}

EXPECTED_METHOD = {
  'lora': api.LoRA,
  'rslora': api.LoRA,
  'dora': api.DoRA,
  'pissa': api.PiSSA,
  'vera': api.VeRA,
  'oft_neumann': api.OFT,
  'oft_exact': api.OFT,
  'oft_share': api.OFT,
  'oft_coft': api.OFT,
  'miss': api.MiSS,
  'miss_bat': api.MiSS,
  'miss_mini': api.MiSS,
}


@pytest.fixture(scope='module')
def base_params():
  return _jax_params(_base_torch())


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_peft_to_jax_and_back(name, base_params, tmp_path):
  make_config, scale, tol = CONFIGS[name]
  peft_model = peft.get_peft_model(_base_torch(), make_config())
  _perturb(peft_model, scale)
  peft_model.save_pretrained(tmp_path / 'peft')
  tree = load_adapter(base_params, str(tmp_path / 'peft'))
  assert isinstance(_node(tree, MODULES[0]).method, EXPECTED_METHOD[name])
  extra = None
  if name == 'pissa':
    # load_adapter re-derives the PiSSA residual W0 - s a0 b0 from W0 with its own (float64)
    # SVD, while PEFT's layer holds the residual of its float32 SVD: the outputs differ by
    # x (W_res - W_res_peft), bounded by |x|_2 times the SVD perturbation bound of the residual.
    extra = lambda module, x, ref: _pissa_residual_tol(
      np.asarray(_node(base_params, module), np.float64), 4, 1.0, x, ref
    )
  err = _compare(peft_model, tree, tol, extra)

  # Reverse: perturb in JAX, export, load with peft on a fresh (unmodified) base.
  def bump(path, leaf):
    del path
    if not isinstance(leaf, Adapted):
      return leaf
    keys = jax.random.split(jax.random.key(7), len(leaf.params))
    params = {
      k: v + 0.5 * scale * jax.random.normal(kk, v.shape)
      for kk, (k, v) in zip(keys, sorted(leaf.params.items()))
    }
    return Adapted(leaf.base, params, leaf.frozen, leaf.method)

  from peft_jax.adapters.inject import _map_tree

  tree2 = _map_tree(tree, bump)
  save_adapter(tree2, str(tmp_path / 'ours'), task_type=None)
  reloaded = peft.PeftModel.from_pretrained(_base_torch(), str(tmp_path / 'ours')).eval()
  err2 = _compare(reloaded, tree2, tol)
  print(f'\nPARITY {name}: peft->jax {err:.2e}, jax->peft {err2:.2e}')


def test_saved_keys_and_config(base_params, tmp_path):
  tree = api.inject(
    base_params, api.DoRA(rank=2, alpha=4), ['q_proj', 'down_proj'], jax.random.key(0)
  )
  save_adapter(tree, str(tmp_path), base_model_name_or_path='tiny')
  from safetensors.numpy import load_file

  tensors = load_file(str(tmp_path / 'adapter_model.safetensors'))
  assert tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'].shape == (2, 16)
  assert tensors['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'].shape == (16, 2)
  assert tensors['base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector'].shape == (
    16,
  )
  config = json.load(open(tmp_path / 'adapter_config.json'))
  assert config['peft_type'] == 'LORA' and config['use_dora'] and config['r'] == 2
  assert config['lora_alpha'] == 4 and config['base_model_name_or_path'] == 'tiny'


U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53


def svd_factor_bounds(w, rank, scale, delta):
  """How far PiSSA's factors can move when the SVD is of ``w + E`` with ``||E||_2 <= delta``.

  From the float64 singular values ``sv`` of ``w`` (treated as exact): Weyl gives
  ``|sv'_i - sv_i| <= delta``; Wedin's sin-theta theorem gives singular-vector angles
  ``sin t_i <= sqrt(2) delta / (gap_i - delta)``, with ``gap_i`` the distance from ``sv_i`` to
  every other singular value (0 included: a rectangular ``w`` has a null space), and a
  sign-aligned unit vector then moves by ``2 sin(t/2) <= sqrt(2) sin t``. For
  ``a_i = u_i sqrt(sv_i / s)`` (and ``b_i`` alike) that bounds ``||a'_i - a_i||_2``; the
  truncation ``s a b = sum_i sv_i u_i v_i^T`` moves by at most
  ``sum_i (delta + 2 (sv_i + delta) ||u'_i - u_i||)`` in spectral norm, which bounds every
  element of the residual.

  Returns ``(per-column bound of a [r], per-row bound of b [r], bound on max |W_res'-W_res|)``.
  """
  sv = np.linalg.svd(w, compute_uv=False)
  others = np.concatenate([sv, [0.0]])
  bound_a, bound_b, bound_res = [], [], 0.0
  for i in range(rank):
    gap = np.min(np.abs(np.delete(others, i) - sv[i]))
    assert gap > 2 * delta, f'singular value {i} is not separated: gap {gap} vs {delta}'
    move = np.sqrt(2) * np.sqrt(2) * delta / (gap - delta)  # ||u'_i - u_i||_2, sign-aligned
    root = np.sqrt((sv[i] + delta) / scale)
    shift = delta / np.sqrt(scale * sv[i])  # |sqrt(sv'/s) - sqrt(sv/s)|
    bound_a.append(move * root + shift)
    bound_b.append(move * root + shift)
    bound_res += delta + 2 * (sv[i] + delta) * move
  return np.array(bound_a), np.array(bound_b), bound_res


def _pissa_residual_tol(w64, rank, scale, x, ref):
  """Relative output tolerance from the float32-vs-float64 SVD residual bound (spectral norm)."""
  size, sigma = max(w64.shape), np.linalg.norm(w64, 2)
  _, _, peft_res = svd_factor_bounds(w64, rank, scale, size * 2 * U32 * sigma)
  _, _, ours_res = svd_factor_bounds(w64, rank, scale, size * 2 * U64 * sigma)
  x_norm = np.max(np.linalg.norm(np.asarray(x, np.float64).reshape(-1, w64.shape[0]), axis=1))
  return x_norm * (peft_res + ours_res) / np.max(np.abs(ref))


def test_pissa_factors_equal_peft(base_params):
  """PiSSA's factors vs a float64 reference from the definition and vs PEFT, within bounds that
  follow from the perturbation theory of the SVD (:func:`svd_factor_bounds`), not from one
  machine: ours are float32 roundings of a float64 SVD (backward error
  ``max(m, n) * eps64 * ||W||``); PEFT's torch float32 SVD has backward error up to
  ``max(m, n) * eps32 * ||W||`` (LAPACK's bound ``p(m, n) eps ||W||``, with ``p = max(m, n)``)."""
  base = _base_torch()
  w_orig = {n: p.detach().numpy().copy() for n, p in base.named_parameters()}
  peft_model = peft.get_peft_model(
    base, peft.LoraConfig(r=3, lora_alpha=6, init_lora_weights='pissa', target_modules=TARGETS)
  )
  rank, scale = 3, 2.0
  for name in MODULES:
    layer = peft_model.get_submodule('base_model.model.' + name)
    a_ref = layer.lora_A['default'].weight.detach().numpy().T
    b_ref = layer.lora_B['default'].weight.detach().numpy().T
    res_ref = layer.base_layer.weight.detach().numpy().T
    w0 = w_orig[name + '.weight'].T
    node = api.PiSSA(rank=rank, alpha=6).init(None, jnp.asarray(w0))
    a, b = np.asarray(node.params['lora_a']), np.asarray(node.params['lora_b'])
    res = np.asarray(node.base)
    # Float64 reference from the definition: a0 = U_r sqrt(S_r/s), b0 = sqrt(S_r/s) V_r^T.
    w64 = w0.astype(np.float64)
    u, sv, vt = np.linalg.svd(w64, full_matrices=False)
    root = np.sqrt(sv[:rank] / scale)
    a64, b64 = u[:, :rank] * root, root[:, None] * vt[:rank]
    res64 = w64 - scale * a64 @ b64

    def aligned(x, ref, axis):  # singular vectors are defined up to a sign per component
      sign = np.sign(np.sum(x * ref, axis=axis))
      return x * (sign if axis == 0 else sign[:, None])

    size = max(w0.shape)
    ours_a, ours_b, ours_res = svd_factor_bounds(w64, rank, scale, size * 2 * U64 * sv[0])
    peft_a, peft_b, peft_res = svd_factor_bounds(w64, rank, scale, size * 2 * U32 * sv[0])
    # Rounding the float64 results to float32 adds U32 relative per element; PEFT's float32
    # W - s A B adds (r + 2) U32 (|W| + s |A| |B|) per element.
    round_a = U32 * np.linalg.norm(a64, axis=0)
    round_b = U32 * np.linalg.norm(b64, axis=1)
    round_res = U32 * np.abs(res64)
    peft_round_res = (rank + 2) * U32 * (np.abs(w64) + scale * np.abs(a64) @ np.abs(b64))

    err_a = np.linalg.norm(aligned(a, a64, 0) - a64, axis=0)
    err_b = np.linalg.norm(aligned(b, b64, 1) - b64, axis=1)
    assert np.all(err_a <= ours_a + round_a), (name, err_a, ours_a + round_a)
    assert np.all(err_b <= ours_b + round_b), (name, err_b, ours_b + round_b)
    assert np.all(np.abs(res - res64) <= ours_res + round_res), name
    # PEFT's float32 SVD: within its own bound of the exact factors, so within the sum of both
    # bounds of ours.
    err_a = np.linalg.norm(aligned(a, a_ref, 0) - a_ref, axis=0)
    err_b = np.linalg.norm(aligned(b, b_ref, 1) - b_ref, axis=1)
    assert np.all(err_a <= ours_a + round_a + peft_a + round_a), (name, err_a, peft_a)
    assert np.all(err_b <= ours_b + round_b + peft_b + round_b), (name, err_b, peft_b)
    assert np.all(np.abs(res - res_ref) <= ours_res + round_res + peft_res + peft_round_res), name
    res_bound = ours_res + round_res + peft_res + peft_round_res
    print(
      f'\nPISSA {name}: a err/bound {np.max(err_a / (peft_a + ours_a + 2 * round_a)):.3f}, '
      f'res err/bound {np.max(np.abs(res - res_ref) / res_bound):.3f}'
    )


def test_wrong_base_shape_names_tensor(tmp_path):
  peft_model = peft.get_peft_model(_base_torch(), peft.LoraConfig(r=2, target_modules=TARGETS))
  peft_model.save_pretrained(tmp_path)
  torch.manual_seed(0)
  other = _jax_params(_base_torch())
  other['layers_0']['self_attn']['q_proj']['kernel'] = jnp.zeros((16, 32))
  with pytest.raises(ValueError, match=r'q_proj\.lora_B\.weight.*different base'):
    load_adapter(other, str(tmp_path))


def test_unknown_module_lists_available(base_params, tmp_path):
  peft_model = peft.get_peft_model(_base_torch(), peft.LoraConfig(r=2, target_modules=TARGETS))
  peft_model.save_pretrained(tmp_path)
  pruned = {'layers_0': base_params['layers_0']}
  with pytest.raises(ValueError, match=r'model\.layers\.1\..*available: model\.layers\.0'):
    load_adapter(pruned, str(tmp_path))


def test_init_distributions_match_peft():
  """Two-sample KS of our default inits against samples from PEFT's own initialisers."""
  from scipy import stats

  class Wide(nn.Module):
    def __init__(self):
      super().__init__()
      self.q_proj = nn.Linear(256, 64, bias=False)
      self.v_proj = nn.Linear(128, 96, bias=False)

  torch.manual_seed(0)
  base = Wide()
  w = {n: jnp.asarray(p.detach().numpy().T) for n, p in base.named_parameters()}
  lora_peft = peft.get_peft_model(Wide(), peft.LoraConfig(r=16, target_modules=['q_proj']))
  a_peft = lora_peft.base_model.model.q_proj.lora_A['default'].weight.detach().numpy()
  a_ours = np.asarray(
    api.LoRA(rank=16).init(jax.random.key(0), w['q_proj.weight']).params['lora_a']
  )
  assert stats.ks_2samp(a_peft.ravel(), a_ours.ravel()).pvalue > 0.01
  gauss_peft = peft.get_peft_model(
    Wide(), peft.LoraConfig(r=16, init_lora_weights='gaussian', target_modules=['q_proj'])
  )
  g_peft = gauss_peft.base_model.model.q_proj.lora_A['default'].weight.detach().numpy()
  g_ours = np.asarray(
    api.LoRA(rank=16, init_weights='gaussian')
    .init(jax.random.key(0), w['q_proj.weight'])
    .params['lora_a']
  )
  assert stats.ks_2samp(g_peft.ravel(), g_ours.ravel()).pvalue > 0.01

  vera_peft = peft.get_peft_model(
    Wide(), peft.VeraConfig(r=32, target_modules=['q_proj', 'v_proj'])
  )
  proj_a = vera_peft.base_model.vera_A['default'].numpy()  # [r, max_in]
  proj_b = vera_peft.base_model.vera_B['default'].numpy()  # [max_out, r]
  shared = api.VeRA(rank=32).init_shared(jax.random.key(1), [(256, 64), (128, 96)])
  assert proj_a.shape == tuple(shared['vera_a'].shape[::-1])
  assert proj_b.shape == tuple(shared['vera_b'].shape[::-1])
  assert stats.ks_2samp(proj_a.ravel(), np.asarray(shared['vera_a']).ravel()).pvalue > 0.01
  assert stats.ks_2samp(proj_b.ravel(), np.asarray(shared['vera_b']).ravel()).pvalue > 0.01
  layer = vera_peft.base_model.model.v_proj
  np.testing.assert_array_equal(
    layer.vera_lambda_d['default'].detach().numpy(), np.full(32, 0.1, np.float32)
  )
  assert not layer.vera_lambda_b['default'].detach().numpy().any()

  torch.manual_seed(0)
  dora_peft = peft.get_peft_model(
    Wide(), peft.LoraConfig(r=4, use_dora=True, target_modules=['v_proj'])
  )
  m_peft = dora_peft.base_model.model.v_proj.lora_magnitude_vector['default'].weight
  m_ours = api.DoRA(rank=4).init(jax.random.key(0), w['v_proj.weight']).params['magnitude']
  assert _max_rel(np.asarray(m_ours), m_peft.detach().numpy()) < 1e-6


def test_vera_projections_saved_once_even_as_host_copies(base_params, tmp_path):
  from safetensors.numpy import load_file

  tree = api.inject(base_params, api.VeRA(rank=4), ['q_proj', 'up_proj'], jax.random.key(0))
  host = jax.tree.map(np.array, tree)  # separate numpy copies per node, as after device_get
  save_adapter(host, str(tmp_path / 'a'), task_type=None)
  tensors = load_file(str(tmp_path / 'a' / 'adapter_model.safetensors'))
  assert sorted(k for k in tensors if 'vera_A' in k or 'vera_B' in k) == [
    'base_model.vera_A',
    'base_model.vera_B',
  ]
  assert tensors['base_model.vera_A'].shape == (4, 16)
  assert tensors['base_model.vera_B'].shape == (24, 4)  # max d_out over the targets
  nodes = api.adapted_nodes(host)
  path = sorted(nodes)[0]
  node = nodes[path]
  bad = dict(node.frozen, vera_a=node.frozen['vera_a'] + 1.0)
  parts = path.split('/')
  host[parts[0]][parts[1]][parts[2]]['kernel'] = Adapted(node.base, node.params, bad, node.method)
  with pytest.raises(ValueError, match="different shared projections 'vera_a'"):
    save_adapter(host, str(tmp_path / 'b'), task_type=None)
