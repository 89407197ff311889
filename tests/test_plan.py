"""The planner: its analytic FLOPs are the traced program's matmuls, the batch is really split over the devices, the
command prints its verdict with the documented last line and exit status, `auto` attention is planned as the target's
kernel, and TPU topology names are checked (the TPU compiler itself: test_plan_tpu.py)."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import one4d as one4d_config
from one4d_jax import flops, pipeline, plan, sharding, topology
from one4d_jax.models import attention, one4d
from one4d_jax.models.wan import dit
from one4d_jax.train import step as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIT = dit.preset("tiny").with_policy(attention="xla")
CFG = one4d.One4DConfig(DIT, lora_rank=4, lora_alpha=4.0, link_layers=(0, 1))  # a link after every block: the
GRID, CLIP = (3, 6, 10), 9                                                     # traced lax.cond always runs one


def shapes(batch=1):
  lat = jax.ShapeDtypeStruct((batch, 16, *GRID), jnp.float32)
  return {"rgb": lat, "xyz": lat, "cond": jax.ShapeDtypeStruct((batch, 20, *GRID), jnp.float32),
          "text": jax.ShapeDtypeStruct((batch, DIT.text_len, DIT.text_dim), jnp.float32),
          "clip": jax.ShapeDtypeStruct((batch, CLIP, DIT.image_dim), jnp.float32)}


def test_analytic_flops_are_the_matmuls_of_the_traced_forward_and_training_step():
  frozen = dit.abstract_params(DIT)
  trainable = jax.eval_shape(lambda: one4d.init_trainable(CFG, frozen, jax.random.key(0)))
  b = shapes()
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  tokens = math.prod(dit.token_grid(DIT, GRID))
  forward = jax.make_jaxpr(lambda f, tr, b, t: one4d.apply(f, tr, CFG, b["rgb"], b["xyz"], b["cond"], t, b["text"],
                                                           b["clip"]))(frozen, trainable, b, t)
  assert flops.jaxpr_dot_flops(forward) == flops.dlc_flops(CFG.base, tokens, 4, 2, CLIP)["total"]
  grad = jax.make_jaxpr(lambda tr, f, b: jax.value_and_grad(train_lib.loss_fn, has_aux=True)(
      tr, f, CFG, train_lib.TrainConfig(), b, jax.random.key(0)))(trainable, frozen, b)
  assert flops.jaxpr_dot_flops(grad) == flops.dlc_train_flops(CFG.base, tokens, 4, 2, CLIP)["total"]


def test_the_batch_is_split_over_the_data_parallel_devices():
  """One training step of 8 examples compiled for 8 devices does an eighth of the 1-device work per device."""
  c = one4d_config.get_config("variant=tiny")
  cfg = pipeline.model_config(c)
  tc = train_lib.TrainConfig()
  one, _ = plan.plan_train(cfg, tc, sharding.make_mesh(fsdp=1, devices=jax.devices()[:1]), 8, GRID)
  eight, _ = plan.plan_train(cfg, tc, sharding.make_mesh(fsdp=8), 8, GRID)
  assert eight.model_flops == pytest.approx(one.model_flops / 8)
  assert eight.xla_flops < one.xla_flops / 4  # XLA's count of the partitioned program
  assert eight.temp_bytes < one.temp_bytes


def run_plan(*args):
  return subprocess.run([sys.executable, "-m", "launch.plan", "--config=configs/one4d.py:variant=tiny",
                         "--config.mesh.fsdp=4", "--config.mesh.context=2", "--config.model.context_parallel=ring",
                         "--frames=5", "--height=64", "--width=96", *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""})


@pytest.mark.parametrize("what", ["train", "sample"])
def test_plan_command_prints_the_verdict_and_ends_with_the_total(what):
  """Exit status 0 when the step fits, 1 when it does not; the last line is the total either way."""
  out = run_plan(f"--what={what}", *(["--device_memory_gib=0.0001"] if what == "train" else []))
  assert out.returncode == (1 if what == "train" else 0), out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[-1].startswith("per_device_total_gib=") and float(lines[-1].split("=")[1]) > 0
  assert any(line.startswith("DOES NOT FIT" if what == "train" else "fits in 80 GiB") for line in lines)
  assert "context_parallel=ring" in lines[0] and "'context': 2" in lines[0]


def test_plan_command_names_bad_inputs_in_one_line():
  out = run_plan("--frames=6")
  assert out.returncode == 2 and out.stderr.strip() == "error: frames=6 is not 1 + 4k"


def test_auto_attention_is_the_target_kernel():
  """`auto` decides at trace time from the default backend (the CPU, also when compiling for a TPU topology), so the
  planner names the target's kernel: flash on fake CPU devices, splash on TPU once registered (flash before, and for
  ring attention, which needs flash's log-sum-exp); a kernel the config names is kept."""
  tpu = "splash" if "splash" in attention._KERNELS else "flash"
  assert plan.target_attention(DIT.with_policy(attention="auto"), "cpu") == "flash"
  assert plan.target_attention(DIT.with_policy(attention="auto"), "tpu") == tpu
  assert plan.target_attention(DIT.with_policy(attention="auto", context_parallel="ring"), "tpu") == "flash"
  assert plan.target_attention(DIT, "tpu") == "xla"
  # GPU: what `auto` runs there (cuDNN in bf16, xla in f32), flash under context parallelism as the model's `auto`
  assert plan.target_attention(DIT.with_policy(attention="auto", dtype="bfloat16"), "gpu") == "cudnn"
  assert plan.target_attention(DIT.with_policy(attention="auto", dtype="float32"), "gpu") == "xla"
  ulysses = DIT.with_policy(attention="auto", dtype="bfloat16", context_parallel="ulysses")
  assert plan.target_attention(ulysses, "gpu") == "flash"


def test_topology_names_are_checked_and_a_missing_libtpu_is_one_install_line(monkeypatch):
  with pytest.raises(ValueError, match=r"'v5p-8' is neither GENERATION:AxB\[xC\] .* nor GPU:COUNT"):
    topology.devices("v5p-8")
  monkeypatch.setattr(topology, "installed", lambda platform: False)
  with pytest.raises(ValueError, match=r"needs libtpu .*: pip install -r requirements-tpu.txt$"):
    topology.devices("v5p:2x2x1")


def test_the_tpu_compilers_out_of_memory_messages_name_what_the_step_needs():
  """Both forms libtpu writes: the heap check before buffer assignment (libtpu 0.0.42), and the memory-space summary
  with the largest allocations; other errors (a kernel's vmem) are not a plan's verdict."""
  short = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (128.23G) "
           "exceeds available HBM (95.74G).")
  assert plan.out_of_memory(RuntimeError(short)).needed_bytes == int(128.23 * 2 ** 30)
  summary = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 63.80G "
             "of 30.75G hbm. Exceeded hbm capacity by 33.05G.\n\nTotal hbm usage >= 65.05G:\n    reserved 1.25G\n"
             "    program 63.80G\n" + "  1. Size: 2.00G\n" * 60 + "=== Source Location Trace: ===\nx.cc:1")
  oom = plan.out_of_memory(RuntimeError(summary))
  assert oom.needed_bytes == int(65.05 * 2 ** 30)
  lines = oom.message.splitlines()
  assert len(lines) == 41 and lines[-1] == "... (24 more lines)" and "Source Location" not in oom.message
  assert plan.out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem.")) is None
  assert plan.out_of_memory(RuntimeError("INVALID_ARGUMENT: bad sharding")) is None
  assert plan.out_of_memory_report(oom)[-1] == "per_device_total_gib=65.05"
