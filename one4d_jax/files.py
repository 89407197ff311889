"""Outputs appear whole or not at all: a directory is built under a hidden temporary name beside its destination and
renamed into place only when everything in it has been written, so a crash or a bad input never leaves half a
checkpoint, clip or evaluation behind."""

import contextlib
import glob
import os
import shutil


@contextlib.contextmanager
def atomic_directory(dst: str, overwrite: bool = False):
  """Yield a fresh temporary directory; on normal exit it becomes `dst`, on any exception it is deleted.

  An existing `dst` is an error unless `overwrite`, in which case it is replaced only after the new one is complete.
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} already exists; remove it or choose another path")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  prefix = os.path.join(parent, f".{os.path.basename(dst)}.tmp-")
  for stale in glob.glob(prefix + "*"):  # left by a killed run (kill -9 skips the cleanup below)
    if not _alive(stale[len(prefix):].split(".")[0]):
      shutil.rmtree(stale, ignore_errors=True)
  tmp = f"{prefix}{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(dst):
      old = f"{tmp}.old"
      os.rename(dst, old)
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _alive(pid: str) -> bool:
  """Whether the process that named a temporary folder still runs (then its folder is not stale)."""
  try:
    os.kill(int(pid), 0)
  except (ValueError, ProcessLookupError):
    return False
  except PermissionError:
    return True
  return True
