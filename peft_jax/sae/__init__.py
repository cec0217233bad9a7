"""Sparse autoencoders and delta-activation analysis (docs/METRICS.md, "Sparse autoencoders (SAE)").

* :mod:`peft_jax.sae.sae`: pure-functional SAEs (ReLU, TopK, JumpReLU), loss, training.
* :mod:`peft_jax.sae.delta`: delta activations ``Δh = h_adapted - h_base`` from model captures.
* :mod:`peft_jax.sae.compare`: delta dictionary vs base dictionary (decoder cosines, matches,
  novelty, principal angles, code CKA, feature statistics).
* :mod:`peft_jax.sae.analysis`: :func:`delta_sae_study`, the whole study as a JSON-ready dict.
"""

from peft_jax.sae.analysis import delta_sae_study
from peft_jax.sae.analysis import DeltaStudyConfig
from peft_jax.sae.compare import compare_dictionaries
from peft_jax.sae.compare import decoder_cosine
from peft_jax.sae.compare import decoder_subspace_angles
from peft_jax.sae.compare import DictionaryComparison
from peft_jax.sae.compare import feature_cka
from peft_jax.sae.compare import feature_statistics
from peft_jax.sae.compare import FeatureStats
from peft_jax.sae.delta import collect_activations
from peft_jax.sae.delta import collect_delta
from peft_jax.sae.delta import delta_activations
from peft_jax.sae.delta import module_delta
from peft_jax.sae.delta import normalize_activations
from peft_jax.sae.delta import NormStats
from peft_jax.sae.delta import select_tokens
from peft_jax.sae.sae import activate
from peft_jax.sae.sae import decode
from peft_jax.sae.sae import encode
from peft_jax.sae.sae import fraction_of_variance_unexplained
from peft_jax.sae.sae import from_uncentered_encoder
from peft_jax.sae.sae import init_sae
from peft_jax.sae.sae import normalize_decoder
from peft_jax.sae.sae import pre_activations
from peft_jax.sae.sae import remove_parallel_decoder_grad
from peft_jax.sae.sae import sae_loss
from peft_jax.sae.sae import SAEConfig
from peft_jax.sae.sae import SAEParams
from peft_jax.sae.sae import train_sae
