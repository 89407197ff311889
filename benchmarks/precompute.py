"""Precomputed encodings against encoding on the fly, on the tiny config (random tiny VAE; no umT5 or CLIP, as the
tiny config has none): seconds to precompute a window, bytes a window takes on disk, and seconds per host batch from
the iterator to the training step's batch (`inputs.model_batch` on decoded windows against
`inputs.precomputed_batch` on stored ones), in interleaved rounds after a warm-up batch.

    PYTHONPATH=. python benchmarks/precompute.py                              # 5 frames at 64x96, batch 2
    PYTHONPATH=. python benchmarks/precompute.py --frames 17 --size 176 312   # larger windows

The last line is a machine-readable summary (`BENCH_PRECOMPUTE {json}`).
"""

import argparse
import json
import os
import tempfile

from benchmarks.common import (
  SHARED_CLIP,
  fmt_times,
  interleaved,
  loadavg,
  med,
  set_xla_flags,
  timed,
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=5)
  p.add_argument("--size", type=int, nargs=2, default=(64, 96), metavar=("H", "W"))
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--windows", type=int, default=8, help="about this many windows precomputed (evenly spaced)")
  p.add_argument("--repeats", type=int, default=5)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  set_xla_flags("")
  import jax

  from configs import one4d as one4d_config_lib
  from one4d_jax import pipeline as pipeline_lib
  from one4d_jax import runtime
  from one4d_jax.data import open_clip, pipeline, precomputed
  from one4d_jax.train import inputs

  runtime.configure()
  c = one4d_config_lib.get_config("variant=tiny")
  cfg = pipeline_lib.model_config(c)
  clip = open_clip("sevenscenes", SHARED_CLIP)
  step = max((clip.num_frames - args.frames) // args.windows, 1)
  config = pipeline.PipelineConfig(num_frames=args.frames, window_step=step, height=args.size[0], width=args.size[1],
                                   batch_size=args.batch, seed=0)
  enc = pipeline_lib.config_encoders(c, cfg)
  vae_bytes = sum(x.nbytes for x in jax.tree.leaves(enc.vae))
  out = tempfile.mkdtemp(prefix="one4d-bench-precompute-")
  plan = precomputed.plan([clip], config, out, {"benchmark": True}, windows_per_shard=len(clip.frame_paths))
  warm = precomputed.plan([clip], config, tempfile.mkdtemp(), {"warm-up": True}, steps=1, global_batch=1)
  precomputed.write_shards(enc, warm, progress=False)  # compiles the per-window encoders
  seconds, _ = timed(lambda: precomputed.write_shards(enc, plan, progress=False))
  disk = sum(os.path.getsize(p) for p in precomputed.open_dir(out).shard_paths())
  print(f"precompute: {len(plan.rows)} windows of {args.frames} frames at {args.size[0]}x{args.size[1]} in "
        f"{seconds:.2f} s ({seconds / len(plan.rows):.3f} s a window), {disk / len(plan.rows) / 1e6:.3f} MB a window")

  fly = pipeline.make_iterator(pipeline.make_dataset([clip], config, 0, 1))
  stored = pipeline.make_iterator(precomputed.make_dataset(precomputed.open_dir(out), config, 0, 1))
  fns = {"on the fly": lambda: jax.block_until_ready(inputs.model_batch(enc, next(fly))),
         "precomputed": lambda: jax.block_until_ready(inputs.precomputed_batch(enc, next(stored)))}
  interleaved(fns, 1)  # compiles each batch function
  wall, cpu = interleaved(fns, args.repeats)
  for k in fns:
    print(f"{k:12s} host batch of {args.batch}: {fmt_times(wall[k])}, CPU {med(cpu[k]):.4f} s")
  print(f"resident encoder parameters: VAE {vae_bytes / 1e6:.2f} MB (both); load average {loadavg()}")
  print("BENCH_PRECOMPUTE " + json.dumps({
      "frames": args.frames, "size": list(args.size), "batch": args.batch, "windows": len(plan.rows),
      "precompute_s_per_window": round(seconds / len(plan.rows), 4),
      "mb_per_window": round(disk / len(plan.rows) / 1e6, 4),
      "fly_s": round(med(wall["on the fly"]), 4), "precomputed_s": round(med(wall["precomputed"]), 4),
      "vae_mb": round(vae_bytes / 1e6, 3), "load": loadavg()}))


if __name__ == "__main__":
  main()
