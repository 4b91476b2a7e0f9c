#!/usr/bin/env bash
# Runs an avjax config on a Cloud TPU VM or pod slice, from creation to deletion:
#
#   1. create the TPU VM (gcloud compute tpus tpu-vm create);
#   2. ship this repository to every worker (a `git archive` of --ref, copied with
#      tpu-vm scp --worker=all) or clone --repo-url there;
#   3. set up every worker: a Python 3.11 venv made by uv (the interpreter that
#      requirements.lock was frozen on; TPU VM images ship 3.10 or 3.12), the lock,
#      then `pip install -e '.[tpu]'` (jax[tpu] adds the matching libtpu); gcsfuse;
#      the prepared data copied from --data-dir to the worker's disk;
#   4. run `avjax train` (or `avjax cv`) on all workers at once, streaming their
#      logs here; AVJAX_MULTIHOST=1 on a multi-host slice (more than 8 chips/cores);
#   5. delete the TPU VM, also on failure or ctrl-c, unless --keep.
#
# The workdir is a gs:// URL. avjax writes its workdir with plain file I/O today,
# so by default (--workdir-mode fuse) each worker mounts the bucket with gcsfuse
# and avjax writes into the mount; --workdir-mode gs hands the gs:// URL to avjax
# unchanged.
#
#   launch/tpu_vm.sh --name avjax-s1 --zone europe-west4-a --accelerator v3-8 \
#     --config experiments/sultana2024.py:audio,tpu_v3_8 \
#     --workdir gs://my-bucket/runs/s1_audio --data-dir gs://my-bucket/avjax_data
#   launch/tpu_vm.sh --dry-run ...       # print the commands only (gcloud not needed)
#   launch/tpu_vm.sh --help
set -euo pipefail

prog="$(basename "$0")"

