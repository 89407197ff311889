"""TPU slices and GPU hosts you do not own, as devices to compile for: libtpu describes the chips of a named topology
(`v5p:2x2x2`: generation, chips along each axis), JAX's CUDA plugin `COUNT` GPUs of a kind it is told about
(`h100:8`: a GPU target description, no GPU or driver needed), as compile-only devices; a mesh over them sends
`jit(...).compile()` through the TPU or GPU compiler on this CPU host (maxtext's train_compile). What it reports is
what the chip would need; a program that does not fit a TPU fails to compile with the compiler's RESOURCE_EXHAUSTED
message (the GPU compiler does not check).

Needs libtpu (`pip install -r requirements-tpu.txt`) or the CUDA plugin and libraries (requirements-gpu.txt), not the
hardware. The chip table gives what the device descriptions do not (no peak; no HBM size on TPU): datasheet dense
bf16 TFLOP/s and HBM per chip.
"""

import dataclasses
import importlib.util
import os
import re

import jax

from one4d_jax import runtime

INSTALL = {"tpu": "pip install -r requirements-tpu.txt", "gpu": "pip install -r requirements-gpu.txt"}
PLUGINS = {"tpu": "libtpu", "gpu": "jax_cuda12_plugin"}  # the package each platform's compiler comes in


@dataclasses.dataclass(frozen=True)
class Chip:
  peak_tflops: float  # dense bf16, per chip
  hbm_gib: float  # per chip; the compiler keeps a little of it (v5e 15.75, v6e 31.25, v4 30.75, v5p 95.74 GiB usable)


CHIPS = {"v4": Chip(275.0, 32.0), "v5e": Chip(197.0, 16.0), "v5p": Chip(459.0, 95.0), "v6e": Chip(918.0, 32.0),
         "h100": Chip(989.0, 80.0)}  # H100 SXM: 79.14 GiB of it visible to CUDA (device_memory_size below)
# libtpu's and the GPU target's device_kind -> CHIPS
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e", "NVIDIA H100 80GB HBM3": "h100"}
# The chip configuration libtpu uses on live Cloud TPU hosts (JAX's aot_test): without it a v4 topology has one
# device per TensorCore (two per chip) instead of one per chip.
CHIP_CONFIGS = {"v4": "megacore", "v5p": "megachip_tccontrol", "v6e": "megachip_tccontrol"}


# What XLA's GPU compiler asks a device it cannot query (a GpuTargetConfigProto in text form): CUDA's device
# properties of an H100 SXM 80GB (as in XLA's xla/tools/hlo_opt/gpu_specs), and the cuDNN and CUDA runtime versions
# requirements-gpu.txt installed (9.28, 12.9), which decide the cuDNN fusions and PTX features the compiler may use.
GPU_TARGETS = {"h100": """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  core_count: 132  fpus_per_core: 128  clock_rate_ghz: 1.98
  threads_per_block_limit: 1024  threads_per_warp: 32  threads_per_core_limit: 2048
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  shared_memory_per_block: 49152  shared_memory_per_block_optin: 232448  shared_memory_per_core: 233472
  l2_cache_size: 52428800  memory_bandwidth: 3352320000000  device_memory_size: 84978434048
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 28 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}
GPUS_PER_HOST = 8  # an HGX board: a count above it is whole hosts of it


def installed(platform: str = "tpu") -> bool:
  return importlib.util.find_spec(PLUGINS[platform]) is not None


def devices(name: str, slices: int = 1) -> list:
  """The compile-only devices (one per chip) of `slices` slices of TPU topology `name`, slice by slice, or of the
  GPUs `name` names (GPU:COUNT)."""
  generation, _, shape = name.partition(":")
  if generation in GPU_TARGETS:
    return gpu_devices(generation, shape, slices)
  if generation not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise ValueError(f"topology {name!r} is neither GENERATION:AxB[xC] with GENERATION one of "
                     f"{sorted(set(CHIPS) - set(GPU_TARGETS))} (e.g. v5p:2x2x2, v6e:2x4) nor GPU:COUNT with GPU one "
                     f"of {sorted(GPU_TARGETS)} (e.g. h100:8)")
  if slices < 1:
    raise ValueError(f"slices={slices}: give at least 1")
  if not installed("tpu"):
    raise ValueError(f"planning for a TPU topology needs libtpu (about 700 MB, no TPU needed): {INSTALL['tpu']}")
  if not runtime.tpu_attached():
    # Without a TPU, libtpu's start-up cannot find the host's accelerator type and workers and says so on stderr;
    # any values silence it. What is compiled is decided by the topology name alone (same programs either way). The
    # lock libtpu takes for the chips it drives (/tmp/libtpu_lockfile) would keep a second planner from starting.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{generation}-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  options = {"chip_config_name": CHIP_CONFIGS[generation]} if generation in CHIP_CONFIGS else {}
  try:
    return topologies.get_topology_desc(name, platform="tpu", num_slices=slices, **options).devices
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f"libtpu cannot describe topology {name!r} x {slices} slices: {str(e).splitlines()[0]}") from e


def chip(device) -> Chip:
  """The CHIPS entry of a TPU device."""
  if device.device_kind not in DEVICE_KINDS:
    raise ValueError(f"no chip data for device kind {device.device_kind!r}; known: {sorted(DEVICE_KINDS)}")
  return CHIPS[DEVICE_KINDS[device.device_kind]]


def gpu_devices(gpu: str, count: str, slices: int = 1) -> list:
  """`count` GPUs of kind `gpu` (GPU_TARGETS), in hosts of up to GPUS_PER_HOST, as compile-only devices: the CUDA
  plugin builds them from the target description with no GPU or driver, and compiles for them once JAX's platform is
  the CPU (JAX's deviceless AOT test, jax-ml/jax#33542, in jax 0.10)."""
  n = int(count) if count.isdigit() else 0
  if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST):
    raise ValueError(f"GPU topology {gpu}:{count}: give the GPU count, 1 to {GPUS_PER_HOST} or whole hosts of "
                     f"{GPUS_PER_HOST} (e.g. {gpu}:8, {gpu}:16)")
  if slices != 1:
    raise ValueError(f"slices={slices} is for TPU topologies; for more GPUs give a larger count "
                     f"({gpu}:{GPUS_PER_HOST * slices})")
  if not installed("gpu"):
    raise ValueError("planning for GPUs needs JAX's CUDA plugin and CUDA libraries (about 5.5 GB, no GPU or driver "
                     f"needed): {INSTALL['gpu']}")
  if not runtime.backends_started():
    # The plugin starts without a GPU only where JAX's platforms exclude CUDA (else it stops at cuInit): compiled for
    # the GPUs, run nowhere.
    jax.config.update("jax_platforms", "cpu")
  from jax.experimental import topologies
  hosts = max(1, n // GPUS_PER_HOST)
  try:
    return topologies.get_topology_desc(platform="cuda", target_config=GPU_TARGETS[gpu],
                                        topology=f"1x{hosts}x{n // hosts}").devices
  except NotImplementedError as e:
    raise ValueError(f"the CUDA plugin did not start ({e}): JAX must start on the CPU (JAX_PLATFORMS=cpu) to plan "
                     "for GPUs") from e
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f"the CUDA plugin cannot describe {n} x {gpu}: {str(e).splitlines()[0]}") from e
