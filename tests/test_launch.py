"""Launch scripts, checked through their --dry-run output: what they would run on a
Cloud TPU VM, on Kaggle and locally. Nothing here needs gcloud or kaggle: both are
shadowed by stubs that record any call, and a dry run must make none."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_VM = REPO / "launch" / "tpu_vm.sh"
LOCAL = REPO / "launch" / "local.sh"
KAGGLE_DIR = REPO / "launch" / "kaggle"
KAGGLE_RUN = KAGGLE_DIR / "run_avjax.py"
KAGGLE_PUSH = KAGGLE_DIR / "push.sh"
KAGGLE_METADATA = KAGGLE_DIR / "kernel-metadata.json"

CONFIG = "experiments/sultana2024.py:audio,tpu_v3_8"
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
STUBBED = ("gcloud", "gsutil", "kaggle", "git", "uv", "gcsfuse")


@pytest.fixture
def stubs(tmp_path):
  """A PATH whose gcloud/kaggle/git/... only record that they were called."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  for name in STUBBED:
    stub = bin_dir / name
    stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 97\n')
    stub.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return env, log


def run(cmd, env, timeout=60):
  return subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def dry_run(cmd, stubs_fixture) -> list[list[str]]:
  env, log = stubs_fixture
  proc = run(cmd, env)
  assert proc.returncode == 0, proc.stderr
  assert not log.exists(), f"a dry run called: {log.read_text()}"
  lines = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
  assert lines, "the dry run printed nothing"
  return lines


def value(words: list[str], flag: str) -> str:
  """The value of `flag` in words, given as `flag VALUE` or `flag=VALUE`."""
  for i, w in enumerate(words):
    if w == flag:
      return words[i + 1]
    if w.startswith(flag + "="):
      return w[len(flag) + 1:]
  raise AssertionError(f"{flag} not in {words}")


def remote_commands(script: str) -> list[list[str]]:
  """A remote --command string as its simple commands (split at ; && || |)."""
  lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  commands, current = [], []
  for token in lexer:
    if token in (";", "&&", "||", "|"):
      if current:
        commands.append(current)
      current = []
    else:
      current.append(token)
  if current:
    commands.append(current)
  return commands


def gcloud_lines(lines, verb):
  return [i for i, words in enumerate(lines) if words[:5] == [*GCLOUD, verb]]


def avjax_command(commands: list[list[str]]) -> list[str]:
  found = [c for c in commands if any(w.endswith("bin/avjax") for w in c)]
  assert len(found) == 1, commands
  return found[0]


def tpu_args(**kw) -> list[str]:
  args = {"name": "avjax-test", "zone": "europe-west4-a", "accelerator": "v3-8",
          "config": CONFIG, "workdir": "gs://avjax-bucket/runs/s1_audio"}
  args.update(kw)
  out = []
  for k, v in args.items():
    if v is not None:
      out += [f"--{k.replace('_', '-')}", v]
  return out


def one_line_error(proc):
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert proc.stdout == ""
  return lines[0]


# ----- launch/tpu_vm.sh ------------------------------------------------------------

