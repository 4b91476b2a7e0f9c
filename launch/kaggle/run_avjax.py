#!/usr/bin/env python3
"""Kaggle script kernel: trains one avjax config on a Kaggle TPU (v5e-8 or v6e-8).

Kaggle retired its TPU v3-8; on Kaggle use v5e-8 (machine_shape `TpuV5E8`, the
one the kaggle CLI documents) or v6e-8 where your account is offered it. A v3-8
is still available on Cloud TPU: see launch/tpu_vm.sh.

What it does, in order (each step is one command; `--dry-run` prints them):
  1. copies avjax from a Kaggle dataset of the source tree (mounted read-only
     under /kaggle/input) to a writable folder, or clones it from a git URL;
  2. makes a Python 3.11 venv with uv (the interpreter requirements.lock was frozen
     on; the Kaggle TPU image's own Python and its preinstalled jax/libtpu are left
     alone), installs requirements.lock, then `-e .[tpu]`: jax[tpu] at avjax's
     pinned version with the libtpu that matches it;
  3. asks jax in that venv which devices it sees, and stops with a one-line error
     if there is no TPU (a push can silently land on the CPU image);
  4. runs `avjax train` (or `cv`) with the prepared data from a Kaggle dataset and
     the workdir under /kaggle/working, which Kaggle keeps as the kernel's output.

Edit the settings below (and kernel-metadata.json) before `launch/kaggle/push.sh`,
or pass flags when running it yourself. The kernel needs internet (pip, uv's
Python download): "enable_internet": true.

  python launch/kaggle/run_avjax.py --dry-run
  python launch/kaggle/run_avjax.py --config experiments/sultana2024.py:video,kaggle_tpu_v5e_8 \\
      --data-dir /kaggle/input/avjax-data --config.train.num_epochs=5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

# ----- Settings: edit these, or pass the matching flags. ---------------------
# A Kaggle dataset holding the avjax source tree (e.g. a `git archive` of it),
# listed in kernel-metadata.json "dataset_sources", or a git URL to clone.
SOURCE = "/kaggle/input/avjax-source"
REF = ""  # With a git URL: the branch, tag or commit to check out.
CONFIG = "experiments/sultana2024.py:audio,kaggle_tpu_v5e_8"
# The --data-dir of `avjax prepare`, uploaded as a Kaggle dataset; "" keeps the
# config's own data.data_dir.
DATA_DIR = "/kaggle/input/avjax-data"
WORKDIR = "/kaggle/working/run"
COMMAND = "train"  # or "cv"
OVERRIDES: list[str] = []  # e.g. ["--config.train.num_epochs=5"]
PYTHON = "3.11"
BUILD_DIR = "/tmp/avjax"  # A writable copy of the source (editable install).
VENV = "/tmp/avjax-venv"
# ------------------------------------------------------------------------------

PROG = "run_avjax"
KAGGLE_INPUT = Path("/kaggle/input")

# Asks jax which devices it sees; prints one JSON line.
PROBE = ('import json, jax; d = jax.devices(); '
         'print(json.dumps({"platform": d[0].platform, "count": len(d), '
         '"kind": d[0].device_kind, "jax": jax.__version__}))')


class LaunchError(Exception):
  """A one-line, user-facing failure."""


def is_git_url(source: str) -> bool:
  return source.startswith(("https://", "http://", "git@", "ssh://", "git://")) or source.endswith(".git")


def locate_input(path: str, what: str) -> Path:
  """`path` if it exists, else the one folder of that name under /kaggle/input
  (Kaggle has mounted datasets at /kaggle/input/SLUG and deeper)."""
  p = Path(path)
  if p.exists():
    return p
  found = []
  if KAGGLE_INPUT.is_dir():
    for depth in ("*", "*/*", "*/*/*"):
      found += [c for c in KAGGLE_INPUT.glob(depth) if c.is_dir() and c.name == p.name]
  if len(found) == 1:
    return found[0]
  mounted = sorted(str(c) for c in KAGGLE_INPUT.glob("*")) if KAGGLE_INPUT.is_dir() else []
  raise LaunchError(f"{what} {path} not found (mounted under /kaggle/input: "
                    f"{', '.join(mounted) or 'nothing'}); add the dataset to "
                    "dataset_sources in kernel-metadata.json")


def find_source_root(folder: Path) -> Path:
  """The folder under `folder` (depth <= 3) whose pyproject.toml is avjax's."""
  for depth in ("", "*/", "*/*/", "*/*/*/"):
    for candidate in sorted(folder.glob(depth + "pyproject.toml")):
      if 'name = "avjax"' in candidate.read_text(encoding="utf-8", errors="replace"):
        return candidate.parent
  raise LaunchError(f"no avjax source (pyproject.toml of avjax) in {folder}")


