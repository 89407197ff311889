"""Convert Wan2.1 checkpoints to one4d_jax orbax checkpoints.

  python -m checkpoints_convert.wan --component dit --src SRC --dst DST [--dtype bf16|fp32] [--verify]

SRC is a diffusers transformer folder or an original Wan folder (config.json + safetensors, single or sharded with an
index); the layout is detected from the tensor names. DST appears atomically: `DST/config.json` and `DST/params`.
`--verify` runs the PyTorch reference (diffusers `WanTransformer3DModel`) built from SRC and the converted JAX model on
a small random input and prints `max_abs_err=<value>` as its last line; the exit code is 1 above `--tol`.
"""

import argparse
import json
import os
import sys

import numpy as np

from checkpoints_convert import core, wan_clip, wan_dit, wan_t5, wan_vae

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def convert_dit(src: str, dst: str, dtype: str = "bf16", progress: bool = True, write_mb: int = 256):
  """Convert a DiT folder; returns (format, config). Validates everything before writing anything."""
  from one4d_jax.models.wan import dit
  sources = core.read_headers(src)
  fmt = wan_dit.detect_format(sources)
  cfg = wan_dit.read_config(src, fmt, {k: s.shape for k, s in sources.items()})
  cfg = cfg.replace(param_dtype=DTYPES[dtype], dtype=DTYPES[dtype])
  abstract = dit.abstract_params(cfg)
  the_plan = core.plan(wan_dit.RULES[fmt], {k: s.shape for k, s in sources.items()}, abstract)
  meta = {"component": "dit", "config": json.loads(cfg.to_json()), "source": {"path": os.path.abspath(src),
                                                                             "format": fmt}}
  core.write_checkpoint(dst, meta, the_plan, sources, abstract, progress=progress, write_mb=write_mb)
  return fmt, cfg


def verify_dit(src: str, dst: str, seed: int = 0) -> float:
  """Max |JAX - PyTorch| of the converted DiT against diffusers built from SRC, in float32, on a small input.

  A bf16 conversion is compared against the reference with the same weights rounded to bf16, so the figure measures
  the port, not the rounding."""
  import jax
  import jax.numpy as jnp
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import torch
  from diffusers import WanTransformer3DModel

  from one4d_jax import checkpoints
  from one4d_jax.models.wan import dit

  jax.config.update("jax_default_matmul_precision", "highest")
  stored_cfg, params = checkpoints.load(dst)
  cfg = stored_cfg.replace(dtype="float32")
  params = jax.tree.map(lambda a: a.astype(jnp.float32), params)

  sources = core.read_headers(src)
  fmt = wan_dit.detect_format(sources)
  if fmt == "diffusers":  # diffusers reads its own folder: an independent check of our config parsing
    model = WanTransformer3DModel.from_pretrained(src, torch_dtype=torch.float32)
  else:
    state = {k: torch.from_numpy(np.asarray(core.read_tensor(s, k), np.float32)) for k, s in sources.items()}
    model = WanTransformer3DModel(**wan_dit.diffusers_kwargs(cfg))
    model.load_state_dict(wan_dit.rename(state, wan_dit.WAN_RULES, wan_dit.DIFFUSERS_RULES), strict=True)
  core.round_like_stored(model, wan_dit.DIFFUSERS_RULES, dit.abstract_params(stored_cfg))
  model.eval()

  rng = np.random.default_rng(seed)
  frames, height, width = 3, 6, 10
  x = rng.standard_normal((1, cfg.in_dim, frames, height, width)).astype(np.float32)
  t = np.array([613.0], np.float32)
  text = rng.standard_normal((1, 16, cfg.text_dim)).astype(np.float32)
  image = rng.standard_normal((1, 257, cfg.image_dim)).astype(np.float32) if cfg.is_i2v else None
  text512 = np.pad(text, ((0, 0), (0, cfg.text_len - text.shape[1]), (0, 0)))
  with torch.no_grad():
    ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text512),
                encoder_hidden_states_image=None if image is None else torch.from_numpy(image),
                return_dict=False)[0].numpy()
  out = jax.jit(lambda p, *a: dit.forward(p, cfg, *a))(params, x, t, text, image)
  return float(np.abs(np.asarray(out) - ref).max())


COMPONENTS = {"dit": (convert_dit, verify_dit), "t5": (wan_t5.convert_t5, wan_t5.verify_t5),
              "clip": (wan_clip.convert_clip, wan_clip.verify_clip), "vae": (wan_vae.convert_vae, wan_vae.verify_vae)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--component", required=True, choices=sorted(COMPONENTS))
  parser.add_argument("--src", required=True, help="source checkpoint folder")
  parser.add_argument("--dst", required=True, help="output folder (must not exist)")
  parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="stored weight dtype (norms and "
                      "modulation tables stay float32)")
  parser.add_argument("--write-mb", type=int, default=256, help="tensors written per orbax save, in MiB: bounds "
                      "host memory (peak is about 3x this plus the largest tensor)")
  parser.add_argument("--verify", action="store_true", help="compare against the PyTorch reference (needs torch)")
  parser.add_argument("--tol", type=float, default=1e-4, help="max abs error accepted by --verify")
  args = parser.parse_args(argv)

  convert, verify = COMPONENTS[args.component]
  try:
    fmt, _ = convert(args.src, args.dst, args.dtype, write_mb=args.write_mb)
  except core.ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"converted {args.component} ({fmt} layout) {args.src} -> {args.dst}")
  if args.verify:
    err = verify(args.src, args.dst)
    print(f"max_abs_err={err:.3e}")
    return 0 if err <= args.tol else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
