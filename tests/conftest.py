"""Test-wide setup: 8 fake CPU devices, set before JAX initialises any backend, and one persistent
JAX compilation cache for the session.

The cache: many tests compile the same programs (the tiny models' train steps and generation
loops, rebuilt per test from fresh closures, and the CLI subprocesses); with one on-disk cache per
session, set in the environment before pytest-xdist starts its workers, each distinct program
compiles once for the workers and the subprocesses together. Cached executables are XLA's own
serialised output for the same program on the same devices, so results do not change. A cache dir
given in the environment is used as is (and kept); the session's own is removed at exit.

XLA's CPU backend compiles without LLVM's expensive optimisations
(``--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true``, unless
XLA_FLAGS already sets an optimisation level). The suite's programs are tiny and compile-bound:
on 2 cores this takes the suite from 1491 s to 951 s (measured on AMD EPYC at load ~5). The HLO
passes (fusion, layout, sharding) are unchanged and the dots still go to the same Eigen/oneDNN
kernels; only the code generated for fused elementwise loops is less optimised, so the results
are the same float32 programs up to rounding order, which every parity bound already allows
(the bounds come from eps and conditioning, not from one build). Speed is measured in
``benchmarks/``, which run with XLA's defaults.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += (
    ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  )
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # the first process: pytest, or its controller
  _cache_dir = tempfile.mkdtemp(prefix='peft_jax_tests_jax_cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  # Every program, however quick to compile: the suite's are small and many.
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)
