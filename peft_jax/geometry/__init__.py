"""Geometry of fine-tuning: weight spectra, CSD, activation similarity, paths and trajectories.

Definitions: docs/METRICS.md (PEFT-Arena's spectra, CSD, activation geometry, paths; CKA, Procrustes, principal
angles). Kernels are Flax ``[d_in, d_out]`` by default (``layout='torch'`` for ``[d_out, d_in]``);
activations are token rows ``[..., d]``.
"""

from peft_jax.geometry.activations import (
  ActivationStatsState,
  PointwiseStats,
  activation_geometry,
  activation_stats_finalize,
  activation_stats_init,
  activation_stats_update,
  gram_distortion,
  linear_cka,
  linear_cka_debiased,
  pca_subspace_distance,
  pointwise_stats,
  principal_angles,
  procrustes_improvement,
  procrustes_residual,
  procrustes_rotation,
  raw_residual,
  subsample_tokens,
)
from peft_jax.geometry.csd import (
  CSDComparison,
  CSDResult,
  csd,
  csd_from_moments,
  csd_general_vs_target,
)
from peft_jax.geometry.embeddings import (
  embedding_drift,
  pairwise_cosines,
  similarity_rank_correlation,
  similarity_spearman_replicates,
)
from peft_jax.geometry.paths import (
  alpha_grid_params,
  best_tradeoff,
  evaluate_alpha_grid,
  evaluate_stacked,
  interpolate,
  linspace_alphas,
  method_path_grid,
  pareto_front,
)
from peft_jax.geometry.per_module import (
  activation_geometry_dict,
  flat_kernels,
  spectral_summary_tree,
)
from peft_jax.geometry.spectral import (
  SpectralSummary,
  retention_profile,
  singular_vector_alignment,
  spectral_smoothness,
  spectral_summary,
  stable_rank,
  update_energy_profile,
)
from peft_jax.geometry.trajectory import (
  activation_trajectory,
  params_distance_trajectory,
  stack_snapshots,
  weight_trajectory,
)
