"""Sites, delta programs and CE-loss recovered: SAE reconstructions spliced into the model.

docs/SAE.md, "Sites" and "CE-loss recovered". A **site** names an activation of the decoder by its
intervention name (``peft_jax.models.decoder``): ``'layers_{i}/residual'`` (the residual stream
after layer ``i``) or ``'<module path>/out'`` (a linear module's output, e.g.
``'layers_1/mlp/down_proj/out'``).

The **delta** at a site (docs/METRICS.md, "Delta activations"):

* residual: ``Δh = h_adapted - h_base``, two forward passes on the same tokens;
* module: ``Δy = y_adapted - x_adapted W_0``, the adapter's own contribution (``s x A B`` for
  LoRA), from the adapted model's module input and output and the frozen base kernel.

**CE-loss recovered** (SAELens' ``ce_loss_score``): with ``L_clean`` the model's next-token loss,
``L_spliced`` the loss with the SAE's reconstruction replacing the site's activation and
``L_ablated`` the loss with the activation ablated,
``recovered = (L_ablated - L_spliced) / (L_ablated - L_clean)`` (1: the reconstruction loses
nothing; 0: no better than ablation). For a base SAE the model is the base model, the
reconstruction ``x̂ = SAE(x)`` and the ablation ``x = 0``. For a delta SAE the model is the
adapted model, the reconstruction ``base + SAE(Δ)`` and the ablation ``base`` (the delta removed
at that site only), with ``base = h_base`` (residual) or ``x_adapted W_0`` (module). SAEs work in
normalised coordinates ``(v - μ) c`` (:class:`~peft_jax.sae.delta.NormStats`); the splice maps
back: ``SAE(v) = decode(encode((v - μ) c)) / c + μ``. Losses are summed per sequence, so
intervals bootstrap over sequences.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from peft_jax.adapters.core import Adapted
from peft_jax.common import trees
from peft_jax.models.config import ModelConfig
from peft_jax.models.decoder import Decoder
from peft_jax.sae import sae as sae_lib

Array = jax.Array

_RESIDUAL = re.compile(r'layers_(\d+)/residual')
_MODULE = re.compile(r'(layers_(\d+)/(self_attn|mlp)/[a-z_]+)/out')


class Site(NamedTuple):
  """A parsed site name."""

  name: str
  kind: str  # 'residual' | 'module'
  layer: int
  module: str  # module path ('' for residual sites)

  @property
  def capture(self) -> str:
    """The decoder's capture name that records this site."""
    return 'residual' if self.kind == 'residual' else self.module


def parse_site(name: str, num_layers: int) -> Site:
  """``'layers_2/residual'`` or ``'layers_1/mlp/down_proj/out'`` -> :class:`Site`."""
  match = _RESIDUAL.fullmatch(name)
  if match:
    site = Site(name, 'residual', int(match.group(1)), '')
  else:
    match = _MODULE.fullmatch(name)
    if not match:
      raise ValueError(
        f"site {name!r} is neither 'layers_{{i}}/residual' nor a module output such as "
        "'layers_1/mlp/down_proj/out'"
      )
    site = Site(name, 'module', int(match.group(2)), match.group(1))
  if not 0 <= site.layer < num_layers:
    raise ValueError(f'site {name!r}: layer {site.layer} is outside [0, {num_layers})')
  return site


def base_kernel(tree: Any, site: Site) -> Array:
  """``W_0 [d_in, d_out]`` of an adapted module site (the ``Adapted`` node's frozen base)."""
  kernel = trees.get_path(tree, site.module)['kernel']
  if not isinstance(kernel, Adapted):
    raise ValueError(
      f'site {site.name!r}: {site.module} is not adapted in this params tree, so its module '
      'delta is zero; choose an adapted module'
    )
  return kernel.base


# ---------------------------------------------------------------------------------------------
# Activation programs.


@functools.lru_cache(maxsize=None)
def base_program(config: ModelConfig, sites: tuple[str, ...]):
  """Jitted ``(params, tokens, positions, segment_ids) -> {site: [B, T, d] float32}``."""
  model = Decoder(config)
  parsed = [parse_site(s, config.num_layers) for s in sites]
  capture = tuple(sorted({s.capture for s in parsed}))

  @jax.jit
  def forward(params, tokens, positions, segment_ids):
    _, caps = model.apply(
      {'params': params}, tokens, positions=positions, segment_ids=segment_ids, capture=capture
    )
    return {s.name: caps[s.name].astype(jnp.float32) for s in parsed}

  return forward


