"""What every absl launcher does at the command line: `--help` lists the launcher's flags and every field of its
config as `--config.section.field=default`, then exits 0 (absl's own help exits 1 and lists neither); logs at
WARNING unless --verbose; a user error (a bad flag, config, path or input, a diverged run) is one
line, `error: <message>`, exit status 2 (a diverged run: status 1), not a traceback."""

import os
import sys

import ml_collections
from absl import app, flags, logging

from one4d_jax import runtime

HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def config_fields(config: ml_collections.ConfigDict, prefix: str = "config"):
  """`--config.section.field=default` for every leaf of a config, in order."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from config_fields(value, f"{prefix}.{key}")
    else:
      yield f"--{prefix}.{key}={value!r}"


def usage(doc: str) -> str:
  """The launcher's docstring, its flags and, once --config is parsed, its config's fields."""
  f = flags.FLAGS
  lines = [doc.strip(), "", "flags:"]
  for module, module_flags in f.flags_by_module_dict().items():
    if not (module == "__main__" or module.startswith("launch") or "/launch/" in module):
      continue  # absl's, grain's and orbax's own flags
    for flag in sorted(module_flags, key=lambda x: x.name):
      lines.append(f"  --{flag.name}: {flag.help} (default: {flag.default_as_str or 'none'})")
  config = f["config"].value if "config" in f else None
  if config is not None:
    lines += ["", f"config fields (--config={f['config'].serialize().split('=', 1)[-1]}):"]
    lines += [f"  {field}" for field in config_fields(config)]
  return "\n".join(lines)


def run(main, doc: str) -> None:
  """`app.run(main)`, with --help answered first (see the module docstring)."""
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "log at INFO (absl, JAX, orbax), not only warnings and errors")
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    try:
      flags.FLAGS([a for a in sys.argv if a not in HELP_FLAGS], known_only=True)
    except flags.Error as e:
      sys.exit(f"error: {e}")
    print(usage(doc))
    sys.exit(0)
  # warnings and errors only unless --verbose: JAX's probe for a TPU and orbax's per-save INFO lines otherwise flood
  # stderr
  logging.set_verbosity(logging.WARNING)
  app.run(_user_errors_in_one_line(main), flags_parser=_parse_flags)


def _fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _parse_flags(argv):
  """absl's parser, with a bad flag, a missing config field or a config file that fails reported in one line."""
  try:
    args = flags.FLAGS(argv)
    if flags.FLAGS.verbose:
      logging.set_verbosity(logging.INFO)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.keys()  # a config file that failed to load raises here, not at parsing
    return args
  except flags.Error as e:  # a config file that raised: its exception's own line, not the traceback around it
    message = str(e)
    if "Traceback" in message:
      last = message.strip().splitlines()[-1]
      _fail(last.split(": ", 1)[-1] if last.split(":")[0].isidentifier() else last)
    _fail(f"{message} (--help lists the flags)")
  except OSError as e:  # ml_collections: the config file is missing or does not load
    _fail(f"--config: {str(e).strip().splitlines()[-1].strip()}")
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config does not have
    name = str(e).strip("'\"")
    given = [a.split("=")[0] for a in argv if a.startswith("--config.") and a.split("=")[0].endswith(f".{name}")]
    _fail(f"{given[0] if given else name}: the config has no such field (--help lists them)")
  except USER_ERRORS as e:  # raised by the config file itself (e.g. an unknown variant)
    _fail(str(e))


# What bad flags, configs, paths and data raise (with messages that name the problem) and a diverged run: one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, FloatingPointError)


def _user_errors_in_one_line(main):
  """main, with USER_ERRORS reported as `error: <message>` and exit status 2 (1 for a diverged run) instead of a
  traceback (set ONE4D_TRACEBACK=1 to see it)."""
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if os.environ.get("ONE4D_TRACEBACK"):
        raise
      _fail(str(e), 1 if isinstance(e, FloatingPointError) else 2)
  return wrapped


def define_model_flags():
  """The config and where the trained LoRA comes from: the flags of the launchers that sample (generate, predict)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_string("workdir", "", "training run whose newest checkpoint holds the LoRA and links "
                      "('' = freshly initialised: the base model on RGB, links zero)")
  flags.DEFINE_string("lora", "", "an adapter file of launch.export_lora holding the LoRA and links (instead of "
                      "--workdir)")


def define_distributed_flags():
  """Flags of a multi-process run, shared by the launchers that run the model."""
  flags.DEFINE_bool("multihost", False, "join a multi-process run from the cluster's environment (TPU VM, SLURM)")
  flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, for a multi-process run on one machine "
                      "(launch/local_cluster.py sets it)")
  flags.DEFINE_integer("num_processes", None, "processes of a local multi-process run")
  flags.DEFINE_integer("process_id", None, "this process's index in a local multi-process run")


def start_runtime(f) -> None:
  """XLA settings for this platform, then join the multi-process run the flags describe (if any)."""
  runtime.configure()
  runtime.initialize(f.multihost, f.coordinator, f.num_processes, f.process_id)
