"""The bottom layer: file and tree helpers every other package uses (imports no peft_jax package).

* :mod:`peft_jax.common.files`: atomic writes (JSON, JSONL, text, bytes, a whole directory).
* :mod:`peft_jax.common.trees`: '/'-joined key-path names, nested-dict flatten/unflatten.
"""
