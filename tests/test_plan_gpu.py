"""The planner through the GPU compiler: `launch.plan --topology=h100:8` compiles the tiny config's sampling step in
bf16, with cuDNN's fused attention as `auto` runs on a GPU, for 8 H100s (the CUDA plugin's compile-only devices; no
GPU or driver), and prints the compiler's per-GPU figures and the documented last line. The compile is skipped where
JAX's CUDA plugin is installed neither here nor in `.venv-gpu` beside the tests (CI installs requirements-gpu.txt
there: with the plugin, JAX looks for a GPU at start-up, so it stays out of the test venv). The training step goes through the same code as on TPU
(tests/test_plan_tpu.py) and takes 65 s here on 2 shared cores: its 14B figures are in the README, not a test."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from one4d_jax import topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_python() -> str | None:
  """A Python with JAX's CUDA plugin: this one, or the venv .ci/run makes for it."""
  if importlib.util.find_spec("jax_cuda12_plugin") is not None:
    return sys.executable
  venv = os.path.join(ROOT, ".venv-gpu", "bin", "python")
  return venv if os.path.exists(venv) else None


GPU_PYTHON = _gpu_python()
needs_gpu_compiler = pytest.mark.skipif(GPU_PYTHON is None, reason="JAX's CUDA plugin is not installed (pip install "
                                        "-r requirements-gpu.txt, or .ci/run's .venv-gpu)")


@needs_gpu_compiler
def test_the_gpu_compiler_plans_the_sampling_step_for_8_h100s():
  """The config's mesh (fsdp -1) spans the 8 GPUs; the H100's 80 GiB and 989 TFLOP/s are the defaults; attention
  `auto` is planned as cuDNN (bf16), which compiles only with the plugin's cuDNN; the figures are positive and sum to
  the total (last line)."""
  out = subprocess.run(
      [GPU_PYTHON, "-m", "launch.plan", "--config=configs/one4d.py:variant=tiny", "--topology=h100:8",
       "--what=sample", "--frames=5", "--height=64", "--width=96", "--config.model.dtype=bfloat16",
       "--config.model.param_dtype=bfloat16"], check=False, cwd=ROOT, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""})  # XLA_FLAGS reach the GPU compiler: no CPU-only ones
  assert out.returncode == 0, out.stdout + out.stderr
  lines = out.stdout.strip().splitlines()
  assert "h100:8: mesh {'data': 1, 'fsdp': 8, 'context': 1, 'tensor': 1}" in lines[0], lines[0]
  assert "attention=cudnn," in lines[0], lines[0]
  assert lines[1].startswith("sample step on NVIDIA H100 80GB HBM3:")
  assert "implied step time at 40% MFU of 989 TFLOP/s" in out.stdout and "fits in 80 GiB per device" in lines
  size = r"([\d.,]+) ([GM])iB"
  found = re.search(rf"per device: arguments {size}, outputs {size} \(aliased {size}\), temporaries {size}, "
                    rf"total {size}", out.stdout)
  assert found, out.stdout
  values = found.groups()
  sizes = [float(v.replace(",", "")) / (1 if unit == "G" else 1024) for v, unit in zip(values[::2], values[1::2])]
  gib = dict(zip(("arguments", "outputs", "aliased", "temporaries", "total"), sizes))
  total = float(lines[-1].removeprefix("per_device_total_gib="))
  assert gib["arguments"] > 0 and gib["outputs"] > 0 and gib["temporaries"] > 0 and 0 < total < 1
  parts = gib["arguments"] + gib["outputs"] - gib["aliased"] + gib["temporaries"]
  assert gib["total"] == pytest.approx(parts, rel=0.01)
  assert gib["total"] == pytest.approx(total, rel=0.01)
  assert out.stderr.strip() == "", out.stderr  # the plugin starts without a word on a host with no GPU


GRAD_AT_ODD_LENGTHS = """
import jax, jax.numpy as jnp
from one4d_jax import topology
from one4d_jax.models import attention
gpu = jax.sharding.SingleDeviceSharding(topology.devices("h100:1")[0])
for layers, tq, tk in [(None, 48, 257), (None, 49, 256), (None, 49, 257), (3, 49, 257)]:
  kernel = attention.get("cudnn") if layers is None else jax.vmap(attention.get("cudnn"))  # vmap: layers.stacked
  loss = lambda q, k, v: kernel(q, k, v).astype(jnp.float32).sum()
  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), in_shardings=(gpu,) * 3, out_shardings=(gpu,) * 3)
  qkv = [jax.ShapeDtypeStruct((layers, 2, t, 4, 64)[layers is None:], jnp.bfloat16) for t in (tq, tk, tk)]
  hlo = step.lower(*qkv).compile().as_text()
  assert "__cudnn$fmhaSoftmaxBackward" in hlo and '"mask_type": "PADDING"' in hlo, (layers, tq, tk)
print("compiled")
"""


@needs_gpu_compiler
def test_cudnn_attention_differentiates_at_odd_sequence_lengths_for_an_h100():
  """JAX 0.10.2's cuDNN attention refuses a backward at odd lengths ("Unsupported sequence length Q 48, KV 257.");
  the cudnn kernel pads to even lengths and masks the padded keys, so its gradient compiles to cuDNN's fused forward
  and backward with a padding mask (257 = I2V's CLIP tokens), also under vmap as the stacked layers' init runs it."""
  out = subprocess.run([GPU_PYTHON, "-c", GRAD_AT_ODD_LENGTHS], check=False, cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""})
  assert out.returncode == 0 and out.stdout.strip() == "compiled", out.stdout + out.stderr


def test_gpu_topology_names_are_checked_and_a_missing_plugin_is_one_install_line(monkeypatch):
  for name in ("h100:0", "h100:12", "h100:x8"):
    with pytest.raises(ValueError, match=r"give the GPU count, 1 to 8 or whole hosts of 8"):
      topology.devices(name)
  with pytest.raises(ValueError, match=r"slices=2 is for TPU topologies; .*\(h100:16\)"):
    topology.devices("h100:8", slices=2)
  monkeypatch.setattr(topology, "installed", lambda platform: False)
  with pytest.raises(ValueError, match=r"needs JAX's CUDA plugin .*: pip install -r requirements-gpu.txt$"):
    topology.devices("h100:8")
