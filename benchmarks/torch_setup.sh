#!/usr/bin/env bash
# Builds .venv-bench: the project venv plus PyTorch, for benchmarks/train_step.py.
#
# Why a separate venv: torch is a baseline of one benchmark, not a dependency of
# avjax, so it must never land in .venv (which `make` builds from the pins).
# .venv-bench holds only torch and what torch needs beyond the project; a .pth
# file puts the project venv's site-packages (avjax, jax, TF/Keras, ...) behind
# its own, so nothing is copied and the versions are exactly the project's.
#
# Usage (from the repository root, after `make venv`):
#   bash benchmarks/torch_setup.sh
#   .venv-bench/bin/python -m benchmarks.train_step
set -euo pipefail

cd "$(dirname "$0")/.."
PROJECT_VENV=${PROJECT_VENV:-.venv}
BENCH_VENV=${BENCH_VENV:-.venv-bench}
# Pinned: an unpinned torch from PyPI pulls GBs of CUDA wheels. Where no local
# CPU wheel is configured for pip, TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the CPU build from PyTorch's own index.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}

if [[ ! -x "$PROJECT_VENV/bin/python" ]]; then
  echo "no $PROJECT_VENV: run 'make venv' first" >&2
  exit 1
fi
if [[ ! -x "$BENCH_VENV/bin/python" ]]; then
  # Same interpreter as the project venv (a venv made from a venv uses its base).
  "$PROJECT_VENV/bin/python" -m venv "$BENCH_VENV"
fi
purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
project_site=$(cd "$(purelib "$PROJECT_VENV")" && pwd)
bench_site=$(purelib "$BENCH_VENV")
# addsitedir (not a bare path line) so the project's own .pth files, such as the
# editable avjax install, are processed too.
echo "import site; site.addsitedir('$project_site')" > "$bench_site/_avjax_project_venv.pth"
index_args=()
[[ -n "$TORCH_INDEX" ]] && index_args=(--index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple)
"$BENCH_VENV/bin/python" -m pip install --quiet "${index_args[@]}" "$TORCH_SPEC"
"$BENCH_VENV/bin/python" -c 'import torch, jax, keras, avjax; print("torch", torch.__version__, "| jax", jax.__version__, "| keras", keras.__version__, "| avjax ok")'
