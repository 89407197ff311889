"""Test setup: 8 fake CPU devices (sharding tests), float32 matmuls at full precision (parity tests)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

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
