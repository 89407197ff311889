"""The README's planning table: `launch.plan` for the 14B DLC training and sampling steps on 8, 64 and 256 fake CPU
devices at 81x352x624 and 81x480x832, each in its own process (a device count is fixed per process).

  python benchmarks/plan_table.py [--only 8] [--what train]

Prints one markdown row per plan as it finishes. Each 14B compile takes about a minute on 2 cores (more with 256
devices) and a few GB of host memory.
"""

import argparse
import re
import subprocess
import sys
import time

# (devices, frames x height x width, what) -> mesh (data, fsdp, context), remat, context_parallel, batch (None: one
# example per data-parallel device: one micro-batch of the paper's accumulated batch of 32)
PLANS = [
    (8, "81x352x624", "train", (1, 4, 2), "full", "ulysses", None),
    (8, "81x480x832", "train", (1, 2, 4), "full", "ulysses", None),
    (8, "81x352x624", "sample", (1, 1, 8), "none", "ulysses", 1),
    (8, "81x480x832", "sample", (1, 1, 8), "none", "ulysses", 1),
    (64, "81x352x624", "train", (1, 32, 2), "full", "ulysses", None),
    (64, "81x480x832", "train", (1, 16, 4), "full", "ulysses", None),
    (64, "81x352x624", "sample", (8, 1, 8), "none", "ulysses", None),
    (64, "81x480x832", "sample", (8, 1, 8), "none", "ulysses", None),
    (256, "81x352x624", "train", (4, 32, 2), "full", "ulysses", None),
    (256, "81x480x832", "train", (4, 16, 4), "full", "ulysses", None),
    (256, "81x352x624", "sample", (32, 1, 8), "none", "ulysses", None),
    (256, "81x480x832", "sample", (32, 1, 8), "none", "ulysses", None),
]


def run(devices, size, what, mesh, remat, cp, batch, extra=()):
  frames, height, width = size.split("x")
  data, fsdp, context = mesh
  command = [sys.executable, "-m", "launch.plan", "--config=configs/one4d.py:variant=14b", f"--what={what}",
             f"--frames={frames}", f"--height={height}", f"--width={width}", f"--config.mesh.data={data}",
             f"--config.mesh.fsdp={fsdp}", f"--config.mesh.context={context}", "--config.mesh.tensor=1",
             f"--config.model.remat={remat}", f"--config.model.context_parallel={cp}", "--config.train.batch_size=-1",
             *extra]
  if batch:
    command.append(f"--batch={batch}")
  t0 = time.perf_counter()
  out = subprocess.run(command, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  text = out.stdout + out.stderr
  total = re.search(r"per_device_total_gib=([\d.]+)", text)
  if not total:
    return f"| {devices} | {size} | {what} | {mesh} | failed: {text.strip().splitlines()[-1][:120]} |"
  per_device = re.search(r"arguments ([\d.,]+) GiB.*temporaries ([\d.,]+) GiB", text)
  step = re.search(r"implied step time at .*: ([\d.]+) s", text)
  examples = re.search(r", (\d+) examples per step", text)
  return (f"| {devices} | {size} | {what} | data {data} x fsdp {fsdp} x context {context} | {remat} | {cp} | "
          f"{examples.group(1)} | {per_device.group(1)} | {per_device.group(2)} | **{float(total.group(1)):.1f}** | "
          f"{step.group(1)} | {seconds:.0f} s |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", type=int, nargs="*", help="device counts to plan (default: all)")
  parser.add_argument("--what", choices=["train", "sample"], help="only this step")
  args = parser.parse_args(argv)
  print("| devices | frames x H x W | step | mesh | remat | context parallel | examples per step | arguments GiB | "
        "temporaries GiB | total GiB per device | step at 40% MFU of 989 TFLOP/s (s) | compile |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for plan in PLANS:
    if (args.only and plan[0] not in args.only) or (args.what and plan[2] != args.what):
      continue
    print(run(*plan), flush=True)


if __name__ == "__main__":
  main()
