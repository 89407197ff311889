"""Input-pipeline throughput: training clips per second (81 frames, 352x624 by default) read from the clip folder
format, with 0 workers (decoding in the calling thread, no prefetch) and 2 worker processes.

The clip folder is written once into --workdir from the real 7-Scenes clip in ../shared/data (its 60 frames cycled to
the length needed: real 640x480 PNG frames, float32 metre depth .npy), so decoding costs what users' data costs.
Each example decodes 81 frames + depth maps, resizes/crops to the training size, builds pointmaps, normalises and
draws a UMC task; batches of 1. Time: clips delivered after one untimed warm-up batch, over --clips clips.

    PYTHONPATH=. python benchmarks/data_pipeline.py                          # 0 and 2 workers
    PYTHONPATH=. python benchmarks/data_pipeline.py --workers 0 --clips 3 --frames 17   # quick

The last line is a machine-readable summary (`BENCH_DATA {json}`).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import SHARED_CLIP


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--size", type=int, nargs=2, default=(352, 624), metavar=("H", "W"))
  p.add_argument("--clips", type=int, default=6, help="timed clips per setting")
  p.add_argument("--workers", default="0,2")
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "one4d_bench_clipfolder"))
  return p.parse_args(argv)


def write_bench_clip(path: str, num_frames: int) -> str:
  """A clip folder of num_frames real 7-Scenes frames (cycled), reused across runs."""
  from one4d_jax.data import open_clip, write_clipfolder

  if os.path.exists(os.path.join(path, "cameras.json")) and len(os.listdir(os.path.join(path, "frames"))) >= num_frames:
    return path
  source = open_clip("sevenscenes", SHARED_CLIP)
  cycle = np.arange(num_frames) % (2 * source.num_frames - 2)
  cycle = np.where(cycle < source.num_frames, cycle, 2 * source.num_frames - 2 - cycle)  # there and back
  write_clipfolder(path, source.load(cycle), "npy", caption="a kitchen counter", overwrite=True)
  return path


def run(clip_dir: str, frames: int, size, clips: int, workers: int) -> dict:
  from one4d_jax.data import open_clip
  from one4d_jax.data.pipeline import PipelineConfig, make_dataset, make_iterator

  clip = open_clip("clipfolder", clip_dir)
  config = PipelineConfig(num_frames=frames, height=size[0], width=size[1], batch_size=1, window_step=1)
  it = make_iterator(make_dataset([clip], config, 0, 1), num_workers=workers)
  next(it)
  start = time.perf_counter()
  for _ in range(clips):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["pointmaps"].shape == (1, 3, frames, *size)
  return {"workers": workers, "clips": clips, "seconds": round(elapsed, 2), "clips_per_s": round(clips / elapsed, 3)}


def main(argv=None):
  args = parse_args(argv)
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
  clip_dir = write_bench_clip(args.workdir, args.frames)
  results = []
  for workers in [int(w) for w in args.workers.split(",")]:
    r = run(clip_dir, args.frames, args.size, args.clips, workers)
    print(f"{workers} workers: {r['clips_per_s']:.3f} clips/s ({r['clips']} clips of {args.frames} frames at "
          f"{args.size[0]}x{args.size[1]} in {r['seconds']} s), load average {os.getloadavg()[0]:.1f}", flush=True)
    results.append(r)
  print("BENCH_DATA " + json.dumps({"frames": args.frames, "size": list(args.size), "cpus": os.cpu_count(),
                                    "results": results}))


if __name__ == "__main__":
  main()
