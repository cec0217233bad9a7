"""The bottom layer: small utilities every other package may use. ``common`` imports no other
``peft_jax`` package (only the standard library, NumPy, JAX, absl and ml_collections), so anything
may depend on it without cycles.

* :mod:`peft_jax.common.files`: atomic writes (JSON, JSONL, text, bytes, a whole directory).
* :mod:`peft_jax.common.trees`: '/'-joined key-path names, nested-dict flatten/unflatten.
* :mod:`peft_jax.common.lock`: the one-writer lock of a workdir.
* :mod:`peft_jax.common.axis_rules`: how a logical-axis rules table maps names to mesh axes
  (parameters and activations alike).
* :mod:`peft_jax.common.errors`, :mod:`peft_jax.common.cli`: run failures and how launchers
  report them.
"""