usage() {
  cat <<EOF
usage: $prog --name NAME --zone ZONE --accelerator TYPE --config experiments/NAME.py[:ARGS]
             --workdir gs://BUCKET/PATH [options] [--config.KEY=VALUE ...]

required:
  --name NAME            TPU VM name (deleted at the end unless --keep)
  --zone ZONE            e.g. europe-west4-a, us-central2-b, us-west4-a
  --accelerator TYPE     v2-8, v3-8, v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...
  --config SPEC          experiments/NAME.py[:ARGS], relative to the repository
  --workdir gs://...     where checkpoints, metrics and reports go

options:
  --version RUNTIME      TPU software version (default by family: v2/v3/v4
                         tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                         v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --project PROJECT      Google Cloud project (default: gcloud's configured one)
  --data-dir gs://...    prepared data (the --data-dir of avjax prepare); copied to
                         each worker and passed as --config.data.data_dir
  --spot | --preemptible create a Spot / preemptible TPU VM
  --keep                 do not delete the TPU VM at the end
  --cv                   run avjax cv instead of avjax train
  --folds LIST           avjax cv --folds (comma-separated fold indices)
  --multihost            force AVJAX_MULTIHOST=1 (automatic above 8 chips/cores)
  --repo-url URL         git clone URL on the workers instead of copying this checkout
  --ref REF              what to ship: git archive REF here, or checkout REF after
                         the clone (default HEAD / the default branch)
  --python VERSION       Python for the workers' venv (default 3.11, the lock's)
  --workdir-mode MODE    fuse (default: gcsfuse-mount the bucket) or gs (pass the
                         gs:// URL to avjax as is)
  --create-flag FLAG     extra flag for tpu-vm create (repeatable), e.g.
                         --create-flag=--reserved --create-flag=--network=NET
  --dry-run              print the commands, one per line, and run nothing
  --config.KEY=VALUE     passed to avjax unchanged (repeatable)
EOF
}

die() {
  echo "$prog: error: $*" >&2
  exit 2
}

# Quotes one word for a POSIX shell: bare when safe, else in single quotes.
q() {
  case "$1" in
    '') printf "''" ;;
    *[!A-Za-z0-9_./:=,@%+-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# A command array as one line that bash (and shlex) reads back as the same words.
show() {
  local out="" word
  for word in "$@"; do out+="$(q "$word") "; done
  printf '%s\n' "${out% }"
}

name="" zone="" accelerator="" version="" project="" config="" workdir="" data_dir=""
spot=0 preemptible=0 keep=0 dry_run=0 cv=0 folds="" force_multihost=0
repo_url="" ref="" python_version="3.11" workdir_mode="fuse"
overrides=() create_flags=()

need() {  # need FLAG "$#" VALUE: the flag's value must be there and not a flag.
  if [ "$2" -lt 2 ] || [ -z "$3" ] || [ "${3#--}" != "$3" ]; then die "$1 needs a value"; fi
}

while [ $# -gt 0 ]; do
  arg="$1"
  case "$arg" in
    --*=*) flag="${arg%%=*}"; value="${arg#*=}"; has_value=1 ;;
    *) flag="$arg"; value=""; has_value=0 ;;
  esac
  case "$flag" in
    --name|--zone|--accelerator|--version|--project|--config|--workdir|--data-dir|\
    --folds|--repo-url|--ref|--python|--workdir-mode|--create-flag)
      if [ "$has_value" = 0 ]; then
        need "$flag" "$#" "${2:-}"; value="$2"; shift
      elif [ -z "$value" ]; then
        die "$flag needs a value"
      fi
      case "$flag" in
        --name) name="$value" ;;
        --zone) zone="$value" ;;
        --accelerator) accelerator="$value" ;;
        --version) version="$value" ;;
        --project) project="$value" ;;
        --config) config="$value" ;;
        --workdir) workdir="$value" ;;
        --data-dir) data_dir="$value" ;;
        --folds) folds="$value" ;;
        --repo-url) repo_url="$value" ;;
        --ref) ref="$value" ;;
        --python) python_version="$value" ;;
        --workdir-mode) workdir_mode="$value" ;;
        --create-flag) create_flags+=("$value") ;;
      esac
      ;;
    --spot|--preemptible|--keep|--dry-run|--cv|--multihost|-h|--help)
      [ "$has_value" = 0 ] || die "$flag takes no value"
      case "$flag" in
        --spot) spot=1 ;;
        --preemptible) preemptible=1 ;;
        --keep) keep=1 ;;
        --dry-run) dry_run=1 ;;
        --cv) cv=1 ;;
        --multihost) force_multihost=1 ;;
        -h|--help) usage; exit 0 ;;
      esac
      ;;
    --config.*)
      if [ "$has_value" = 1 ]; then
        overrides+=("$arg")
      else  # --config.KEY VALUE, as avjax itself accepts.
        need "$flag" "$#" "${2:-}"; overrides+=("$flag=$2"); shift
      fi
      ;;
    *) die "unknown argument: $arg (see $prog --help)" ;;
  esac
  shift
done

missing=()
for pair in "--name:$name" "--zone:$zone" "--accelerator:$accelerator" \
            "--config:$config" "--workdir:$workdir"; do
  [ -n "${pair#*:}" ] || missing+=("${pair%%:*}")
