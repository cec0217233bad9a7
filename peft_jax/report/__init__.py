"""The arena report: figures, an HTML page and its Markdown twin, from one results dict.

The arena pipeline reads its stage outputs into one results dict and calls::

  paths = peft_jax.report.write_report(results, workdir + "/report")
  print(peft_jax.report.print_summary_table(results))

`write_report` validates the dict, draws the figures (PNG, Agg), and writes ``index.html`` and
``index.md`` beside them; `print_summary_table` returns a fixed-width console table. Every
number shown comes from the dict; the report computes only means, ratios and differences of it.

Results schema
--------------
Scores are on a 0–1 scale. "optional" entries may be absent or ``None``; their section is then
rendered with a "Not run" note. Every other key is required, and a missing or malformed key raises
`ResultsSchemaError` (a `KeyError`) naming its path, e.g.
``missing required key results['methods']['lora']['forget']``. Lists may be numpy arrays.

.. code-block:: text

  results = {
    "title": str,                       # page title
    "created": str,                     # ISO 8601 time stamp of the run
    "base": {"target": float, "general": float, "tasks": {task: float},
             "n": {task: int},                                               # optional
             "intervals": {"target": [lo, hi] | None, "general": [lo, hi] | None,  # optional
                           "tasks": {task: [lo, hi] | None}}},
    "target_task": str,                 # name of the target domain trained on
    "general_tasks": [str], "target_tasks": [str],
    "methods": {                        # report order = dict order; at least one method
      name: {
        "target": float, "general": float,
        "forget": float,                # 0-1: general_base - general (shown in points)
        "tasks": {task: float},
        "n": {task: int}, "intervals": {...},  # optional, as the base's
        "paired": {"target_gain": diff, "forget": diff, "tasks": {task: diff}},  # optional
                   # diff = {"delta": float, "interval": [lo, hi] | None,
                   #         "within_noise": bool | None}  (95% paired bootstrap)
        "sweep": {"lr": [float > 0], "target": [...], "general": [...] (optional),  # optional
                  "chosen_lr": float, "split": str, "steps": int,
                  "seeds": [int] (optional), "target_by_seed": [[per lr] per seed] (optional)},
        "trajectory": {"step": [int], "distance": [...], "cka": [...],            # optional
                       "target": [...], "general": [...]},  # one value per step
        "trainable_params": int, "total_params": int (> 0),
        "train_time_s": float, "peak_memory_mb": float,
        "train_loss": [float per step],                                    # optional
        "interpolation": {"alpha": [...], "target": [...], "general": [...]},  # optional
        "rewind": {"alpha": [...], "target": [...], "general": [...],     # optional
                   "kind": "cayley" | "additive" | "magnitude_direction" | "gated"},
        "spectral": {"module": str, "retention": [float per singular index],  # optional
                     "energy": [same length], "summary": {name: float}},
        "activation": {"layers": [int], "cka": [...], "procrustes": [...],    # optional
                       "gram": [...]},            # one value per layer
        "csd": {"modules": [str], "general": [...], "target": [...],        # optional
                "ratio": [...]},                  # one value per module
      }},
    "disel_gates": {"layers": [module names],                                # optional
                    "general": [[mean gate per rank component] per module],
                    "target": [[...] per module]},      # same shape as general
    "bootstrap": {"resamples": int, "seed": int, "confidence": float},        # optional
    "drift": {"adapters": [names], "labels": {adapter: label},                # optional
              "tasks": [task names], "delta": [[float] adapter x task],
              "flagged": {adapter: [reason strings]}},  # flagged adapters are in adapters
    "claims": {"claims": [{"id": int, "finding": str, "rule": str, "evidence": str,  # optional
                           "reason": str, "verdict": "agrees" | "disagrees" | "inconclusive"}],
               "correlations": [{"pair": str, "n": int, "rho": float | None,
                                 "p": float | None, "interval": [lo, hi] | None}]},
               # peft_jax.report.claims.compute_claims of the stage outputs
    "sae": {"base": str, "ranks": [int], "sites": [str],                      # optional
            "rows": [{"adapter": str, "rank": int (in ranks), "site": str (in sites),
                      "kind": str, "layer": int, "depth", "mmcs_null", "divergence",
                      "mean_density", "dead_fraction": float,
                      "mmcs", "one_to_one", "l0", "fvu": ci, "reseed_mmcs": float | None,
                      "ce_loss_recovered": ci | None}],
            "base_rows": [{"site": str, "mean_density": float, "fvu", "l0": ci,
                           "reseed_mmcs": ci | None}],
            "claims": {as "claims" above}, "model", "tokens", "timings_s": dict},
            # ci = {"value": float, "interval": [lo, hi]}; peft_jax.report.sae.results_entry
            # of the arena's sae stage (docs/SAE.md)
    "rlvr": {"target_task": str, "resamples": int,                            # optional
             "methods": {name: {"sft": sc, "rlvr": sc,  # sc = {"target", "general", "forget":
                                # float, "intervals": {"target", "general": [lo, hi] | None}}
                                "difference": {"target": diff, "forget": diff} | None,
                                # RLVR − SFT, 95% paired bootstrap (diff as in "paired")
                                "forgets": "less" | "more" | "within noise" | "no interval",
                                "steps", "early_step": int, "train_time_s", "peak_lr": float,
                                "skipped_steps": int | None,  # optional: updates left out
                                # for want of signal (grpo.skip_no_signal)
                                "step": [int], "reward_mean": [float per step], "kl": [...]}},
             "passk": {"ks": [int, increasing], "num_samples", "num_prompts": int,
                       "base": pc, "methods": {name: {"sft": pc, "early": pc, "late": pc,
                                                      "late_minus_early": diff (at the largest k),
                                                      "late_vs_early": str}}}},
             # pc = {"counts": [int per prompt], "num_samples": int, "curve": [pass@k per k],
             #       "step": int (early, late)}; peft_jax.report.rlvr.results_entry
    "config": dict,                     # optional: the resolved config, shown as JSON
    "versions": {package: version str}, # optional
    "timing": {"total_s": float, "stages": {stage: seconds}},                 # optional
  }

Report sections (headings, in order): Summary, Stability–plasticity, Methods table,
[Learning-rate sweep], Paths, [Trajectory], Weight spectra, Activation geometry, CSD, DISeL gates,
Capability drift, Claims, Delta-activation SAEs, SFT vs RLVR, Training, Configuration, Versions & timing. The bracketed ones appear only when
some method has a ``sweep`` / ``trajectory``.

Formats: scores 3 decimals, Forget and gains (0-1 values) shown in points with 1 decimal,
parameter counts with thousands separators, NaN/inf as ``n/a``; an interval follows its value
in brackets (``0.440 [0.310, 0.560]``), ``[—]`` where the results have none.
"""

from peft_jax.report.console import print_summary_table
from peft_jax.report.document import FIGURE_FILES, OPTIONAL_SECTIONS, SECTIONS, build_document
from peft_jax.report.html import render_html, write_report
from peft_jax.report.markdown import render_markdown
from peft_jax.report.results import assemble_results, write_drift_heatmap
from peft_jax.report.schema import ResultsSchemaError, validate_results

__all__ = [
  'assemble_results',
  'write_drift_heatmap',
  'FIGURE_FILES',
  'OPTIONAL_SECTIONS',
  'ResultsSchemaError',
  'SECTIONS',
  'build_document',
  'print_summary_table',
  'render_html',
  'render_markdown',
  'validate_results',
  'write_report',
]
