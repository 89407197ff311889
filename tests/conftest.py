"""Test setup: 8 fake CPU devices (sharding tests), float32 matmuls at full precision (parity tests), and one
compilation cache for the session (its subprocesses included), so a program compiled by one test is not compiled
again by the next (launch tests run the same training step several times). Settings that change a compiled program
are environment variables, which subprocesses inherit: a launch in a subprocess then finds the programs an in-process
run compiled (the matmul precision is part of the program, hence of the cache key)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="one4d-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax
import numpy as np
import pytest

from one4d_jax import runtime

runtime.configure()  # compiled as CPU runs are (runtime.CPU_XLA_FLAGS), whatever XLA_FLAGS the command line gave
assert jax.config.jax_default_matmul_precision == "highest", "set JAX_DEFAULT_MATMUL_PRECISION before importing jax"

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture
def shared_dir():
  """`../shared` beside the checkout; tests that need it skip cleanly where it is absent."""
  if not os.path.isdir(SHARED):
    pytest.skip("../shared is not present")
  return os.path.abspath(SHARED)


@pytest.fixture(autouse=True)
def _torch_threads():
  try:
    import torch
  except ImportError:
    return
  torch.manual_seed(0)
  torch.set_num_threads(2)


def attention_inputs(tq, tk, n=2, heads=3, d=8, seed=0):
  """q [n, tq, heads, d], k and v [n, tk, heads, d] and an output cotangent, standard normal float32."""
  rng = np.random.default_rng(seed)
  q, cotangent = (rng.standard_normal((n, tq, heads, d)).astype(np.float32) for _ in range(2))
  k, v = (rng.standard_normal((n, tk, heads, d)).astype(np.float32) for _ in range(2))
  return q, k, v, cotangent


def value_and_grads(fn, q, k, v, cotangent):
  """fn(q, k, v) and the gradients of <fn(q, k, v), cotangent> w.r.t. q, k, v, in one jitted call."""
  def run(q, k, v):
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(cotangent)
  return jax.jit(run)(q, k, v)


# The slowest modules (compiles, training runs, launches in subprocesses), slowest first. Under `pytest -n N --dist
# loadscope` each module runs whole on one worker, in collection order once xdist's reordering (most tests first,
# which puts these few-test modules last) is off: started first, they overlap each other and the many quick modules
# fill the gaps after, instead of one of them running alone at the end.
SLOW_MODULES = ("test_faults.py", "test_generate.py", "test_sharding.py", "test_plan.py", "test_precompute.py",
                "test_multiprocess.py", "test_train_launch.py", "test_predict.py", "test_overfit.py")


def pytest_configure(config):
  if getattr(config.option, "dist", "no") == "loadscope":
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
