"""The converter modules form no import cycle: `core` imports none of them, each of them imports only `core` (the
command line included), so any module can be imported first."""

import ast
import os
import subprocess
import sys

import pytest

import checkpoints_convert

PACKAGE = os.path.dirname(checkpoints_convert.__file__)
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py")


def converter_imports(module: str) -> set[str]:
  """The checkpoints_convert modules `module` imports anywhere in its file, function bodies included."""
  with open(os.path.join(PACKAGE, f"{module}.py")) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "checkpoints_convert":
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("checkpoints_convert."):
      found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("checkpoints_convert.")}
  return found


def test_every_converter_module_imports_at_most_core():
  imports = {module: converter_imports(module) for module in MODULES}
  assert {"core", "wan", "wan_dit", "wan_t5", "wan_clip", "wan_vae"} <= set(MODULES)
  assert imports["core"] == set()
  assert {module: found for module, found in imports.items() if found - {"core"}} == {}


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_all_modules_import_in_a_fresh_interpreter_in_either_order(order):
  modules = MODULES if order == "forward" else MODULES[::-1]
  code = "; ".join(f"import checkpoints_convert.{m}" for m in modules)
  run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-2000:]
