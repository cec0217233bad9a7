"""peft_jax."""
