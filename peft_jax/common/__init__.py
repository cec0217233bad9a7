"""The bottom layer: small OS-level utilities every other package may use.

``common`` imports no other ``peft_jax`` package (only the standard library, absl and
ml_collections), so anything may depend on it without cycles.
"""