def test_tpu_vm_dry_run_pod_slice(stubs):
  overrides = ["--config.train.num_epochs=3", "--config.seed=7"]
  lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(accelerator="v4-32"),
                   "--data-dir", "gs://avjax-bucket/avjax_data", "--project", "my-proj",
                   "--spot", *overrides], stubs)

  # create: first, with zone, accelerator, the v4 runtime, project and spot.
  (create,) = gcloud_lines(lines, "create")
  assert create == 0
  words = lines[create]
  assert words[5] == "avjax-test"
  assert value(words, "--zone") == "europe-west4-a"
  assert value(words, "--accelerator-type") == "v4-32"
  assert value(words, "--version") == "tpu-ubuntu2204-base"
  assert value(words, "--project") == "my-proj"
  assert "--spot" in words and "--preemptible" not in words

  # the source: a git archive here, copied to every worker.
  (archive,) = [i for i, w in enumerate(lines) if w[:1] == ["git"] and "archive" in w]
  (scp,) = gcloud_lines(lines, "scp")
  assert archive < scp
  assert value(lines[archive], "-o") in lines[scp]
  assert "--worker=all" in lines[scp]

  # setup, then run, both on every worker.
  setup, run_ = gcloud_lines(lines, "ssh")
  assert scp < setup < run_
  for i in (setup, run_):
    assert "--worker=all" in lines[i]
    assert value(lines[i], "--zone") == "europe-west4-a"
    assert value(lines[i], "--project") == "my-proj"
  setup_cmds = remote_commands(value(lines[setup], "--command"))
  installs = [c for c in setup_cmds if c[1:3] == ["pip", "install"]]
  lock = [i for i, c in enumerate(installs) if "-r" in c]
  tpu = [i for i, c in enumerate(installs) if "-e" in c]
  assert len(lock) == 1 and len(tpu) == 1 and lock[0] < tpu[0], installs
  assert value(installs[lock[0]], "-r") == "requirements.lock"
  assert value(installs[tpu[0]], "-e") == ".[tpu]"
  (rsync,) = [c for c in setup_cmds if c[:3] == ["gcloud", "storage", "rsync"]]
  assert "gs://avjax-bucket/avjax_data" in rsync

  run_cmds = remote_commands(value(lines[run_], "--command"))
  avjax = avjax_command(run_cmds)
  assert "AVJAX_MULTIHOST=1" in avjax  # v4-32: 4 hosts.
  sub = avjax[[w.endswith("bin/avjax") for w in avjax].index(True) + 1]
  assert sub == "train"
  assert value(avjax, "--config") == CONFIG
  assert avjax[-len(overrides):] == overrides
  local_data = value(avjax, "--config.data.data_dir")
  assert local_data == rsync[-1].replace("avjax_data", "$HOME/avjax_data")
  # The gs:// workdir reaches avjax through the worker's gcsfuse mount of its bucket.
  (mount,) = [c for c in run_cmds if c[0] == "gcsfuse"]
  assert mount[-2] == "avjax-bucket"
  assert value(avjax, "--workdir") == mount[-1] + "/runs/s1_audio"

  # delete: last.
  (delete,) = gcloud_lines(lines, "delete")
  assert delete == len(lines) - 1
  assert lines[delete][5] == "avjax-test"
  assert value(lines[delete], "--zone") == "europe-west4-a"


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_tpu_vm_remote_commands_parse(stubs, shell):
  """The workers' login shell runs --command: it must be valid POSIX sh too."""
  if not shutil.which(shell):
    pytest.skip(f"no {shell}")
  for extra in ([], ["--data-dir", "gs://avjax-bucket/d", "--repo-url", "https://x/a.git",
                     "--ref", "main", "--config.paper_protocol=it's; odd"]):
    lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(), *extra], stubs)
    for i in gcloud_lines(lines, "ssh"):
      proc = run([shell, "-n", "-c", value(lines[i], "--command")], os.environ)
      assert proc.returncode == 0, proc.stderr


def test_tpu_vm_keep_leaves_the_vm(stubs):
  lines = dry_run(["bash", TPU_VM, "--dry-run", "--keep", *tpu_args()], stubs)
  assert gcloud_lines(lines, "delete") == []
  assert gcloud_lines(lines, "ssh")[-1] == len(lines) - 1


def test_tpu_vm_single_host_is_not_multihost(stubs):
  lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(accelerator="v5litepod-8")], stubs)
  run_ = gcloud_lines(lines, "ssh")[-1]
  avjax = avjax_command(remote_commands(value(lines[run_], "--command")))
  assert not any(w.startswith("AVJAX_MULTIHOST") for w in avjax)
  forced = dry_run(["bash", TPU_VM, "--dry-run", "--multihost",
                    *tpu_args(accelerator="v5litepod-8")], stubs)
  run_ = gcloud_lines(forced, "ssh")[-1]
  assert "AVJAX_MULTIHOST=1" in avjax_command(remote_commands(value(forced[run_], "--command")))


