"""``ModelConfig``: every switch of the one decoder (Llama 2/3, Mistral, Qwen2/2.5, Gemma 2)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

SUPPORTED_MODEL_TYPES = ('llama', 'mistral', 'qwen2', 'gemma2')
SUPPORTED_ROPE_TYPES = ('default', 'linear', 'llama3')
SUPPORTED_ACTIVATIONS = ('silu', 'gelu', 'gelu_pytorch_tanh', 'gelu_new')
LAYER_TYPES = ('full_attention', 'sliding_attention')
# scan_layers='auto' scans models at least this deep (off the CPU).
AUTO_SCAN_MIN_LAYERS = 16


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of :class:`peft_jax.models.Decoder` (hashable: static under jit).

  Attributes:
    vocab_size: number of token ids V.
    hidden_size: residual width d.
    intermediate_size: MLP width F.
    num_layers: number of decoder layers L.
    num_heads: query heads H.
    num_kv_heads: key/value heads K (GQA: H % K == 0, query head h reads kv head h // (H/K)).
    head_dim: per-head width hd (q_proj is ``[d, H*hd]``).
    rope_theta: RoPE base θ; inverse frequencies ``θ^(-2i/hd)``.
    rope_scaling: ``None`` or a tuple of ``(key, value)`` pairs (hashable form of HF's dict) with
      ``rope_type`` in SUPPORTED_ROPE_TYPES ('linear': ``factor``; 'llama3': ``factor``,
      ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``).
    rms_norm_eps: ε in ``x / sqrt(mean(x²) + ε)``.
    tie_word_embeddings: logits use ``embed_tokensᵀ``; no ``lm_head`` param.
    attention_bias: q/k/v projections carry a bias (Qwen2).
    hidden_act: MLP gate activation (SUPPORTED_ACTIVATIONS).
    model_type: one of SUPPORTED_MODEL_TYPES (HF ``model_type``).
    query_pre_attn_scalar: attention scale is ``query_pre_attn_scalar^-1/2`` when set, else
      ``hd^-1/2`` (Gemma 2).
    attn_logit_softcapping: ``c·tanh(s/c)`` on attention scores when set (Gemma 2).
    final_logit_softcapping: same on the output logits (Gemma 2).
    sliding_window: window W; a 'sliding_attention' layer lets query position p see key positions
      ``p - W < p' <= p``.
    layer_types: per layer 'full_attention' or 'sliding_attention' (length L).
    sandwich_norms: extra post-attention / pre- and post-feed-forward norms (Gemma 2).
    scale_embeddings: multiply embeddings by sqrt(d) (Gemma).
    norm_plus_one: RMSNorm multiplies by ``(1 + w)`` instead of ``w`` (Gemma).
    dtype: compute dtype name, 'float32' or 'bfloat16' (params keep their own dtype; norms,
      softmax and logits are float32).
    remat: rematerialise each layer in the backward pass (memory for compute).
    scan_layers: run the layers as one ``nn.scan`` over params stacked on a leading ``layers``
      axis (``peft_jax.common.stacking``) instead of unrolling them: True, False or 'auto'
      (scan for >= :data:`AUTO_SCAN_MIN_LAYERS` layers on an accelerator; never on CPU, where
      the scanned step was measured slower, BENCHMARKS.md). See :meth:`scan_period`.
    bos_token_id / eos_token_id / pad_token_id: special ids (eos may be a tuple of ids).
    max_position_embeddings: informational (written back to config.json).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: Optional[tuple[tuple[str, Any], ...]] = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  hidden_act: str = 'silu'
  model_type: str = 'llama'
  query_pre_attn_scalar: Optional[float] = None
  attn_logit_softcapping: Optional[float] = None
  final_logit_softcapping: Optional[float] = None
  sliding_window: Optional[int] = None
  layer_types: Optional[tuple[str, ...]] = None
  sandwich_norms: bool = False
  scale_embeddings: bool = False
  norm_plus_one: bool = False
  dtype: str = 'float32'
  remat: bool = False
  scan_layers: bool | str = False
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int | tuple[int, ...]] = None
  pad_token_id: Optional[int] = None
  max_position_embeddings: int = 4096

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
        f'ModelConfig.model_type={self.model_type!r} is not supported; supported: '
        f'{SUPPORTED_MODEL_TYPES}'
      )
    for name in (
      'vocab_size',
      'hidden_size',
      'intermediate_size',
      'num_layers',
      'num_heads',
      'num_kv_heads',
      'head_dim',
    ):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f'ModelConfig.{name} must be positive, got {getattr(self, name)}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f'ModelConfig.num_heads={self.num_heads} must be a multiple of '
        f'num_kv_heads={self.num_kv_heads}'
      )
    if self.hidden_act not in SUPPORTED_ACTIVATIONS:
      raise ValueError(
        f'ModelConfig.hidden_act={self.hidden_act!r}; supported: {SUPPORTED_ACTIVATIONS}'
      )
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"ModelConfig.dtype={self.dtype!r}; valid: 'float32', 'bfloat16'")
    if self.layer_types is None:
      kind = 'sliding_attention' if self.sliding_window else 'full_attention'
      object.__setattr__(self, 'layer_types', (kind,) * self.num_layers)
    object.__setattr__(self, 'layer_types', tuple(self.layer_types))
    if len(self.layer_types) != self.num_layers:
      raise ValueError(
        f'ModelConfig.layer_types has {len(self.layer_types)} entries, expected '
        f'num_layers={self.num_layers}'
      )
    bad = [t for t in self.layer_types if t not in LAYER_TYPES]
    if bad:
      raise ValueError(f'ModelConfig.layer_types has {bad[0]!r}; valid: {LAYER_TYPES}')
    if 'sliding_attention' in self.layer_types and not self.sliding_window:
      raise ValueError(
        'ModelConfig.layer_types has sliding_attention layers but sliding_window '
        f'is {self.sliding_window!r}'
      )
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, 'rope_scaling', tuple(sorted(self.rope_scaling.items())))
    if self.rope_scaling is not None:
      rope_type = self.rope_scaling_dict.get('rope_type', 'default')
      if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
          f'ModelConfig.rope_scaling rope_type={rope_type!r} is not supported; '
          f'supported: {SUPPORTED_ROPE_TYPES}'
        )
    if self.scan_layers not in (True, False, 'auto'):
      raise ValueError(f"ModelConfig.scan_layers={self.scan_layers!r}; valid: True, False, 'auto'")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, 'eos_token_id', tuple(self.eos_token_id))

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling or ())

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """EOS ids as a tuple (empty when unset)."""
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def scan_plan(self, backend: Optional[str] = None) -> tuple[int, str]:
    """``(period, reason)``: scan over blocks of ``period`` layers (0: unrolled) and why.

    Uniform layers scan one at a time; layer kinds that repeat with period 2 (Gemma 2's
    alternating sliding/full attention) scan as pairs; any other pattern runs unrolled. 'auto'
    decides by depth and ``backend`` (default ``jax.default_backend()``).
    """
    if self.scan_layers is False:
      return 0, 'scan_layers=False'
    if self.scan_layers == 'auto':
      if backend is None:
        import jax  # the backend is only asked for an 'auto' decision

        backend = jax.default_backend()
      if backend == 'cpu':
        return 0, "scan_layers='auto' on CPU (scanned steps were measured slower there)"
      if self.num_layers < AUTO_SCAN_MIN_LAYERS:
        return 0, (f"scan_layers='auto' with {self.num_layers} < {AUTO_SCAN_MIN_LAYERS} layers")
    kinds = self.layer_types
    for period in (1, 2):
      if self.num_layers % period == 0 and all(
        kinds[i] == kinds[i % period] for i in range(self.num_layers)
      ):
        return period, f'scanning blocks of {period} layer(s)'
    return 0, (
      f'layer kinds {kinds} neither uniform nor alternating with period 2 over '
      f'{self.num_layers} layers: unrolled'
    )

  @property
  def scan_period(self) -> int:
    """Layers per scanned block (0: the layers are unrolled); see :meth:`scan_plan`."""
    return self.scan_plan()[0]

  def replace(self, **changes: Any) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)
