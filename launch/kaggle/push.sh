#!/usr/bin/env bash
# Pushes launch/kaggle (kernel-metadata.json + run_avjax.py) as a Kaggle script
# kernel, which queues a run on a Kaggle TPU, then follows it: waits for the run
# to end and downloads its output (the avjax workdir under /kaggle/working).
#
#   launch/kaggle/push.sh                            # push, wait, download to kaggle_output/
#   launch/kaggle/push.sh --accelerator TpuV6E8      # another machine_shape for this push
#   launch/kaggle/push.sh --no-wait                  # push only; print the follow-up commands
#   launch/kaggle/push.sh --dry-run                  # print the commands only (kaggle not needed)
#
# First edit kernel-metadata.json ("id", "dataset_sources") and the settings at the
# top of run_avjax.py. Needs the kaggle CLI (pip install kaggle) and its API token.
set -euo pipefail

prog="$(basename "$0")"
usage() {
  echo "usage: $prog [--dry-run] [--no-wait] [--accelerator SHAPE] [--dir DIR] [--output DIR] [--poll SECONDS]" >&2
  exit 2
}
die() {
  echo "$prog: error: $*" >&2
  exit 2
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$here"
dry_run=0
wait=1
accelerator=""
output="kaggle_output"
poll=60
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --no-wait) wait=0 ;;
    --accelerator|--dir|--output|--poll)
      [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || die "$1 needs a value"
      case "$1" in
        --accelerator) accelerator="$2" ;;
        --dir) dir="$2" ;;
        --output) output="$2" ;;
        --poll) poll="$2" ;;
      esac
      shift ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --dir=*) dir="${1#*=}" ;;
    --output=*) output="${1#*=}" ;;
    --poll=*) poll="${1#*=}" ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1 (see $prog --help)" ;;
  esac
  shift
done
case "$poll" in ''|*[!0-9]*) die "--poll must be a number of seconds" ;; esac

metadata="$dir/kernel-metadata.json"
[ -f "$metadata" ] || die "no kernel-metadata.json in $dir"
kernel_id="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$metadata")" ||
  die "cannot read \"id\" from $metadata"

push=(kaggle kernels push -p "$dir")
[ -z "$accelerator" ] || push+=(--accelerator "$accelerator")
status=(kaggle kernels status "$kernel_id")
fetch=(kaggle kernels output "$kernel_id" -p "$output")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${push[@]}"; echo
  printf '%q ' "${status[@]}"; echo
  printf '%q ' "${fetch[@]}"; echo
  exit 0
fi

case "$kernel_id" in
  YOUR_KAGGLE_USERNAME/*) die "set \"id\" (and dataset_sources) in $metadata to your Kaggle user first" ;;
esac
command -v kaggle >/dev/null || die "kaggle CLI not found: pip install kaggle"

"${push[@]}"
if [ "$wait" = 0 ]; then
  echo "follow it with:"
  printf '  %q' "${status[@]}"; echo
  printf '  %q' "${fetch[@]}"; echo
  exit 0
fi

# The status line reads like: USER/SLUG has status "KernelWorkerStatus.RUNNING".
while :; do
  sleep "$poll"
  line="$("${status[@]}" 2>&1)" || { echo "$prog: $line" >&2; continue; }
  echo "$line"
  case "$(printf '%s' "$line" | tr '[:upper:]' '[:lower:]')" in
    *complete*) break ;;
    *error*|*cancel*) echo "$prog: the run did not complete; its log is in the output" >&2
                      mkdir -p "$output"; "${fetch[@]}" || true; exit 1 ;;
  esac
done
mkdir -p "$output"
"${fetch[@]}"
echo "$prog: output of $kernel_id in $output/"