done
[ ${#missing[@]} -eq 0 ] || die "missing required ${missing[*]} (see $prog --help)"

[[ "$name" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "--name must be lowercase letters, digits and dashes, starting with a letter: $name"
[ "$spot" = 1 ] && [ "$preemptible" = 1 ] && die "--spot and --preemptible exclude each other"
case "$workdir_mode" in fuse|gs) ;; *) die "--workdir-mode must be fuse or gs, not $workdir_mode" ;; esac
[ -z "$folds" ] || [ "$cv" = 1 ] || die "--folds needs --cv"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# What is shipped is this checkout: catch a mistyped config before paying for a VM.
[ -n "$repo_url" ] || [ -f "$here/${config%%:*}" ] || die "--config: no such file in $here: ${config%%:*}"

gs_re='^gs://([a-z0-9][-a-z0-9_.]{1,221}[a-z0-9])(/[-A-Za-z0-9_.=/]*)?$'
[[ "$workdir" =~ $gs_re ]] ||
  die "--workdir must be gs://BUCKET/PATH, a bucket every worker can reach (the TPU VM is deleted at the end): $workdir"
bucket="${BASH_REMATCH[1]}"
object_path="${BASH_REMATCH[2]#/}"
object_path="${object_path%/}"
if [ -n "$data_dir" ]; then
  [[ "$data_dir" =~ $gs_re ]] || die "--data-dir must be gs://BUCKET/PATH: $data_dir"
fi

# Accelerator family -> TPU software version; suffix -> hosts (8 per host).
[[ "$accelerator" =~ ^(v[0-9]+[a-z]*)-([0-9]+)$ ]] ||
  die "--accelerator must look like v3-8, v4-32, v5litepod-8, v6e-8: $accelerator"
family="${BASH_REMATCH[1]}"
size="${BASH_REMATCH[2]}"
if [ -z "$version" ]; then
  case "$family" in
    v2|v3|v4) version="tpu-ubuntu2204-base" ;;
    v5litepod) version="v2-alpha-tpuv5-lite" ;;
    v5p) version="v2-alpha-tpuv5" ;;
    v6e) version="v2-alpha-tpuv6e" ;;
    v5e) die "Cloud TPU names v5e slices v5litepod-N (e.g. v5litepod-8), not $accelerator" ;;
    *) die "no default --version for $family; pass --version RUNTIME" ;;
  esac
fi
multihost=0
if [ "$size" -gt 8 ] || [ "$force_multihost" = 1 ]; then multihost=1; fi

gcloud_opts=(--zone "$zone")
[ -z "$project" ] || gcloud_opts+=(--project "$project")
tpu=(gcloud compute tpus tpu-vm)

# 1. create
create=("${tpu[@]}" create "$name" "${gcloud_opts[@]}" --accelerator-type "$accelerator"
        --version "$version")
[ "$spot" = 0 ] || create+=(--spot)
[ "$preemptible" = 0 ] || create+=(--preemptible)
create+=(${create_flags[@]+"${create_flags[@]}"})  # (bash 3.2-safe when empty)

# 2. source on every worker
tarball="${TMPDIR:-/tmp}/avjax-src-$name.tar.gz"
if [ -z "$repo_url" ]; then
  archive=(git -C "$here" archive --format=tar.gz -o "$tarball" "${ref:-HEAD}")
  scp=("${tpu[@]}" scp "$tarball" "$name:avjax-src.tar.gz" "${gcloud_opts[@]}" --worker=all)
  remove_tarball=(rm -f "$tarball")
  fetch="rm -rf avjax && mkdir avjax && tar -xzf avjax-src.tar.gz -C avjax && rm -f avjax-src.tar.gz"
else
  fetch="rm -rf avjax && git clone --quiet $(q "$repo_url") avjax"
  [ -z "$ref" ] || fetch+=" && git -C avjax checkout --quiet $(q "$ref")"
fi

# 3. setup on every worker (POSIX sh: the login shell runs it)
setup_steps=(
  "set -eu"
  "$fetch"
  "python3 -m pip install --user --quiet --upgrade uv || python3 -m pip install --user --quiet --upgrade --break-system-packages uv"
  "UV=\"\$HOME/.local/bin/uv\""
  "\"\$UV\" venv --quiet --python $(q "$python_version") avjax/.venv"
  "cd avjax"
  "\"\$UV\" pip install --quiet --python .venv/bin/python -r requirements.lock"
  "\"\$UV\" pip install --quiet --python .venv/bin/python -e \".[tpu]\""
  ".venv/bin/avjax --help >/dev/null"
  "cd"
)
if [ "$workdir_mode" = fuse ]; then
  # gcsfuse from Google's apt repository, as its install guide does it.
  apt_line="deb [signed-by=/usr/share/keyrings/cloud.google.asc]"
  apt_line+=" https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main"
  install_gcsfuse="echo \"$apt_line\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
  install_gcsfuse+=" && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
  install_gcsfuse+=" | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
  install_gcsfuse+=" && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse"
  setup_steps+=("if ! command -v gcsfuse >/dev/null; then $install_gcsfuse; fi")
