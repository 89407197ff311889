"""Atomic outputs (one4d_jax/files.py): what a killed run leaves behind is cleaned up by the next one."""

import os
import subprocess
import sys

from one4d_jax.files import atomic_directory


def test_a_killed_runs_temporary_output_is_removed_by_the_next_run(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  stale = tmp_path / f".out.tmp-{dead.stdout.strip()}"  # as kill -9 leaves it: its process is gone
  stale.mkdir()
  live = tmp_path / f".out.tmp-{os.getppid()}"  # a folder of a running process is left alone
  live.mkdir()
  with atomic_directory(str(tmp_path / "out")) as tmp:
    open(os.path.join(tmp, "x"), "w").close()
  assert (tmp_path / "out" / "x").is_file() and not stale.exists() and live.exists()