@pytest.mark.parametrize("accelerator, runtime, multihost", [
    ("v2-8", "tpu-ubuntu2204-base", False),
    ("v3-8", "tpu-ubuntu2204-base", False),
    ("v3-32", "tpu-ubuntu2204-base", True),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", False),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", True),
    ("v5p-8", "v2-alpha-tpuv5", False),
    ("v6e-8", "v2-alpha-tpuv6e", False),
    ("v6e-64", "v2-alpha-tpuv6e", True),
])
def test_tpu_vm_runtime_and_hosts_per_accelerator(stubs, accelerator, runtime, multihost):
  lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(accelerator=accelerator)], stubs)
  assert value(lines[0], "--version") == runtime
  avjax = avjax_command(remote_commands(value(lines[gcloud_lines(lines, "ssh")[-1]], "--command")))
  assert ("AVJAX_MULTIHOST=1" in avjax) == multihost


def test_tpu_vm_version_override(stubs):
  lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(accelerator="v6e-8"),
                   "--version", "v2-alpha-tpuv6e-custom"], stubs)
  assert value(lines[0], "--version") == "v2-alpha-tpuv6e-custom"


def test_tpu_vm_gs_workdir_mode_and_git_clone_and_cv(stubs):
  url = "https://github.com/example/avjax.git"
  lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(), "--workdir-mode", "gs",
                   "--repo-url", url, "--ref", "v0.1.0", "--cv", "--folds", "0,2",
                   "--preemptible"], stubs)
  assert "--preemptible" in lines[0]
  assert gcloud_lines(lines, "scp") == [] and not any(w[0] == "git" for w in lines)
  setup, run_ = gcloud_lines(lines, "ssh")
  setup_cmds = remote_commands(value(lines[setup], "--command"))
  (clone,) = [c for c in setup_cmds if c[:2] == ["git", "clone"]]
  assert url in clone
  assert any(c[:2] == ["git", "-C"] and c[-1] == "v0.1.0" for c in setup_cmds)
  run_cmds = remote_commands(value(lines[run_], "--command"))
  assert not any(c[0] == "gcsfuse" for c in run_cmds)
  avjax = avjax_command(run_cmds)
  assert "cv" in avjax and "train" not in avjax
  assert value(avjax, "--workdir") == "gs://avjax-bucket/runs/s1_audio"
  assert value(avjax, "--folds") == "0,2"


def test_tpu_vm_quotes_overrides_for_the_remote_shell(stubs):
  tricky = "--config.paper_protocol=it's a; test"
  lines = dry_run(["bash", TPU_VM, "--dry-run", *tpu_args(), tricky], stubs)
  avjax = avjax_command(remote_commands(value(lines[gcloud_lines(lines, "ssh")[-1]], "--command")))
  assert avjax[-1] == tricky


@pytest.mark.parametrize("drop", ["name", "zone", "accelerator", "config", "workdir"])
def test_tpu_vm_missing_required_flag(stubs, drop):
  env, log = stubs
  error = one_line_error(run(["bash", TPU_VM, "--dry-run", *tpu_args(**{drop: None})], env))
  assert f"--{drop}" in error
  assert not log.exists()


@pytest.mark.parametrize("extra", [
    ["--frobnicate"],
    ["--workdir", "/tmp/local_run"],
    ["--data-dir", "/tmp/data"],
    ["--spot", "--preemptible"],
    ["--accelerator", "tpu8"],
    ["--accelerator", "v9x-8"],
    ["--config", "experiments/no_such_config.py:audio"],
    ["--name", "Bad_Name"],
    ["--workdir-mode", "nfs"],
    ["--zone"],
])
def test_tpu_vm_bad_flags_fail_in_one_line(stubs, extra):
  env, log = stubs
  one_line_error(run(["bash", TPU_VM, "--dry-run", *tpu_args(), *extra], env))
  assert not log.exists()


def test_tpu_vm_help():
  proc = run(["bash", TPU_VM, "--help"], os.environ)
  assert proc.returncode == 0
  for flag in ("--name", "--zone", "--accelerator", "--version", "--config", "--workdir",
               "--data-dir", "--project", "--spot", "--preemptible", "--keep", "--dry-run"):
    assert flag in proc.stdout


# ----- launch/local.sh -------------------------------------------------------------

