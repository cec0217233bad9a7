"""Sparse autoencoders and delta-activation analysis (docs/METRICS.md, "Sparse autoencoders (SAE)").

* :mod:`peft_jax.sae.sae`: pure-functional SAEs (ReLU, TopK, JumpReLU), loss, training.
* :mod:`peft_jax.sae.delta`: delta activations ``Δh = h_adapted - h_base`` from model captures.
* :mod:`peft_jax.sae.compare`: delta dictionary vs base dictionary (decoder cosines, matches,
  novelty, principal angles, code CKA, feature statistics).
* :mod:`peft_jax.sae.analysis`: :func:`delta_sae_study`, the whole study as a JSON-ready dict.
"""

from peft_jax.sae.analysis import DeltaStudyConfig, delta_sae_study
from peft_jax.sae.compare import (
  DictionaryComparison,
  FeatureStats,
  compare_dictionaries,
  decoder_cosine,
  decoder_subspace_angles,
  feature_cka,
  feature_statistics,
)
from peft_jax.sae.delta import (
  NormStats,
  collect_activations,
  collect_delta,
  delta_activations,
  module_delta,
  normalize_activations,
  select_tokens,
)
from peft_jax.sae.sae import (
  SAEConfig,
  SAEParams,
  activate,
  decode,
  encode,
  fraction_of_variance_unexplained,
  from_uncentered_encoder,
  init_sae,
  normalize_decoder,
  pre_activations,
  remove_parallel_decoder_grad,
  sae_loss,
  train_sae,
)
