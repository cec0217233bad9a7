"""Geometry of fine-tuning: weight spectra, CSD, activation similarity, paths and trajectories.

Definitions: docs/METRICS.md (PEFT-Arena's spectra, CSD, activation geometry, paths; CKA, Procrustes, principal
angles). Kernels are Flax ``[d_in, d_out]`` by default (``layout='torch'`` for ``[d_out, d_in]``);
activations are token rows ``[..., d]``.
"""

from peft_jax.geometry.activations import activation_geometry
from peft_jax.geometry.activations import activation_stats_finalize
from peft_jax.geometry.activations import activation_stats_init
from peft_jax.geometry.activations import activation_stats_update
from peft_jax.geometry.activations import ActivationStatsState
from peft_jax.geometry.activations import gram_distortion
from peft_jax.geometry.activations import linear_cka
from peft_jax.geometry.activations import linear_cka_debiased
from peft_jax.geometry.activations import pca_subspace_distance
from peft_jax.geometry.activations import pointwise_stats
from peft_jax.geometry.activations import PointwiseStats
from peft_jax.geometry.activations import principal_angles
from peft_jax.geometry.activations import procrustes_improvement
from peft_jax.geometry.activations import procrustes_residual
from peft_jax.geometry.activations import procrustes_rotation
from peft_jax.geometry.activations import raw_residual
from peft_jax.geometry.activations import subsample_tokens
from peft_jax.geometry.csd import csd
from peft_jax.geometry.csd import csd_from_moments
from peft_jax.geometry.csd import csd_general_vs_target
from peft_jax.geometry.csd import CSDComparison
from peft_jax.geometry.csd import CSDResult
from peft_jax.geometry.paths import alpha_grid_params
from peft_jax.geometry.paths import best_tradeoff
from peft_jax.geometry.paths import evaluate_alpha_grid
from peft_jax.geometry.paths import evaluate_stacked
from peft_jax.geometry.paths import interpolate
from peft_jax.geometry.paths import linspace_alphas
from peft_jax.geometry.paths import method_path_grid
from peft_jax.geometry.paths import pareto_front
from peft_jax.geometry.spectral import retention_profile
from peft_jax.geometry.spectral import singular_vector_alignment
from peft_jax.geometry.spectral import spectral_smoothness
from peft_jax.geometry.spectral import spectral_summary
from peft_jax.geometry.spectral import SpectralSummary
from peft_jax.geometry.spectral import stable_rank
from peft_jax.geometry.spectral import update_energy_profile
from peft_jax.geometry.trajectory import activation_trajectory
from peft_jax.geometry.trajectory import params_distance_trajectory
from peft_jax.geometry.trajectory import stack_snapshots
from peft_jax.geometry.trajectory import weight_trajectory
from peft_jax.geometry.per_module import activation_geometry_dict
from peft_jax.geometry.per_module import flat_kernels
from peft_jax.geometry.per_module import spectral_summary_tree