def plan(args: argparse.Namespace, *, resolve: bool) -> list[tuple[str, list[str]]]:
  """The commands to run, as (label, argv). `resolve` looks paths up on disk."""
  build, venv = args.build_dir, args.venv
  steps: list[tuple[str, list[str]]] = [("clean", ["rm", "-rf", build])]
  if is_git_url(args.source):
    steps.append(("source", ["git", "clone", "--quiet", args.source, build]))
    if args.ref:
      steps.append(("source", ["git", "-C", build, "checkout", "--quiet", args.ref]))
  else:
    source = str(find_source_root(locate_input(args.source, "avjax source"))) if resolve else args.source
    steps.append(("source", ["cp", "-r", source, build]))

  python = f"{venv}/bin/python"
  uv = [sys.executable, "-m", "uv"]
  steps += [
      ("install", [sys.executable, "-m", "pip", "install", "--quiet", "uv"]),
      ("install", [*uv, "venv", "--quiet", "--python", args.python, venv]),
      ("install", [*uv, "pip", "install", "--quiet", "--python", python,
                   "-r", f"{build}/requirements.lock"]),
      ("install", [*uv, "pip", "install", "--quiet", "--python", python, "-e", f"{build}[tpu]"]),
      ("probe", [python, "-c", PROBE]),
  ]

  config_path, sep, config_arg = args.config.partition(":")
  if not os.path.isabs(config_path):
    config_path = f"{build}/{config_path}"
  run = [f"{venv}/bin/avjax", args.command, "--config", config_path + sep + config_arg,
         "--workdir", args.workdir]
  if args.folds:
    run += ["--folds", args.folds]
  if args.data_dir:
    data_dir = str(locate_input(args.data_dir, "data dir")) if resolve else args.data_dir
    run.append(f"--config.data.data_dir={data_dir}")
  run += args.overrides
  steps.append(("run", run))
  return steps


def tpu_family(text: str) -> str:
  """'TPU v5 lite' / 'v5litepod-8' / 'v5e-8' -> 'v5e'; 'TPU v3' / 'v3-8' -> 'v3'."""
  t = text.lower().replace("tpu", "").replace(" ", "").split("-")[0]
  t = t.replace("litepod", "e").replace("lite", "e")
  return "v5" if t == "v5p" else t  # jax calls a v5p chip "TPU v5".


# Set by some Kaggle TPU images for their own preinstalled frameworks. A library
# path would make the venv's jax load the image's libtpu instead of the one that
# matches it; a baked-in accelerator type (older images say v3-8) may not match
# the machine the kernel got.
IMAGE_LIBTPU_VARS = ("TPU_LIBRARY_PATH",)
IMAGE_TOPOLOGY_VARS = ("TPU_ACCELERATOR_TYPE", "TPU_PROCESS_ADDRESSES")