fi
if [ -n "$data_dir" ]; then
  setup_steps+=("mkdir -p avjax_data" "gcloud storage rsync --recursive $(q "$data_dir") avjax_data")
fi

# 4. run on every worker at once
run_steps=("set -eu")
if [ "$workdir_mode" = fuse ]; then
  mount_dir="\"\$HOME/gcs/$bucket\""
  run_steps+=(
    "mkdir -p $mount_dir"
    "mountpoint -q $mount_dir || gcsfuse --implicit-dirs $(q "$bucket") $mount_dir"
  )
  run_workdir="\"\$HOME/gcs/$bucket${object_path:+/$object_path}\""
else
  run_workdir="$(q "$workdir")"
fi
avjax_cmd="cd avjax &&"
# The trainer calls jax.distributed.initialize() when this is set (sharding.py).
[ "$multihost" = 0 ] || avjax_cmd+=" env AVJAX_MULTIHOST=1"
avjax_cmd+=" .venv/bin/avjax"
if [ "$cv" = 1 ]; then avjax_cmd+=" cv"; else avjax_cmd+=" train"; fi
avjax_cmd+=" --config $(q "$config") --workdir $run_workdir"
[ -z "$folds" ] || avjax_cmd+=" --folds $(q "$folds")"
[ -z "$data_dir" ] || avjax_cmd+=" --config.data.data_dir=\"\$HOME/avjax_data\""
for o in ${overrides[@]+"${overrides[@]}"}; do avjax_cmd+=" $(q "$o")"; done
run_steps+=("$avjax_cmd")

join() {  # The steps as one line for the remote shell: "a; b; c".
  local out="" step
  for step in "$@"; do out+="$step; "; done
  printf '%s' "${out%; }"
}
setup=("${tpu[@]}" ssh "$name" "${gcloud_opts[@]}" --worker=all --command "$(join "${setup_steps[@]}")")
run=("${tpu[@]}" ssh "$name" "${gcloud_opts[@]}" --worker=all --command "$(join "${run_steps[@]}")")

# 5. delete
delete=("${tpu[@]}" delete "$name" "${gcloud_opts[@]}" --quiet)

if [ "$dry_run" = 1 ]; then
  show "${create[@]}"
  if [ -z "$repo_url" ]; then show "${archive[@]}"; show "${scp[@]}"; show "${remove_tarball[@]}"; fi
  show "${setup[@]}"
  show "${run[@]}"
  [ "$keep" = 1 ] || show "${delete[@]}"
  exit 0
fi

command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI"
[ -n "$repo_url" ] || git -C "$here" rev-parse --verify --quiet "${ref:-HEAD}^{commit}" >/dev/null ||
  die "--ref ${ref:-HEAD} is not a commit of $here"
if [ -z "$repo_url" ] && [ -z "$ref" ] && [ -n "$(git -C "$here" status --porcelain --untracked-files=no)" ]; then
  echo "$prog: note: uncommitted changes are not shipped (git archive HEAD)" >&2
fi

created=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  rm -f "$tarball"
  if [ "$created" = 1 ]; then
    if [ "$keep" = 1 ]; then
      echo "$prog: kept $name; delete it with: $(show "${delete[@]}")" >&2
    else
      echo "$prog: deleting $name" >&2
      "${delete[@]}" || echo "$prog: deleting $name failed; run: $(show "${delete[@]}")" >&2
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { echo "+ $(show "$@")" >&2; "$@"; }

created=1  # From here on an interruption deletes the VM.
if ! step "${create[@]}"; then
  # It may already exist and be someone else's: never delete what we did not make.
  created=0
  echo "$prog: creating $name failed (if it was created anyway: $(show "${delete[@]}"))" >&2
  exit 1
fi
if [ -z "$repo_url" ]; then
  step "${archive[@]}"
  step "${scp[@]}"
  step "${remove_tarball[@]}"
fi
step "${setup[@]}"
step "${run[@]}"
echo "$prog: done; results in $workdir" >&2
