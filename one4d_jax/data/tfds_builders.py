"""tfds builders for the evaluation datasets (Sintel, Bonn, TUM-dynamics), prepared from a local manual directory
into ArrayRecord files and read back as random-access sources for Grain, with no TensorFlow at any point.

One example per frame (random access stays cheap; a 110-frame Bonn sequence would be 150 MB as one example):
{sequence, frame (index in the evaluated clip), image uint8 [H, W, 3], depth float32 [H, W] metres (0 = invalid),
valid bool [H, W], K float64 [3, 3], c2w float64 [4, 4] camera-to-world}. Frame selection follows the MonST3R /
Geo4D preparation scripts (eval_protocol.md section 4): Sintel all training sequences and frames (final pass); Bonn
five sequences, frames [30:140]; TUM-dynamics eight fr3 sequences, associated frames [::3][:90].

    builder = BonnEval(data_dir=out_dir, config=ManualDir(manual_dir))  # manual_dir holds rgbd_bonn_balloon2/ ...
    builder.download_and_prepare()
    source = eval_data_source(BonnEval, out_dir)                         # -> grain.MapDataset.source(source)
"""

import inspect
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from one4d_jax.data.readers import read_bonn, read_sintel, read_tum

BONN_SEQUENCES = ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")
TUM_DYNAMICS_SEQUENCES = tuple(f"{a}_{b}" for a in ("sitting", "walking") for b in ("static", "xyz", "halfsphere",
                                                                                     "rpy"))


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "sequence": tfds.features.Text(),
      "frame": tfds.features.Scalar(np.int32),
      "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
      "depth": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib"),
      "valid": tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding="zlib"),
      "K": tfds.features.Tensor(shape=(3, 3), dtype=np.float64),
      "c2w": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
  })


def _clip_examples(clip):
  for n in range(clip.num_frames):
    rec = clip.load([n])
    yield f"{clip.name}/{n:05d}", {"sequence": clip.name, "frame": n, "image": rec.frames[0], "depth": rec.depth[0],
                                   "valid": rec.valid[0], "K": rec.K[0], "c2w": rec.c2w[0]}


class _EvalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: ArrayRecord output, one `test` split, examples from `_clips(manual_dir)`."""
  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """This file (tfds' default lookup needs the optional importlib_resources package for a module in a package)."""
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, manual_dir: str | None = None, sequences: tuple[str, ...] | None = None, **kwargs):
    self._manual = manual_dir
    self._sequences = sequences
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features(), description=self.__doc__)

  def _split_generators(self, dl_manager):
    if not self._manual or not os.path.isdir(self._manual):
      raise FileNotFoundError(f"{self.name}: manual_dir must be the local folder holding the dataset "
                              f"({self.MANUAL_DOWNLOAD_INSTRUCTIONS}); got {self._manual!r}")
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for clip in self._clips(self._manual):
      yield from _clip_examples(clip)


class SintelEval(_EvalBuilder):
  """MPI Sintel training set (final pass), every sequence and frame, for video depth and camera evaluation."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = "MPI-Sintel training: training/final, training/depth, training/camdata_left"

  def _clips(self, root):
    training = os.path.join(root, "training") if os.path.isdir(os.path.join(root, "training")) else root
    names = self._sequences or sorted(os.listdir(os.path.join(training, "final")))
    return (read_sintel(training, name) for name in names)


class BonnEval(_EvalBuilder):
  """Bonn RGB-D Dynamic, five sequences, frames 30-139 (110 frames), as MonST3R / Geo4D evaluate it."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Bonn RGB-D Dynamic: rgbd_bonn_<sequence>/ folders in TUM layout"

  def _clips(self, root):
    return (read_bonn(os.path.join(root, f"rgbd_bonn_{name}"), start=30, stop=140)
            for name in self._sequences or BONN_SEQUENCES)


class TumDynamicsEval(_EvalBuilder):
  """TUM RGB-D fr3 dynamic sequences, associated frames [::3][:90], as MonST3R / Geo4D evaluate them."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = "TUM RGB-D: rgbd_dataset_freiburg3_<sequence>/ folders"

  def _clips(self, root):
    return (read_tum(os.path.join(root, f"rgbd_dataset_freiburg3_{name}"), step=3, stop=270)
            for name in self._sequences or TUM_DYNAMICS_SEQUENCES)


BUILDERS = {"sintel": SintelEval, "bonn": BonnEval, "tum_dynamics": TumDynamicsEval}


def prepare(name: str, manual_dir: str, data_dir: str, sequences: tuple[str, ...] | None = None):
  """Write the ArrayRecord files of evaluation dataset `name` (sintel, bonn, tum_dynamics) under data_dir."""
  if name not in BUILDERS:
    raise ValueError(f"unknown evaluation dataset {name!r}; choose from {sorted(BUILDERS)}")
  builder = BUILDERS[name](data_dir=data_dir, manual_dir=manual_dir, sequences=sequences)
  builder.download_and_prepare()
  return builder


def eval_data_source(name: str, data_dir: str):
  """The prepared `test` split as a random-access source (len / __getitem__), ready for grain.MapDataset.source."""
  if name not in BUILDERS:
    raise ValueError(f"unknown evaluation dataset {name!r}; choose from {sorted(BUILDERS)}")
  return BUILDERS[name](data_dir=data_dir).as_data_source(split="test")
