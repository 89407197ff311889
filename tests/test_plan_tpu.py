"""The planner through the TPU compiler: `launch.plan --topology` compiles the tiny config's training and sampling
steps for the 4 chips of a v5p:2x2x1 slice (libtpu's compile-only devices; no TPU), prints the compiler's per-chip
figures and the documented last line, and reports a step the compiler cannot fit by its own message, exit status 1.
Skipped where libtpu is not installed (requirements-tpu.txt)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from one4d_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (pip install -r requirements-tpu.txt)")


RUNS = {"train": ("--what=train", "--frames=5", "--height=64", "--width=96"),
        "sample": ("--what=sample", "--frames=5", "--height=64", "--width=96"),
        "offload": ("--what=train", "--frames=5", "--height=64", "--width=96",
                    "--config.model.remat=offload_block_input"),
        # materialised attention scores of 16 clips at 81x480x832: ~128 GiB per chip, more than a v5p's HBM
        "too_big": ("--what=sample", "--frames=81", "--height=480", "--width=832", "--batch=16",
                    "--config.model.attention=xla")}


@pytest.fixture(scope="module")
def plans() -> dict[str, subprocess.CompletedProcess]:
  """The planner runs, started together: each compile is single-threaded, so on 2 cores the three first took about
  as long as the training step alone (52 s instead of 72 one after the other, on an idle machine)."""
  started = {name: subprocess.Popen(
      [sys.executable, "-m", "launch.plan", "--config=configs/one4d.py:variant=tiny", "--topology=v5p:2x2x1", *args],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""})  # XLA_FLAGS reach the TPU compiler: no CPU-only ones
      for name, args in RUNS.items()}
  finished = {name: (p, *p.communicate()) for name, p in started.items()}
  return {name: subprocess.CompletedProcess(p.args, p.returncode, out, err) for name, (p, out, err) in finished.items()}


def figures(stdout: str) -> dict:
  """The per-chip figures of the report, in GiB, and its FLOP counts."""
  size = r"([\d.,]+) ([GM])iB"
  found = re.search(rf"per device: arguments {size}, outputs {size} \(aliased {size}\), temporaries {size}, "
                    rf"total {size}", stdout)
  flops = re.search(r"model FLOPs per device per step ([\d.e+]+) \(analytic\); XLA's count ([\d.e+]+)", stdout)
  assert found and flops and "implied step time at 40% MFU of 459 TFLOP/s" in stdout, stdout
  values = found.groups()
  gib = [float(v.replace(",", "")) / (1 if unit == "G" else 1024) for v, unit in zip(values[::2], values[1::2])]
  return {**dict(zip(("arguments", "outputs", "aliased", "temporaries", "total"), gib)),
          "model_flops": float(flops.group(1)), "xla_flops": float(flops.group(2))}


@pytest.mark.parametrize("what", ["train", "sample"])
def test_the_tpu_compiler_plans_the_step_for_a_v5p_slice(plans, what):
  """The config's mesh (fsdp -1) spans the slice's 4 chips; the chip's HBM (95 GiB) and peak (459 TFLOP/s) are the
  defaults; the figures are the TPU compiler's, positive and summing to the total; the last line is the total."""
  out = plans[what]
  assert out.returncode == 0, out.stdout + out.stderr
  lines = out.stdout.strip().splitlines()
  assert "v5p:2x2x1: mesh {'data': 1, 'fsdp': 4, 'context': 1, 'tensor': 1}" in lines[0]
  assert re.search(r"attention=(splash|flash),", lines[0]), lines[0]
  assert lines[1].startswith(f"{what} step on TPU v5:")
  assert "fits in 95 GiB per device" in lines
  total = float(lines[-1].removeprefix("per_device_total_gib="))
  f = figures(out.stdout)
  assert f["arguments"] > 0 and f["outputs"] > 0 and f["temporaries"] > 0 and 0 < total < 1
  assert f["total"] == pytest.approx(f["arguments"] + f["outputs"] - f["aliased"] + f["temporaries"], rel=0.01)
  assert f["total"] == pytest.approx(total, rel=0.01)
  if what == "train":
    assert f["aliased"] > f["outputs"] / 2  # the training state is donated: updated in place
  assert f["model_flops"] > 0 and f["model_flops"] / 10 < f["xla_flops"] < f["model_flops"] * 10
  assert out.stderr.strip() == "", out.stderr  # libtpu's start-up warnings silenced


def test_offloaded_activations_are_reported_as_host_memory(plans):
  """remat=offload_block_input keeps each block's input in the host's pinned memory: the compiler's host
  temporaries are reported on their own line (not in the HBM total); a step that offloads nothing has no such line."""
  out = plans["offload"]
  assert out.returncode == 0, out.stdout + out.stderr
  host = re.search(r"host memory per device: temporaries ([\d.,]+) ([GM])iB \(offloaded activations; not in the "
                   r"total\)", out.stdout)
  assert host and float(host.group(1)) > 0, out.stdout
  assert "host memory" not in plans["train"].stdout
  total = float(out.stdout.strip().splitlines()[-1].removeprefix("per_device_total_gib="))
  assert figures(out.stdout)["total"] == pytest.approx(total, rel=0.01)


def test_a_step_the_tpu_compiler_cannot_fit_is_its_message_and_exit_status_1(plans):
  """The compiler's RESOURCE_EXHAUSTED message, then what it asked for (the last line), exit status 1, no traceback."""
  out = plans["too_big"]
  assert out.returncode == 1, out.stdout + out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[1] == "DOES NOT FIT: the TPU compiler ran out of memory:"
  assert any("RESOURCE_EXHAUSTED" in line and "HBM" in line for line in lines[2:-2]), out.stdout
  needed = float(lines[-1].removeprefix("per_device_total_gib="))
  assert needed > 95 and re.fullmatch(r"needs at least [\d.,]+ GiB per device", lines[-2])
  assert float(lines[-2].split()[3]) == pytest.approx(needed, rel=1e-3)
  assert "Traceback" not in out.stderr


@pytest.mark.skipif(runtime.tpu_attached(), reason="a TPU is attached: JAX should start it")
def test_cpu_runs_do_not_start_libtpu_where_there_is_no_tpu():
  """With libtpu installed and no TPU, runtime.configure() keeps JAX on the CPU: no libtpu start-up, no warnings."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-c", "from one4d_jax import runtime; runtime.configure(); import jax; "
                        "print(jax.default_backend())"], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "PYTHONPATH": ROOT})
  assert (out.stdout.strip(), out.stderr.strip()) == ("cpu", "")
