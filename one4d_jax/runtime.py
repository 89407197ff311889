"""How a process starts, before anything touches a JAX device: the XLA flags a CPU run needs, and joining a run of
several processes (a cluster, or N processes on one machine).

XLA reads `XLA_FLAGS` when JAX starts its backends (the first device query), not at `import jax`; launchers call
`configure()` then `initialize(...)` first thing. On a cluster, `jax.distributed.initialize()` reads the coordinator,
the process count and this process's id from the environment; on one machine they are given, and CPU devices of
different processes talk through gloo (`launch/local_cluster.py` starts such a run). After it, `jax.devices()` spans
every process and each process feeds its own devices' share of a global batch (`one4d_jax.sharding.global_batch`).
"""

import ctypes
import importlib.util
import os

import jax

# XLA's CPU backend has no bf16 matmul: it converts bf16 operands to f32, and while-loop-invariant code motion then
# hoists that conversion of every stacked layer weight out of the layer loop, an f32 copy of the whole frozen model
# (twice its bf16 size) held through the step, which no GPU or TPU program makes. CPU programs (runs and the
# planner's stand-ins for accelerators) compile without the pass.
CPU_ARTIFACT_FLAGS = ("--xla_disable_hlo_passes=while-loop-invariant-code-motion",)
# CPU runs also order instructions to save memory rather than for the CPU's thread concurrency, which keeps more of
# the per-layer f32 weight copies alive at once (1.3B training step at 5x64x96: 0.83 -> 0.74 GiB per device).
CPU_XLA_FLAGS = (*CPU_ARTIFACT_FLAGS, "--xla_cpu_enable_concurrency_optimized_scheduler=false")
# Programs that run once to draw random weights (tests, dry runs): LLVM's optimisation of the unrolled threefry code
# dominates their compile time (tiny VAE init 51 s -> 9 s, tiny DiT 10 s -> 4 s on 2 cores, the same values). Top-level jits only..
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin", "libtpu")


def backends_started() -> bool:
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


def set_xla_flags(*flags: str, device_count: int | None = None) -> None:
  """Add `flags` (and `device_count` fake CPU devices) to XLA_FLAGS; an error once the backends have started."""
  if backends_started():
    raise RuntimeError("XLA flags must be set before JAX starts its backends (before the first device query)")
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not (device_count and f.startswith("--xla_force_host_platform_device_count"))]
  extra = [f"--xla_force_host_platform_device_count={device_count}"] if device_count else []
  os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys([*kept, *extra, *flags]))


def tpu_attached() -> bool:
  """Whether this host has TPU chips (on its PCI bus), or JAX is told to start libtpu anyway (JAX_FORCE_TPU_INIT)."""
  from jax._src import hardware_utils
  return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0 or "JAX_FORCE_TPU_INIT" in os.environ


def runs_on_cpu() -> bool:
  """Whether this process's JAX will compute on the CPU: JAX_PLATFORMS says so, or no accelerator plugin is
  installed; libtpu alone (requirements-tpu.txt, the planner's TPU compiler) does not make a host without a TPU one."""
  platforms = os.environ.get("JAX_PLATFORMS", "") or jax.config.jax_platforms or ""
  if platforms:
    return platforms.split(",")[0] == "cpu"
  installed = [name for name in ACCELERATOR_PLUGINS if importlib.util.find_spec(name)]
  return not any(name != "libtpu" or tpu_attached() for name in installed)


def configure() -> None:
  """Compiler settings for where this process runs: CPU_XLA_FLAGS on the CPU, and the CPU as the only platform (with
  libtpu installed and no TPU, JAX would otherwise load libtpu to look for one: seconds, and its warnings on stderr);
  nothing on accelerators."""
  if runs_on_cpu() and not backends_started():
    set_xla_flags(*CPU_XLA_FLAGS)
    if not (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms):
      jax.config.update("jax_platforms", "cpu")


def _glibc():
  """The C library's malloc controls, or None where there is no glibc."""
  try:
    return ctypes.CDLL("libc.so.6")
  except OSError:
    return None


def return_large_frees_to_os() -> None:
  """Keep glibc from recycling freed tensor buffers inside its heap: after the first large free it raises its mmap
  threshold (up to 32 MiB), so later buffers of that size stay resident after `del` and RSS grows with the model."""
  if (libc := _glibc()) is not None:
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB, fixed


def release_free_memory() -> None:
  """Give the heap's free pages back to the OS (glibc's `malloc_trim`). XLA's compiler frees about 0.5 GiB after
  compiling the 1.3B training step, which glibc keeps in its free lists; trimmed, the step's own buffers do not land
  on top of it. A no-op where there is no glibc."""
  if (libc := _glibc()) is not None:
    libc.malloc_trim(0)


def initialize(cluster: bool = False, coordinator: str = "", num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Join the run: `cluster=True` takes everything from the environment; otherwise `coordinator` (HOST:PORT of
  process 0), `num_processes` and `process_id` must all be given. Without either, a single-process run: nothing to
  do."""
  given = [coordinator, num_processes, process_id]
  if cluster and any(v not in ("", None) for v in given):
    raise ValueError("give either --multihost (the cluster's environment) or --coordinator/--num_processes/"
                     "--process_id, not both")
  if not cluster and not any(v not in ("", None) for v in given):
    return
  if not cluster and any(v in ("", None) for v in given):
    raise ValueError(f"a local multi-process run needs --coordinator=HOST:PORT, --num_processes and --process_id; "
                     f"got coordinator={coordinator!r}, num_processes={num_processes}, process_id={process_id}")
  if not cluster and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices of different processes
  if cluster:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
