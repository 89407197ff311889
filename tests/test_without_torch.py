"""The library and its pure-JAX tests need none of the PyTorch stack: with torch, diffusers, transformers and peft
made unimportable (ONE4D_BLOCK_TORCH, see conftest), every one4d_jax and launch module imports, and the pure-JAX tests
of the modules that also hold reference tests pass while those reference tests skip as one group (`needs_torch`)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXED = ["tests/test_dit.py", "tests/test_sample.py", "tests/test_samplers.py", "tests/test_vae.py",
         "tests/test_text_image_encoders.py"]


def _env():
  return {**os.environ, "PYTHONPATH": ROOT, "ONE4D_BLOCK_TORCH": "1", "JAX_PLATFORMS": "cpu"}


def test_every_library_and_launcher_module_imports_without_torch():
  script = """
import importlib, pkgutil, sys
sys.path.insert(0, "tests")
import conftest  # installs the blocker
assert not conftest.HAVE_TORCH
import one4d_jax, launch
names = [m.name for pkg in (one4d_jax, launch) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
names = [n for n in names if n != "one4d_jax.viewer"] + ["one4d_jax.viewer"]
for name in names:
  importlib.import_module(name)
print(len(names), "modules;", "torch" in sys.modules)
"""
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  count, torch_loaded = out.stdout.split(" modules; ")
  assert int(count) > 40 and torch_loaded.strip() == "False", out.stdout


def test_pure_jax_tests_pass_and_reference_tests_skip_as_a_group():
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MIXED], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=1500)
  summary = out.stdout.strip().splitlines()[-1]
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  passed, skipped = (int(re.search(rf"(\d+) {word}", summary).group(1)) for word in ("passed", "skipped"))
  assert passed >= 12 and skipped >= 30 and "error" not in summary, summary