@pytest.mark.parametrize("devices", [None, "4"])
def test_local_dry_run_simulates_devices(stubs, devices):
  extra = [] if devices is None else ["--devices", devices]
  (words,) = dry_run(["bash", LOCAL, "--dry-run", *extra, "--config", CONFIG,
                      "--workdir", "/tmp/run", "--config.seed=1"], stubs)
  assert words[0] == "env"
  assignments = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
  flag, _, count = assignments["XLA_FLAGS"].partition("=")
  assert flag == "--xla_force_host_platform_device_count"
  assert count == (devices or "8")
  assert assignments["JAX_PLATFORMS"] == "cpu"
  i = [w.endswith("avjax") for w in words].index(True)
  assert words[i + 1] == "train"
  assert value(words, "--config") == CONFIG and value(words, "--workdir") == "/tmp/run"
  assert words[-1] == "--config.seed=1"


def test_local_help():
  proc = run(["bash", LOCAL, "--help"], os.environ)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage:") and proc.stderr == ""
  for flag in ("--config", "--workdir", "--devices", "--dry-run", "--config.KEY=VALUE"):
    assert flag in proc.stdout


@pytest.mark.parametrize("args", [["--workdir", "/tmp/run"], ["--config", CONFIG],
                                  ["--config", CONFIG, "--workdir", "/tmp/run", "--bogus"]])
def test_local_bad_flags_fail(stubs, args):
  env, _ = stubs
  proc = run(["bash", LOCAL, "--dry-run", *args], env)
  assert proc.returncode != 0 and proc.stdout == ""


# ----- launch/kaggle -----------------------------------------------------------------

def load_kaggle_script():
  spec = importlib.util.spec_from_file_location("kaggle_run_avjax", KAGGLE_RUN)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_kernel_metadata():
  meta = json.loads(KAGGLE_METADATA.read_text())
  for key in ("id", "title", "code_file", "language", "kernel_type", "is_private",
              "enable_gpu", "enable_tpu", "enable_internet", "dataset_sources"):
    assert key in meta, key
  owner, _, slug = meta["id"].partition("/")
  assert owner and slug
  assert (KAGGLE_DIR / meta["code_file"]).is_file()
  assert meta["language"] == "python" and meta["kernel_type"] == "script"
  assert meta["enable_tpu"] is True and meta["enable_gpu"] is False
  assert meta["enable_internet"] is True  # pip and uv download at run time.
  assert meta.get("machine_shape", "").startswith("Tpu")
  assert isinstance(meta["dataset_sources"], list)
  # The script's default source and data are datasets the kernel mounts.
  script = load_kaggle_script()
  slugs = {s.split("/")[-1] for s in meta["dataset_sources"]}
  assert Path(script.SOURCE).name in slugs
  assert Path(script.DATA_DIR).name in slugs


def test_kaggle_dry_run_installs_tpu_extra_and_trains(stubs, tmp_path):
  config = "experiments/sultana2024.py:video,kaggle_tpu_v5e_8"
  build = tmp_path / "build"
  build.mkdir()
  (build / "keep").write_text("x")
  lines = dry_run([sys.executable, KAGGLE_RUN, "--dry-run", "--config", config,
                   "--build-dir", build, "--config.train.num_epochs=2"], stubs)
  assert (build / "keep").exists(), "the dry run touched the build folder"
  installs = [i for i, w in enumerate(lines) if "pip" in w and "install" in w]
  lock = [i for i in installs if "-r" in lines[i]]
  tpu = [i for i in installs if "-e" in lines[i]]
  assert len(lock) == 1 and len(tpu) == 1 and lock[0] < tpu[0]
  assert value(lines[lock[0]], "-r") == f"{build}/requirements.lock"
  assert value(lines[tpu[0]], "-e") == f"{build}[tpu]"
  probe = [i for i, w in enumerate(lines) if "-c" in w and "jax.devices()" in value(w, "-c")]
  assert len(probe) == 1 and tpu[0] < probe[0] < len(lines) - 1
  run_ = lines[-1]
  assert Path(run_[0]).name == "avjax" and run_[1] == "train"
  assert value(run_, "--config") == f"{build}/{config}"
  assert Path(value(run_, "--workdir")).is_relative_to("/kaggle/working")
  assert Path(value(run_, "--config.data.data_dir")).is_relative_to("/kaggle/input")
  assert run_[-1] == "--config.train.num_epochs=2"


