"""Post-optimisation speed: JAX (jit + lax.scan) against a plain PyTorch implementation, same objective.

Same objective (per-frame weighted mean point distance + 0.01 smoothness), same parameterisation (log-depth, c2w wxyz
quaternion, signed-log1p centre, 20 ln f shared focal, pp fixed), same Adam(0.9, 0.9) with MonST3R's linear lr
schedule 0.01 -> 1e-3, same iteration count, same starting point (the closed-form init, computed once by JAX and copied
into torch). Data: the 7-Scenes redkitchen clip (60 frames), depth resized (nearest) + centre-cropped to 288x512, oracle
pointmaps with 2% noise. JAX time excludes compilation (reported separately); torch runs eagerly on the same threads.

    PYTHONPATH=. python benchmarks/postopt.py --iters 300
    PYTHONPATH=. python benchmarks/postopt.py --iters 20 --frames 60   # quick

The last line is a machine-readable summary (`BENCH_POSTOPT {json}`).
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from one4d_jax.data.readers import open_clip
from one4d_jax.geometry import postopt
from one4d_jax.geometry.pointmaps import (center_crop_offsets, cover_size, pointmaps_from_depth, resize_crop_depth,
                                          resize_crop_intrinsics)

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sevenscenes_redkitchen_60f")


def load_pointmaps(frames, hw, noise, seed=0):
  clip = open_clip("sevenscenes", DATA).load(range(frames))
  src = clip.depth.shape[1:]
  resized = cover_size(src, hw)
  top, left = center_crop_offsets(resized, hw)
  dep, val = resize_crop_depth(clip.depth, clip.valid, resized, top, left, hw)
  k = resize_crop_intrinsics(clip.K, src, resized, top, left)
  xyz, ok = pointmaps_from_depth(dep, k, clip.c2w, val)
  rng = np.random.default_rng(seed)
  xyz = xyz + noise * np.abs(xyz[..., 2:3]) * rng.normal(size=xyz.shape).astype(np.float32)
  return xyz, ok, k


def torch_optimize(params, xyz, w, pp, cfg, threads):
  """The same objective (the same per-coordinate form as `postopt._objective_planar`) and Adam schedule, eager."""
  import torch
  torch.set_num_threads(threads)
  p = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
  x, wt = torch.tensor(np.moveaxis(np.asarray(xyz), -1, 0).copy()), torch.tensor(np.asarray(w))
  f, h, wd = wt.shape
  v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(wd, dtype=torch.float32), indexing="ij")
  du, dv = u - float(pp[0]), v - float(pp[1])
  eye = torch.eye(3)

  def loss_fn():
    q = p["quat"] / torch.sqrt((p["quat"] ** 2).sum(-1, keepdim=True) + 1e-12)
    qw, qx, qy, qz = q.unbind(-1)
    rot = torch.stack([
      torch.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)], -1),
      torch.stack([2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)], -1),
      torch.stack([2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)], -1)], -2)
    centre = torch.sign(p["tlog"]) * torch.expm1(p["tlog"].abs())
    focal = torch.exp(p["focal"] / cfg.focal_break).expand(f)
    d = torch.exp(p["log_depth"])
    a, b = du[None] / focal[:, None, None], dv[None] / focal[:, None, None]
    sq = 0.0
    for i in range(3):
      r = rot[:, i]
      ray = r[:, 0, None, None] * a + r[:, 1, None, None] * b + r[:, 2, None, None]
      sq = sq + (d * ray + centre[:, i, None, None] - x[i]) ** 2
    dist = torch.sqrt(sq + 1e-12)
    data = ((wt * dist).sum((1, 2)) / wt.sum((1, 2)).clamp_min(1e-12)).sum()
    rel = torch.einsum("fji,fjk->fik", rot[:-1], rot[1:]) - eye
    smooth = torch.sqrt((rel ** 2).sum((-2, -1)) + 1e-12).sum()
    smooth = smooth + cfg.translation_weight * torch.sqrt(((centre[1:] - centre[:-1]) ** 2).sum(-1) + 1e-12).sum()
    return cfg.data_weight * data + cfg.smooth_weight * smooth

  opt = torch.optim.Adam(list(p.values()), lr=cfg.lr, betas=(0.9, 0.9))
  decay = cfg.lr_min / cfg.lr - 1
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 + decay * min(k, cfg.iters) / cfg.iters)
  losses = []
  t0 = time.perf_counter()
  for _ in range(cfg.iters):
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
  seconds = time.perf_counter() - t0
  with torch.no_grad():
    final = loss_fn().item()
  return seconds, final, losses


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--iters", type=int, default=300)
  ap.add_argument("--frames", type=int, default=60)
  ap.add_argument("--size", type=int, nargs=2, default=(288, 512))
  ap.add_argument("--noise", type=float, default=0.02)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()
  xyz, ok, k = load_pointmaps(args.frames, tuple(args.size), args.noise)
  cfg = postopt.PostOptConfig(iters=args.iters)
  pp = jnp.asarray(k[0, :2, 2], jnp.float32)
  xyz_c, w = jax.jit(postopt.clean_inputs)(jnp.asarray(xyz), jnp.asarray(ok), None)
  init = jax.jit(postopt.closed_form_init, static_argnames="cfg")(xyz_c, w, pp, cfg=cfg)
  jax.block_until_ready(init)

  t0 = time.perf_counter()  # the chunks' programs (post_optimize runs CHUNK iterations per call, interruptibly)
  state = postopt.init_state(init, cfg)
  for n in {min(postopt.CHUNK, args.iters), args.iters % postopt.CHUNK} - {0}:  # compiled by one call each
    jax.block_until_ready(postopt.optimize_steps(init, state, xyz_c, w, pp, cfg=cfg, steps=n))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  params, losses = postopt.optimize(init, xyz_c, w, pp, cfg)
  jax.block_until_ready(params)
  jax_s = time.perf_counter() - t0
  jax_final = float(postopt.objective(params, xyz_c, w, pp, cfg))

  torch_s, torch_final, _ = torch_optimize(init, xyz_c, w, pp, cfg, args.threads)
  summary = {"frames": args.frames, "hw": list(args.size), "iters": args.iters, "jax_seconds": round(jax_s, 3),
             "jax_compile_seconds": round(compile_s, 3), "torch_seconds": round(torch_s, 3),
             "speedup_torch_over_jax": round(torch_s / jax_s, 2), "jax_final_loss": jax_final,
             "torch_final_loss": torch_final, "initial_loss": float(losses[0])}
  print(f"JAX   {jax_s:8.2f} s (+{compile_s:.1f} s compile)  final loss {jax_final:.6f}")
  print(f"torch {torch_s:8.2f} s                    final loss {torch_final:.6f}")
  print(f"ratio torch / JAX = {torch_s / jax_s:.2f}x  (initial loss {float(losses[0]):.6f})")
  print("BENCH_POSTOPT " + json.dumps(summary))


if __name__ == "__main__":
  main()
