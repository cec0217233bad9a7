"""Fixtures of the reliability tests live in reliability_support (importable by a unique name)."""

from reliability_support import *  # noqa: F401,F403  (pytest collects the fixtures from here)
from reliability_support import jax_cache, launcher, reference_run  # noqa: F401
