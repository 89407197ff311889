"""Conversion streams: peak host memory is set by the write batch and the largest tensor, not the checkpoint size."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from checkpoints_convert import wan_dit  # noqa: E402
from one4d_jax.models.wan import dit  # noqa: E402

# 6 layers of width 1024: 385 MB in float32 over several shards.
CFG = dit.DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=6, text_dim=1024, freq_dim=256,
                    policy=dit.FLOAT32)
WRITE_MB = 16
FIXED_OVERHEAD = 32 * 2**20

MEASURE = r"""
import json, sys, threading, time, psutil
from checkpoints_convert import core
proc = psutil.Process()
core.convert("dit", sys.argv[1], sys.argv[3], dtype="fp32", progress=False)   # warm-up: orbax/tensorstore machinery
baseline = proc.memory_info().rss
peak, done = [baseline], [False]
def poll():
  while not done[0]:
    peak[0] = max(peak[0], proc.memory_info().rss)
    time.sleep(0.002)
thread = threading.Thread(target=poll); thread.start()
core.convert("dit", sys.argv[2], sys.argv[4], dtype="fp32", progress=False, write_mb=int(sys.argv[5]))
done[0] = True; thread.join()
print(json.dumps({"baseline": baseline, "peak": peak[0]}))
"""


def test_conversion_peak_memory_is_bounded_by_write_batch_not_checkpoint_size(tmp_path):
  torch.manual_seed(0)
  tiny = dit.preset("tiny").replace(in_dim=16, image_dim=None)
  diffusers.WanTransformer3DModel(**wan_dit.diffusers_kwargs(tiny)).save_pretrained(str(tmp_path / "tiny"))
  model = diffusers.WanTransformer3DModel(**wan_dit.diffusers_kwargs(CFG))
  model.save_pretrained(str(tmp_path / "big"), max_shard_size="100MB")
  total = sum(p.numel() * 4 for p in model.parameters())
  largest_tensor = max(p.numel() * 4 for p in model.parameters())
  del model
  assert len([f for f in os.listdir(tmp_path / "big") if f.endswith(".safetensors")]) >= 4

  env = {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  run = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "tiny"), str(tmp_path / "big"),
                        str(tmp_path / "tiny_out"), str(tmp_path / "big_out"), str(WRITE_MB)],
                       capture_output=True, text=True, env=env, check=True)
  figures = json.loads(run.stdout.strip().splitlines()[-1])
  growth = figures["peak"] - figures["baseline"]
  print(f"checkpoint {total / 2**20:.0f} MiB, largest tensor {largest_tensor / 2**20:.0f} MiB, write batch "
        f"{WRITE_MB} MiB: peak RSS growth during conversion {growth / 2**20:.0f} MiB")
  # orbax holds about three copies of a batch while writing it (ours, its host copy, serialisation buffers)
  assert growth <= largest_tensor + 3 * WRITE_MB * 2**20 + FIXED_OVERHEAD
  assert growth < total / 4
