"""Test setup: 8 fake CPU devices (sharding tests), float32 matmuls at full precision (parity tests), and one
compilation cache for the session (its subprocesses included), so a program compiled by one test is not compiled
again by the next (launch tests run the same training step several times). Settings that change a compiled program
are environment variables, which subprocesses inherit: a launch in a subprocess then finds the programs an in-process
run compiled (the matmul precision is part of the program, hence of the cache key)."""

import atexit
import functools
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

# ONE4D_BLOCK_TORCH=1: an environment without the PyTorch stack (tests/test_without_torch.py runs the pure-JAX tests
# so, proving they need none of it).
TORCH_STACK = ("torch", "diffusers", "transformers", "peft", "safetensors.torch")
if os.environ.get("ONE4D_BLOCK_TORCH"):
  import importlib.abc
  import sys

  class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # None (the default): let the next finder look
      if name in TORCH_STACK or name.split(".")[0] in TORCH_STACK[:4]:
        raise ModuleNotFoundError(f"No module named {name!r} (ONE4D_BLOCK_TORCH)", name=name)

  sys.meta_path.insert(0, _NoTorch())

import importlib

import jax
import numpy as np
import pytest

from one4d_jax import runtime

runtime.configure()  # compiled as CPU runs are (runtime.CPU_XLA_FLAGS), whatever XLA_FLAGS the command line gave
assert jax.config.jax_default_matmul_precision == "highest", "set JAX_DEFAULT_MATMUL_PRECISION before importing jax"

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(scope="session")
def shared_dir():
  """`../shared` beside the checkout; tests that need it skip cleanly where it is absent."""
  if not os.path.isdir(SHARED):
    pytest.skip(f"../shared is not present ({os.path.abspath(SHARED)}): these tests read the real sample clips "
                "kept beside the checkout (README, Test)")
  return os.path.abspath(SHARED)


@pytest.fixture(scope="session")
def kitchen_clip(shared_dir):
  """The real 60-frame 7-Scenes clip of `../shared` the training-run tests train on."""
  return os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")


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


@functools.cache
def tiny_one4d():
  """A 2-layer tiny One4D whose LoRA B and links are random (trained-looking, so both branches interact) with
  sampling inputs for 2 clips of 2 latent frames at 4 x 6: (cfg, frozen, trainable, cond, text, negative, image).
  Built once per session (the sampling tests only read it)."""
  import jax.numpy as jnp

  from one4d_jax.models import one4d
  from one4d_jax.models.wan import dit
  dit_cfg = dit.preset("tiny").replace(num_layers=2)
  cfg = one4d.One4DConfig(dit_cfg, lora_rank=4, lora_alpha=8.0, link_layers=(0,))
  frozen = dit.init(dit_cfg, jax.random.key(0))
  trainable = one4d.init_trainable(cfg, dit.abstract_params(dit_cfg), jax.random.key(1))

  @jax.jit  # one program, not one per leaf shape
  def trained_looking(trainable):
    keys = iter(jax.random.split(jax.random.key(2), 1000))
    return jax.tree_util.tree_map_with_path(
        lambda p, a: 0.2 * jax.random.normal(next(keys), a.shape) if p[-1].key in ("b", "kernel") else a, trainable)
  trainable = trained_looking(trainable)
  rng = np.random.default_rng(0)
  cond = jnp.asarray(rng.standard_normal((2, 20, 2, 4, 6)).astype(np.float32))
  text = jnp.asarray(rng.standard_normal((2, 5, dit_cfg.text_dim)).astype(np.float32))
  negative = jnp.asarray(rng.standard_normal((1, 3, dit_cfg.text_dim)).astype(np.float32))
  image = jnp.asarray(rng.standard_normal((2, 257, dit_cfg.image_dim)).astype(np.float32))
  return cfg, frozen, trainable, cond, text, negative, image


# The slowest modules (compiles, training runs, launches in subprocesses), slowest first. Under `pytest -n N --dist
# loadscope` each module runs whole on one worker, in collection order once xdist's reordering (most tests first,
# which puts these few-test modules last) is off: started first, they overlap each other and the many quick modules
# fill the gaps after, instead of one of them running alone at the end.
SLOW_MODULES = ("test_faults.py", "test_generate.py", "test_sharding.py", "test_plan.py", "test_precompute.py",
                "test_multiprocess.py", "test_train_launch.py", "test_predict.py", "test_overfit.py",
                "test_without_torch.py")


def pytest_configure(config):
  if getattr(config.option, "dist", "no") == "loadscope":
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def optional_import(name: str):
  """The module, or None where it is not installed: tests that need it carry `needs_torch` and skip as a group."""
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


HAVE_TORCH = all(optional_import(name) is not None for name in TORCH_STACK)
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs the PyTorch reference stack (requirements-test.txt)")
