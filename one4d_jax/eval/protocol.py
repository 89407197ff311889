"""Which frames an evaluation uses: the published frame selections of each protocol family and the frames the sparse
setting observes. `launch.predict` and `launch.evaluate` both read them here, so a prediction covers exactly the
frames its evaluation scores."""

import numpy as np

from one4d_jax import umc

# Published frame selections (eval_protocol.md section 4), by (protocol family, reader format).
FRAME_CUTS = {("monst3r", "bonn"): slice(30, 140), ("monst3r", "tum"): slice(0, 270, 3),
              ("depthcrafter", "bonn"): slice(30, 140), ("depthcrafter", "sintel"): slice(0, 50)}


def default_protocol(fmt: str) -> str:
  """MonST3R's protocol for its datasets: Sintel's (depth post-clipped at 70 m), else Bonn's (no post-clip)."""
  return "monst3r_sintel" if fmt == "sintel" else "monst3r_bonn"


def frame_cut(spec: str, protocol: str, fmt: str) -> slice:
  """The frame slice: 'auto' = the published one for (protocol family, format) or all; 'all'; 'START:STOP[:STEP]'."""
  if spec == "auto":
    family = "depthcrafter" if protocol == "depthcrafter" else "monst3r"
    return FRAME_CUTS.get((family, fmt), slice(None))
  if spec == "all":
    return slice(None)
  try:
    parts = [int(x) if x.strip() else None for x in spec.split(":")]
    if not 2 <= len(parts) <= 3:
      raise ValueError
  except ValueError:
    raise ValueError(f"--frames {spec!r}: expected 'auto', 'all' or START:STOP[:STEP] (Python slice syntax)") from None
  return slice(*parts)


def selected_frames(num_frames: int, spec: str, protocol: str, fmt: str) -> np.ndarray:
  """Indices into a sequence of num_frames frames that the evaluation uses (an empty selection is an error)."""
  frames = np.arange(num_frames)[frame_cut(spec, protocol, fmt)]
  if len(frames) == 0:
    raise ValueError(f"--frames {spec} selects none of the sequence's {num_frames} frames")
  return frames


def sparse_indices(n_frames: int, sparsity: float) -> np.ndarray:
  """The frames UMC's sparse task observes (first and last, the rest uniform; round(sparsity * F), at least 2)."""
  return np.flatnonzero(umc.observed_frames("sparse", n_frames, sparsity))
