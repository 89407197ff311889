"""The converter's command line: snake_case flags, and every user error as one `error: ...` line with exit status 2,
before any model or tensor is read."""

import pytest

from checkpoints_convert import core, wan


def run(capsys, *argv) -> tuple[int, str]:
  try:
    code = wan.main(list(argv))
  except SystemExit as e:  # argparse's own errors
    code = e.code
  return code, capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--component", "unet", "--src", "s", "--dst", "d"], "argument --component: invalid choice: 'unet'"),
    (["--component", "dit", "--src", "s"], "the following arguments are required: --dst"),
    (["--component", "dit", "--src", "s", "--dst", "d", "--write_mb", "0"], "--write_mb must be positive, got 0"),
    (["--component", "dit", "--src", "s", "--dst", "d", "--write-mb", "-1"], "--write_mb must be positive, got -1"),
    (["--component", "vae", "--src", "no/such/folder", "--dst", "d"], "'no/such/folder' is not a directory"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
  monkeypatch.chdir(tmp_path)
  code, err = run(capsys, *argv)
  assert code == 2
  assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_mb_reaches_the_driver_under_either_spelling(capsys, monkeypatch):
  seen = []
  monkeypatch.setattr(core, "convert", lambda *a, **k: seen.append(k["write_mb"]) or ("diffusers", None))
  assert run(capsys, "--component", "dit", "--src", "s", "--dst", "d")[0] == 0
  assert run(capsys, "--component", "dit", "--src", "s", "--dst", "d", "--write_mb", "16")[0] == 0
  assert run(capsys, "--component", "dit", "--src", "s", "--dst", "d", "--write-mb", "8")[0] == 0
  assert seen == [core.WRITE_MB, 16, 8]


def test_verify_above_tol_exits_1(capsys, monkeypatch):
  monkeypatch.setattr(core, "convert", lambda *a, **k: ("wan", None))
  monkeypatch.setattr(core, "verify", lambda *a, **k: 0.5)
  monkeypatch.setattr(wan, "REFERENCE_PACKAGES", ())  # the check for torch & co. before converting
  code = wan.main(["--component", "t5", "--src", "s", "--dst", "d", "--verify", "--tol", "0.1"])
  assert code == 1 and capsys.readouterr().out.strip().splitlines()[-1] == "max_abs_err=5.000e-01"


def test_every_registered_component_declares_itself_under_its_name():
  assert sorted(core.REGISTRY) == ["clip", "dit", "t5", "vae"]
  assert all(core.get_component(name).name == name for name in core.REGISTRY)
  with pytest.raises(core.ConversionError, match="unknown component 'unet'; known: "):
    core.get_component("unet")
