"""Builds avjax/ops/_onednn_conv.so, the oneDNN convolution FFI targets.

`make test`/`make demo` run this (target `ops`) after installing the pins (onednn-cpu-gomp and
onednn-devel-cpu-gomp put libdnnl and its headers under the venv prefix; the
XLA FFI headers come with jaxlib). By hand:

  .venv/bin/python -m avjax.ops.build [--force]

Prints one line and exits 0 when it cannot build (no compiler, no oneDNN):
avjax then falls back to its XLA convolutions and says so once at run time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "onednn_conv.cc")
LIBRARY = os.path.join(HERE, "_onednn_conv.so")


def dnnl_prefix() -> str:
  """Where pip put oneDNN's data files: the environment's prefix."""
  return sys.prefix


def command(compiler: str) -> list[str]:
  import jax  # pylint: disable=g-import-not-at-top
  prefix = dnnl_prefix()
  lib = os.path.join(prefix, "lib")
  return [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
          "-I", jax.ffi.include_dir(),
          "-I", os.path.join(prefix, "include"), SOURCE, "-o", LIBRARY,
          "-L", lib, "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]


def build(force: bool = False) -> str | None:
  """Returns None on success, else why it could not build."""
  if (not force and os.path.exists(LIBRARY)
      and os.path.getmtime(LIBRARY) >= os.path.getmtime(SOURCE)):
    return None
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not compiler:
    return "no C++ compiler (set CXX or install g++)"
  header = os.path.join(dnnl_prefix(), "include", "oneapi", "dnnl", "dnnl.hpp")
  if not os.path.exists(header):
    return f"no oneDNN headers at {header} (pip install onednn-devel-cpu-gomp)"
  if not os.path.exists(os.path.join(dnnl_prefix(), "lib", "libdnnl.so.3")):
    return f"no libdnnl.so.3 under {dnnl_prefix()}/lib (pip install onednn-cpu-gomp)"
  tmp = LIBRARY + ".tmp"
  cmd = command(compiler)
  cmd[cmd.index(LIBRARY)] = tmp
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  except OSError as e:
    return f"cannot run {compiler}: {e}"
  if done.returncode != 0:
    return f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-4000:]}"
  os.replace(tmp, LIBRARY)
  return None


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
  args = parser.parse_args()
  why = build(args.force)
  if why:
    print(f"avjax.ops.build: not built, avjax will use its XLA convolutions: {why}")
  else:
    print(f"avjax.ops.build: {LIBRARY}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