def child_env(*, keep_topology: bool = True) -> dict[str, str]:
  """The kernel's environment for avjax: TPU only (no silent CPU fallback), the
  venv's own libtpu, and, with keep_topology=False, no image topology hints."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "tpu"
  if "xla_force_host_platform" in env.get("XLA_FLAGS", ""):
    del env["XLA_FLAGS"]  # Simulated CPU devices have no place on a TPU run.
  for var in IMAGE_LIBTPU_VARS + (() if keep_topology else IMAGE_TOPOLOGY_VARS):
    env.pop(var, None)
  return env


def probe_tpu(cmd: list[str]) -> tuple[dict, dict[str, str]]:
  """Runs the probe; if it fails with the image's topology hints set, once more
  without them. Returns the devices and the environment that worked."""
  env = child_env()
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  try:
    return check_tpu(p.stdout, p.returncode, p.stderr, env), env
  except LaunchError:
    if not any(v in os.environ for v in IMAGE_TOPOLOGY_VARS):
      raise
  env = child_env(keep_topology=False)
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  info = check_tpu(p.stdout, p.returncode, p.stderr, env)
  print(f"{PROG}: note: the TPU started only without the image's "
        f"{', '.join(IMAGE_TOPOLOGY_VARS)}; running without them", file=sys.stderr)
  return info, env


def check_tpu(stdout: str, returncode: int, stderr: str,
              env: dict[str, str] | None = None) -> dict:
  """The probe's device summary, or a one-line LaunchError when there is no TPU."""
  lines = [line for line in stdout.splitlines() if line.startswith("{")]
  if returncode != 0 or not lines:
    last = " ".join((stderr.strip().splitlines() or ["no output"])[-1].split())[:200]
    raise LaunchError(f"no TPU: jax could not start one ({last}); set the kernel's "
                      "accelerator to TPU v5e-8 (machine_shape TpuV5E8)")
  info = json.loads(lines[-1])
  if info["platform"] != "tpu":
    raise LaunchError(f"no TPU: jax sees {info['count']} {info['platform']} device(s); set the "
                      "kernel's accelerator to TPU v5e-8 (machine_shape TpuV5E8)")
  declared = (os.environ if env is None else env).get("TPU_ACCELERATOR_TYPE", "")
  if declared and tpu_family(declared) != tpu_family(info["kind"]):
    print(f"{PROG}: warning: TPU_ACCELERATOR_TYPE={declared} but jax sees {info['kind']}",
          file=sys.stderr)
  return info


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line and exit 2."""

  def error(self, message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = _Parser(prog=PROG, description=__doc__.split("\n")[0],
                                   epilog="--config.KEY=VALUE flags go to avjax unchanged.")
  parser.add_argument("--source", default=SOURCE,
                      help="avjax source: a folder (a Kaggle dataset) or a git URL")
  parser.add_argument("--ref", default=REF, help="with a git URL: branch, tag or commit")
  parser.add_argument("--config", default=CONFIG, help="experiments/NAME.py[:ARGS]")
  parser.add_argument("--data-dir", default=DATA_DIR, help="prepared data (a Kaggle dataset)")
  parser.add_argument("--workdir", default=WORKDIR)
  parser.add_argument("--cv", dest="command", action="store_const", const="cv", default=COMMAND,
                      help="run avjax cv instead of avjax train")
  parser.add_argument("--folds", default=None, help="avjax cv --folds")
  parser.add_argument("--python", default=PYTHON, help="Python version of the venv")
  parser.add_argument("--build-dir", default=BUILD_DIR)
  parser.add_argument("--venv", default=VENV)
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands, one per line, and run nothing")
  args, unknown = parser.parse_known_args(argv)
  overrides, stray = list(OVERRIDES), []
  i = 0
  while i < len(unknown):
    token = unknown[i]
    if token.startswith("--config.") and "=" in token:
      overrides.append(token)
    elif token.startswith("--config.") and i + 1 < len(unknown):
      overrides.append(f"{token}={unknown[i + 1]}")
      i += 1
    else:
      stray.append(token)
    i += 1
  # Kaggle may start a script kernel with arguments of its own: ignore them there.
  if stray and not os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
    parser.error(f"unrecognized arguments: {' '.join(stray)}")
  if args.folds and args.command != "cv":
    parser.error("--folds needs --cv")
  args.overrides = overrides
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    steps = plan(args, resolve=not args.dry_run)
    if args.dry_run:
      for _, cmd in steps:
        print(shlex.join(cmd))
      return 0
    env = child_env()
    for label, cmd in steps:
      print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
      if label == "probe":
        info, env = probe_tpu(cmd)
        print(f"{PROG}: {info['count']} x {info['kind']} (jax {info['jax']})", flush=True)
        continue
      rc = subprocess.run(cmd, env=env, check=False).returncode
      if rc != 0:
        raise LaunchError(f"{label} step failed with exit {rc}: {shlex.join(cmd)}")
  except LaunchError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 1
  print(f"{PROG}: done; results in {args.workdir}", flush=True)
  return 0


if __name__ == "__main__":
  code = main()
  if code:  # Kaggle may run this inside IPython, where SystemExit(0) reads as a failure.
    sys.exit(code)
