"""Running one program over several processes: on a cluster (TPU VM, SLURM, ...) or as N processes on one machine.

Call `initialize` before anything touches a JAX device. On a cluster, `jax.distributed.initialize()` reads the
coordinator, the process count and this process's id from the environment; on one machine they are given. CPU
devices talk through gloo, so a multi-process run works without an accelerator (`launch/local_cluster.py` starts
one). After it, `jax.devices()` spans every process and each process feeds its own devices' share of a global batch
(`one4d_jax.sharding.global_batch`).
"""

import jax


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