def test_kaggle_finds_mounted_datasets(tmp_path, monkeypatch):
  """Kaggle mounts a dataset under /kaggle/input, at times one level deeper."""
  script = load_kaggle_script()
  inputs = tmp_path / "input"
  source = inputs / "datasets" / "someone" / "avjax-source" / "avjax-main"
  source.mkdir(parents=True)
  (source / "pyproject.toml").write_text('[project]\nname = "avjax"\n')
  (inputs / "avjax-data").mkdir()
  monkeypatch.setattr(script, "KAGGLE_INPUT", inputs)
  args = script.parse_args(["--source", "/kaggle/input/avjax-source",
                            "--data-dir", "/kaggle/input/avjax-data"])
  steps = dict((label, cmd) for label, cmd in script.plan(args, resolve=True))
  assert steps["source"][-2] == str(source)
  assert value(steps["run"], "--config.data.data_dir") == str(inputs / "avjax-data")
  args = script.parse_args(["--data-dir", "/kaggle/input/not-attached"])
  with pytest.raises(script.LaunchError):
    script.plan(args, resolve=True)


def test_kaggle_dry_run_from_git(stubs):
  url = "https://github.com/example/avjax.git"
  lines = dry_run([sys.executable, KAGGLE_RUN, "--dry-run", "--source", url, "--ref", "main",
                   "--cv", "--folds", "1"], stubs)
  (clone,) = [w for w in lines if w[:2] == ["git", "clone"]]
  assert url in clone
  assert lines[-1][1] == "cv" and value(lines[-1], "--folds") == "1"


def test_kaggle_unknown_flag_fails_in_one_line(stubs):
  env, _ = stubs
  env = {k: v for k, v in env.items() if k != "KAGGLE_KERNEL_RUN_TYPE"}
  one_line_error(run([sys.executable, KAGGLE_RUN, "--dry-run", "--frobnicate"], env))


def test_kaggle_tpu_check():
  script = load_kaggle_script()
  tpu = json.dumps({"platform": "tpu", "count": 8, "kind": "TPU v5 lite", "jax": "0"})
  assert script.check_tpu(tpu + "\n", 0, "")["count"] == 8
  cpu = json.dumps({"platform": "cpu", "count": 1, "kind": "cpu", "jax": "0"})
  with pytest.raises(script.LaunchError) as err:
    script.check_tpu(cpu, 0, "")
  assert "\n" not in str(err.value)
  with pytest.raises(script.LaunchError) as err:
    script.check_tpu("", 1, "Traceback ...\nRuntimeError: Unable to initialize backend 'tpu'\n")
  assert "\n" not in str(err.value)
  assert script.tpu_family("v5litepod-8") == script.tpu_family("TPU v5 lite")
  assert script.tpu_family("v6e-8") == script.tpu_family("TPU v6 lite")
  assert script.tpu_family("v3-8") == script.tpu_family("TPU v3")
  assert script.tpu_family("v3-8") != script.tpu_family("TPU v5 lite")


def test_kaggle_probe_drops_stale_image_tpu_env(monkeypatch):
  script = load_kaggle_script()
  monkeypatch.setenv("TPU_LIBRARY_PATH", "/lib/libtpu.so")
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v3-8")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # A stand-in for jax that finds a TPU only without the stale accelerator type.
  fake = ("import json, os, sys\n"
          "assert os.environ['JAX_PLATFORMS'] == 'tpu' and 'TPU_LIBRARY_PATH' not in os.environ\n"
          "if 'TPU_ACCELERATOR_TYPE' in os.environ: sys.exit('RuntimeError: topology mismatch')\n"
          "print(json.dumps({'platform': 'tpu', 'count': 8, 'kind': 'TPU v5 lite', 'jax': '0'}))\n")
  info, env = script.probe_tpu([sys.executable, "-c", fake])
  assert info["kind"] == "TPU v5 lite"
  assert "TPU_ACCELERATOR_TYPE" not in env and env["JAX_PLATFORMS"] == "tpu"
  cpu_only = "print('{\"platform\": \"cpu\", \"count\": 1, \"kind\": \"cpu\", \"jax\": \"0\"}')"
  with pytest.raises(script.LaunchError):
    script.probe_tpu([sys.executable, "-c", cpu_only])


