#!/usr/bin/env bash
# Runs an avjax config on this machine's CPU as if it had 8 devices, so the
# sharded code paths (mesh, NamedSharding, global batches) are exercised exactly
# as on a TPU v3-8, only slower.
#
#   launch/local.sh --config experiments/sultana2024.py:audio,smoke --workdir /tmp/run
#   launch/local.sh --dry-run --config ... --workdir ...   # print the commands only
#   DEVICES=4 launch/local.sh ...                          # another device count
set -euo pipefail

# usage [CODE]: the help text, on stdout for --help (exit 0), else on stderr (exit 2).
usage() {
  local code="${1:-2}"
  local text="usage: $0 [--dry-run] [--devices N] --config experiments/NAME.py[:ARGS] --workdir DIR [--config.KEY=VALUE ...]

  --config SPEC        experiments/NAME.py[:ARGS]
  --workdir DIR        where checkpoints, metrics and reports go
  --devices N          simulated CPU devices (default \$DEVICES or 8)
  --dry-run            print the command and run nothing
  --config.KEY=VALUE   passed to avjax train unchanged (repeatable)
  -h, --help           this help"
  if [ "$code" = 0 ]; then
    echo "$text"
  else
    echo "$text" >&2
  fi
  exit "$code"
}

dry_run=0
devices="${DEVICES:-8}"
config=""
workdir=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --devices) devices="${2:?--devices needs a number}"; shift ;;
    --devices=*) devices="${1#*=}" ;;
    --config) config="${2:?--config needs a value}"; shift ;;
    --config=*) config="${1#*=}" ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift ;;
    --workdir=*) workdir="${1#*=}" ;;
    --config.*) extra+=("$1") ;;
    -h|--help) usage 0 ;;
    *) echo "$0: unknown argument: $1" >&2; usage ;;
  esac
  shift
done
[ -n "$config" ] && [ -n "$workdir" ] || usage
case "$devices" in ''|*[!0-9]*) echo "$0: --devices must be a positive integer" >&2; exit 2 ;; esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
avjax="$here/.venv/bin/avjax"
[ -x "$avjax" ] || avjax="avjax"

cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu
     "$avjax" train --config "$config" --workdir "$workdir" "${extra[@]}")
if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
