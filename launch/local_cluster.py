"""Start N processes of a command on this machine as one multi-process JAX run, for trying multi-host code without
a cluster: each process gets `--coordinator=localhost:PORT --num_processes=N --process_id=I` appended and
`--devices_per_process` fake CPU devices; their CPU collectives go through gloo.

  python -m launch.local_cluster --num_processes=2 --devices_per_process=4 -- \\
      python -m launch.train --config=configs/one4d.py:variant=tiny --workdir=runs/tiny \\
      --config.data.format=sevenscenes --config.data.paths='("../shared/data/sevenscenes_redkitchen_60f",)'

Output lines are prefixed with the process id. If one process fails, the others are stopped; the exit status is
the first non-zero one.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run(command: list[str], num_processes: int, devices_per_process: int, port: int | None = None,
        env: dict | None = None) -> int:
  """Run `command` as processes 0..N-1 of one JAX run; returns the exit status (0 when every process succeeded)."""
  port = port or free_port()
  base = dict(os.environ if env is None else env)
  kept = [f for f in base.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  base["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices_per_process}"])
  base.setdefault("JAX_PLATFORMS", "cpu")
  procs = [subprocess.Popen([*command, f"--coordinator=localhost:{port}", f"--num_processes={num_processes}",
                             f"--process_id={i}"], env=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(num_processes)]

  def relay(i, proc):
    for line in proc.stdout:
      sys.stdout.write(f"[{i}] {line}")
      sys.stdout.flush()

  threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  status = 0
  remaining = list(procs)
  while remaining:
    for p in list(remaining):
      try:
        code = p.wait(timeout=0.5)
      except subprocess.TimeoutExpired:
        continue
      remaining.remove(p)
      if code and not status:
        status = code
        for other in remaining:  # a dead peer would leave the others waiting in a collective forever
          other.terminate()
  for t in threads:
    t.join()
  return status


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run in every process")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --, e.g. -- python -m launch.train ...")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  return run(command, args.num_processes, args.devices_per_process, args.port)


if __name__ == "__main__":
  sys.exit(main())