def test_kaggle_push_dry_run(stubs):
  meta = json.loads(KAGGLE_METADATA.read_text())
  lines = dry_run(["bash", KAGGLE_PUSH, "--dry-run"], stubs)
  assert lines[0][:3] == ["kaggle", "kernels", "push"]
  assert Path(value(lines[0], "-p")).resolve() == KAGGLE_DIR
  follow = {w[2]: w for w in lines[1:]}
  assert follow["status"][3] == meta["id"]
  assert follow["output"][3] == meta["id"]
  shaped = dry_run(["bash", KAGGLE_PUSH, "--dry-run", "--accelerator", "TpuV6E8"], stubs)
  assert value(shaped[0], "--accelerator") == "TpuV6E8"


def test_kaggle_push_unknown_flag(stubs):
  env, log = stubs
  one_line_error(run(["bash", KAGGLE_PUSH, "--dry-run", "--frobnicate"], env))
  assert not log.exists()


# ----- all scripts ---------------------------------------------------------------------

@pytest.mark.parametrize("script", [TPU_VM, LOCAL, KAGGLE_PUSH], ids=lambda p: p.name)
def test_shell_scripts_parse(script):
  assert run(["bash", "-n", script], os.environ).returncode == 0
  if shutil.which("shellcheck"):
    proc = run(["shellcheck", script], os.environ)
    assert proc.returncode == 0, proc.stdout


# ----- launch/tpu_vm.sh for real, against a gcloud stub: the VM is always deleted ----

@pytest.fixture
def fake_gcloud(tmp_path):
  """A gcloud that logs its arguments, fails on $FAIL_ON and sleeps on $SLEEP_ON."""
  bin_dir, log = tmp_path / "bin", tmp_path / "gcloud.log"
  bin_dir.mkdir()
  stub = bin_dir / "gcloud"
  stub.write_text(f"""#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *"$SLEEP_ON"*) [ -n "$SLEEP_ON" ] && sleep 30 ;;
esac
case "$*" in
  *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 3 ;;
esac
exit 0
""")
  stub.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             TMPDIR=str(tmp_path), FAIL_ON="", SLEEP_ON="")
  return env, log


def verbs(log: Path) -> list[str]:
  return [line.split()[3] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("fail_on, keep, expected", [
    ("", False, ["create", "scp", "ssh", "ssh", "delete"]),
    ("--command set -eu; mkdir", False, ["create", "scp", "ssh", "ssh", "delete"]),  # the run
    ("tpu-vm ssh", False, ["create", "scp", "ssh", "delete"]),  # the setup
    ("tpu-vm ssh", True, ["create", "scp", "ssh"]),
    ("tpu-vm create", False, ["create"]),  # may be someone else's VM: never deleted
])
def test_tpu_vm_deletes_the_vm_it_made(fake_gcloud, tmp_path, fail_on, keep, expected):
  env, log = fake_gcloud
  env["FAIL_ON"] = fail_on
  proc = run(["bash", TPU_VM, *tpu_args(), *(["--keep"] if keep else [])], env, timeout=120)
  assert (proc.returncode == 0) == (fail_on == ""), proc.stderr
  assert verbs(log) == expected, proc.stderr
  assert not list(tmp_path.glob("avjax-src-*")), "the source tarball was left behind"


def test_tpu_vm_ctrl_c_deletes_the_vm(fake_gcloud):
  env, log = fake_gcloud
  env["SLEEP_ON"] = "--command set -eu; mkdir"  # the run hangs until interrupted
  # pytest-xdist workers ignore SIGINT, and a non-interactive shell cannot trap a
  # signal that was ignored when it started: restore the default in the child.
  proc = subprocess.Popen(["bash", str(TPU_VM), *tpu_args()], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.monotonic() + 60
    while verbs(log).count("ssh") < 2:
      assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
      time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130, err
  assert verbs(log)[-1] == "delete", err
