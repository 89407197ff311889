"""What a long run meets: preemption (SIGTERM), a diverged step, a checkpoint cut short or corrupted, and a kill -9.

The contract, tested in tests/test_faults.py: SIGTERM saves the current state and exits cleanly; a step whose loss,
gradient norm or new parameters are not finite stops the run with a message naming it, and its state is never
saved, so the newest checkpoint is the last good one; a newest checkpoint that does not restore is moved aside with
a warning and the previous one is used; after kill -9, the same command resumes at the newest checkpoint and, since
the data stream and the step's randomness are functions of the step alone, repeats exactly the losses an
uninterrupted run has (the metrics log is cut back to the restored step, so no step appears twice).
"""

import json
import os
import shutil
import signal
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

FINITE_KEYS = ("loss", "grad_norm", "param_norm")


class Preemption:
  """A scheduler's preemption notice (SIGTERM), caught for the duration of a `with` block. One process: a Python
  handler. Several: JAX's coordination service already listens for it, and `reached_preemption_sync_point` agrees on
  the step every process saves, without a device collective per step."""

  def __init__(self):
    self._received = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    self._received = True

  def requested(self, step: int) -> bool:
    """True at the step to save and stop at; call it after every step (every process, the same steps)."""
    if jax.process_count() == 1:
      return self._received
    return multihost_utils.reached_preemption_sync_point(step)


def check_finite(step: int, metrics: dict, newest_checkpoint: int | None) -> None:
  """Raises FloatingPointError naming `step` if its loss, gradient norm or updated parameters are not finite."""
  bad = {k: float(metrics[k]) for k in FINITE_KEYS if k in metrics and not np.isfinite(float(metrics[k]))}
  if bad:
    kept = f"step {newest_checkpoint}" if newest_checkpoint is not None else "none yet"
    raise FloatingPointError(f"step {step} diverged ({', '.join(f'{k}={v}' for k, v in bad.items())}); stopped "
                             f"without saving it. Newest checkpoint: {kept}")


def restore_newest(manager: ocp.CheckpointManager, target, workdir: str):
  """(state, step) of the newest checkpoint that restores onto `target` (abstract or concrete state), or (None, None).
  One that fails is moved to WORKDIR/corrupt_checkpoints/ with a warning, so a later save of that step can happen."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
      return restored["state"], step
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means: use the one before
      aside = os.path.join(workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
      warnings.warn(f"checkpoint {step} does not restore ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    f"moved to {aside}, using the one before", stacklevel=2)
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(os.path.join(str(manager.directory), str(step)), aside)
      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
      manager.reload()
  return None, None


def truncate_log(path: str, step: int) -> None:
  """Drop the lines of a JSON-lines metrics log written after `step` (by a run killed before its next checkpoint),
  atomically, so the resumed run's lines follow on without repeats."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if _logged_step(line) <= step]
  if len(kept) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)


def _logged_step(line: str) -> float:
  """A log line's step; a line cut short by the kill (no newline, or not JSON) counts as after every step."""
  try:
    return json.loads(line)["step"] if line.endswith("\n") else float("inf")
  except (ValueError, KeyError):
    return float("inf")
