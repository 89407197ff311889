"""TPU slices you do not own, as devices to compile for: libtpu describes the chips of a named topology (`v5p:2x2x2`:
generation, chips along each axis) as compile-only devices, and a mesh over them sends `jit(...).compile()` through
the TPU compiler on this CPU host (maxtext's train_compile). What it reports is what the chip would need, and a
program that does not fit fails to compile with the compiler's RESOURCE_EXHAUSTED message.

Needs libtpu (`pip install -r requirements-tpu.txt`), not a TPU. The chip table gives what the device description
does not (it has no HBM size or peak): datasheet dense bf16 TFLOP/s and HBM per chip.
"""

import dataclasses
import importlib.util
import os
import re

import jax

from one4d_jax import runtime

INSTALL = "pip install -r requirements-tpu.txt"


@dataclasses.dataclass(frozen=True)
class Chip:
  peak_tflops: float  # dense bf16, per chip
  hbm_gib: float  # per chip; the compiler keeps a little of it (v5e 15.75, v6e 31.25, v4 30.75, v5p 95.74 GiB usable)


CHIPS = {"v4": Chip(275.0, 32.0), "v5e": Chip(197.0, 16.0), "v5p": Chip(459.0, 95.0), "v6e": Chip(918.0, 32.0)}
# libtpu's device_kind -> CHIPS
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
# The chip configuration libtpu uses on live Cloud TPU hosts (JAX's aot_test): without it a v4 topology has one
# device per TensorCore (two per chip) instead of one per chip.
CHIP_CONFIGS = {"v4": "megacore", "v5p": "megachip_tccontrol", "v6e": "megachip_tccontrol"}


def installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def devices(name: str, slices: int = 1) -> list:
  """The compile-only devices (one per chip) of `slices` slices of topology `name`, slice by slice."""
  generation, _, shape = name.partition(":")
  if generation not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise ValueError(f"topology {name!r} is not GENERATION:AxB[xC] with GENERATION one of {sorted(CHIPS)} "
                     "(e.g. v5p:2x2x2, v6e:2x4)")
  if slices < 1:
    raise ValueError(f"slices={slices}: give at least 1")
  if not installed():
    raise ValueError(f"planning for a TPU topology needs libtpu (about 700 MB, no TPU needed): {INSTALL}")
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