@functools.lru_cache(maxsize=None)
def delta_program(config: ModelConfig, sites: tuple[str, ...]):
  """Jitted ``(tree, base_values, tokens, positions, segment_ids) -> {site: Δ [B, T, d]}``.

  ``base_values`` is :func:`base_program`'s output on the same tokens (the residual sites'
  ``h_base``); module sites use ``y_adapted - x_adapted W_0`` with ``W_0`` from ``tree``.
  """
  model = Decoder(config)
  parsed = [parse_site(s, config.num_layers) for s in sites]
  capture = tuple(sorted({s.capture for s in parsed}))

  @jax.jit
  def forward(tree, base_values, tokens, positions, segment_ids):
    _, caps = model.apply(
      {'params': tree}, tokens, positions=positions, segment_ids=segment_ids, capture=capture
    )
    out = {}
    for s in parsed:
      if s.kind == 'residual':
        out[s.name] = caps[s.name].astype(jnp.float32) - base_values[s.name]
      else:
        x = caps[f'{s.module}/in'].astype(jnp.float32)
        w0 = base_kernel(tree, s).astype(jnp.float32)
        out[s.name] = caps[s.name].astype(jnp.float32) - x @ w0
    return out

  return forward


# ---------------------------------------------------------------------------------------------
# CE-loss recovered.


class SpliceSpec(NamedTuple):
  """The static part of a splice program (what changes the compiled program)."""

  site: str
  mode: str  # 'base' | 'delta'
  activation: str
  k: Any
  bandwidth: float


def reconstruct(params, v: Array, mean: Array, scale: Array, spec: SpliceSpec) -> Array:
  """``decode(encode((v - μ) c)) / c + μ`` in float32."""
  v = v.astype(jnp.float32)
  x = (v - mean) * scale
  f = sae_lib.encode(params, x, spec.activation, k=spec.k, bandwidth=spec.bandwidth)
  return sae_lib.decode(params, f) / scale + mean


def sequence_losses(logits: Array, tokens: Array, loss_mask: Array, segment_ids: Array):
  """Per-sequence next-token cross-entropy sums and counts ``([B], [B])``.

  Position ``t`` predicts ``tokens[t+1]`` where ``loss_mask[t+1]`` and both positions are in the
  same non-padding segment (the training loss's rule, peft_jax.train.loss).
  """
  targets = tokens[:, 1:]
  weights = loss_mask[:, 1:].astype(jnp.float32)
  same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  weights = weights * same.astype(jnp.float32)
  logits = logits[:, :-1].astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - picked) * weights, axis=1), jnp.sum(weights, axis=1)


@functools.lru_cache(maxsize=None)
def splice_program(config: ModelConfig, spec: SpliceSpec):
  """Jitted ``(tree, base_params, sae_params, mean, scale, tokens, positions, segment_ids,
  loss_mask) -> {'clean', 'spliced', 'ablated', 'count'}`` per-sequence sums ``[B]``.

  ``spec.mode='base'``: ``tree`` is the base params (``base_params`` unused); ``'delta'``:
  ``tree`` is the adapted tree and ``base_params`` the base (read for residual sites).
  """
  model = Decoder(config)
  site = parse_site(spec.site, config.num_layers)
  if spec.mode not in ('base', 'delta'):
    raise ValueError(f"splice mode must be 'base' or 'delta', got {spec.mode!r}")

  @jax.jit
  def losses(tree, base_params, sae_params, mean, scale, tokens, positions, segment_ids, mask):
    def run(params, interventions=None):
      return model.apply(
        {'params': params},
        tokens,
        positions=positions,
        segment_ids=segment_ids,
        interventions=interventions,
      )

    recon = lambda v: reconstruct(sae_params, v, mean, scale, spec)
    if spec.mode == 'base':
      spliced = {site.name: lambda y, x: recon(y)}
      ablated = {site.name: lambda y, x: jnp.zeros_like(y)}
    elif site.kind == 'residual':
      _, caps = model.apply(
        {'params': base_params},
        tokens,
        positions=positions,
        segment_ids=segment_ids,
        capture=('residual',),
      )
      h_base = caps[site.name].astype(jnp.float32)
      spliced = {site.name: lambda y, x: h_base + recon(y.astype(jnp.float32) - h_base)}
      ablated = {site.name: lambda y, x: h_base}
    else:
      w0 = base_kernel(tree, site).astype(jnp.float32)

      def splice_module(y, x):
        base = x.astype(jnp.float32) @ w0
        return base + recon(y.astype(jnp.float32) - base)

      spliced = {site.name: splice_module}
      ablated = {site.name: lambda y, x: x.astype(jnp.float32) @ w0}
    out = {}
    for name, interventions in (('clean', None), ('spliced', spliced), ('ablated', ablated)):
      out[name], count = sequence_losses(run(tree, interventions), tokens, mask, segment_ids)
    out['count'] = count
    return out

  return losses


def ce_recovered(clean: float, spliced: float, ablated: float) -> float:
  """``(L_ablated - L_spliced) / (L_ablated - L_clean)``; NaN when ablation changes nothing."""
  gap = ablated - clean
  if not abs(gap) > 0:
    return float('nan')
  return float((ablated - spliced) / gap)
