"""Data: one clip record, readers per dataset layout, the Grain training pipeline, tfds builders for evaluation."""

from one4d_jax.data.clips import ClipFiles, ClipRecord, DepthSpec, read_depth, read_rgb
from one4d_jax.data.readers import READERS, open_clip, open_clips, write_clipfolder
