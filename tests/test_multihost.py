"""Multi-host training and preemption checkpoints, as real multi-process JAX jobs
on this CPU machine.

Each run is `tests/multihost_driver.py` (the real trainer on the synthetic corpus,
S1 audio smoke config) started as separate processes that find each other through
AVJAX_COORDINATOR / AVJAX_NUM_PROCESSES / AVJAX_PROCESS_ID, exactly as a CPU or
GPU cluster would be launched; cross-process collectives run over gloo.

* Two processes x 4 simulated devices train into one workdir. Each must read its
  own shard of the training split; the checkpoint they write together must hold
  one step directory with both processes' iterator states, and restored on one
  process it must equal a single-process run on the same 8 devices fed the same
  global batches (process 0's rows, then process 1's).
* A one-process distributed run gets SIGTERM mid-training: JAX's preemption sync
  manager (created by `jax.distributed.initialize`) turns it into
  `Checkpointer.reached_preemption(step)`, the trainer saves that step and exits 0,
  and a restarted run continues from there, at the next example, to the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
import pytest

from avjax.configs import load_config
from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import runtime, sharding, trainer
from input_pipeline import loader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multihost_driver  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = Path(__file__).resolve().parents[1]
DRIVER = str(REPO / "tests" / "multihost_driver.py")
NUM_PROCESSES, LOCAL_DEVICES = 2, 4
TIMEOUT = 300


def _config(data_dir, overrides=()) -> ml_collections.ConfigDict:
  """The driver's config, built the same way."""
  config = load_config(multihost_driver.CONFIG, list(overrides))
  config.data.data_dir = str(data_dir)
  config.data.protocol = "actor_kfold"
  config.data.k = 4
  return config


def _datasets(config, process_index: int, process_count: int) -> loader.Datasets:
  """What `runtime.create_datasets` builds for that process, called directly."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.keys = tuple(config.model.inputs)
  return loader.create_datasets(
      data_config, global_batch_size=config.train.global_batch_size, seed=config.seed,
      process_index=process_index, process_count=process_count)


def _first_batches(ds: loader.Datasets, n: int) -> list[dict]:
  it = iter(ds.train)
  return [next(it) for _ in range(n)]


def _free_port() -> int:
  """A coordinator port that is free now and outside the kernel's ephemeral range,
  so that no outgoing connection (gloo, gRPC, the other job on this machine) takes
  it while the driver is still importing. The coordinator binds [::]:port."""
  low, high = 20000, 32000
  try:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="utf-8") as f:
      high = min(high, int(f.read().split()[0]))
  except (OSError, ValueError, IndexError):
    pass
  rng = random.Random(os.getpid() ^ time.time_ns())
  for _ in range(200):
    port = rng.randrange(low, high)
    try:
      for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "127.0.0.1")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
          s.bind((host, port))
    except OSError:
      continue
    return port
  pytest.fail("no free TCP port for the JAX coordinator")


def _launch(workdir, data_dir, out_json, *, process_id: int, num_processes: int,
            port: int, devices: int, overrides=(), log=None, **env_extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             AVJAX_COORDINATOR=f"127.0.0.1:{port}",
             AVJAX_NUM_PROCESSES=str(num_processes), AVJAX_PROCESS_ID=str(process_id),
             **{k: str(v) for k, v in env_extra.items()})
  env.pop("AVJAX_MULTIHOST", None)
  return subprocess.Popen(
      [sys.executable, DRIVER, str(workdir), str(data_dir), str(out_json), *overrides],
      env=env, cwd=str(REPO), stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _finish(procs, timeout=TIMEOUT) -> list[str]:
  deadline = time.time() + timeout
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=max(deadline - time.time(), 1))[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"a driver process did not finish in {timeout} s")
  return outs


def _restore_params(workdir, config, info, step) -> dict[str, np.ndarray]:
  """A workdir's params at `step`, restored on this (single) process's 8 devices."""
  mesh = runtime.make_mesh(config)
  setup = runtime.build(config, info, mesh)
  checkpointer = ckpt_lib.Checkpointer(str(workdir), read_only=True)
  try:
    state = runtime.restore_state(setup, checkpointer, step)
  finally:
    checkpointer.close()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _step_dirs(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


# --- start-up from the environment -----------------------------------------------


def test_distributed_args_come_from_all_three_env_vars_or_none():
  env = {sharding.ENV_COORDINATOR: "10.0.0.2:8476", sharding.ENV_NUM_PROCESSES: "4",
         sharding.ENV_PROCESS_ID: "3"}
  assert sharding.distributed_args_from_env(env) == {
      "coordinator_address": "10.0.0.2:8476", "num_processes": 4, "process_id": 3}
  assert sharding.distributed_args_from_env({}) == {}  # TPU pods: auto-detect.
  for missing in env:
    with pytest.raises(UserError, match=missing):
      sharding.distributed_args_from_env({k: v for k, v in env.items() if k != missing})
  for key, bad in ((sharding.ENV_PROCESS_ID, "4"), (sharding.ENV_PROCESS_ID, "-1"),
                   (sharding.ENV_NUM_PROCESSES, "two"), (sharding.ENV_COORDINATOR, "host")):
    with pytest.raises(UserError):
      sharding.distributed_args_from_env({**env, key: bad})


# --- two processes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_process_run(prepared, tmp_path_factory):
  if jax.device_count() != NUM_PROCESSES * LOCAL_DEVICES:
    pytest.fail(f"expected {NUM_PROCESSES * LOCAL_DEVICES} simulated devices in the "
                f"test process, have {jax.device_count()}")
  data_dir = prepared("mfcc")
  root = tmp_path_factory.mktemp("multihost")
  workdir = root / "run"
  port = _free_port()
  start = time.time()
  procs = [_launch(workdir, data_dir, root / f"process_{i}.json", process_id=i,
                   num_processes=NUM_PROCESSES, port=port, devices=LOCAL_DEVICES)
           for i in range(NUM_PROCESSES)]
  logs = _finish(procs)
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-4000:]}"
  outs = [json.loads((root / f"process_{i}.json").read_text())
          for i in range(NUM_PROCESSES)]
  return {"workdir": workdir, "data_dir": data_dir, "outs": outs, "logs": logs,
          "config": _config(data_dir), "seconds": time.time() - start}


def test_two_processes_form_one_job_and_read_their_own_shards(two_process_run):
  outs, config = two_process_run["outs"], two_process_run["config"]
  steps = int(config.train.num_train_steps)
  local_batch = config.train.global_batch_size // NUM_PROCESSES
  assert [o["process_index"] for o in outs] == list(range(NUM_PROCESSES))
  for o in outs:
    assert o["process_count"] == NUM_PROCESSES
    assert o["local_device_count"] == LOCAL_DEVICES
    assert o["device_count"] == sum(q["local_device_count"] for q in outs)
  ids = [set(o["local_device_ids"]) for o in outs]
  assert not ids[0] & ids[1], "the processes must own different devices"
  # The trainer asked the loader for this process's shard ...
  for i, o in enumerate(outs):
    assert o["create_datasets_calls"] == [
        {"global_batch_size": config.train.global_batch_size, "seed": config.seed,
         "process_index": i, "process_count": NUM_PROCESSES}]
  # ... and trained on exactly what that shard yields, one batch per step.
  for i, o in enumerate(outs):
    expected = [multihost_driver.batch_digests(b)
                for b in _first_batches(_datasets(config, i, NUM_PROCESSES), steps)]
    assert o["train_batches"] == expected, f"process {i} read other data"
    assert all(len(b) == local_batch for b in o["train_batches"])
  # The shards partition the training split: one epoch of each, disjoint, whole.
  n_train = _datasets(config, 0, 1).info.num_examples["train"]
  per_epoch = n_train // NUM_PROCESSES // local_batch
  assert per_epoch >= 1 and steps >= per_epoch
  epoch = [{d for b in o["train_batches"][:per_epoch] for d in b} for o in outs]
  assert all(len(e) == n_train // NUM_PROCESSES for e in epoch)
  assert not epoch[0] & epoch[1]
  assert len(epoch[0] | epoch[1]) == n_train
  # Metrics are global: every process reports the same numbers.
  assert outs[0]["final"] == outs[1]["final"]
  assert outs[0]["final"]["report/checkpoint_step"] >= 1


def test_checkpoint_and_report_are_written_once(two_process_run):
  workdir, config = two_process_run["workdir"], two_process_run["config"]
  steps = int(config.train.num_train_steps)
  report = json.loads((workdir / "report.json").read_text())
  kept = {str(steps), str(report["checkpoint_step"])}  # keep=1 plus the best.
  assert _step_dirs(workdir) == sorted(kept), "a leftover or duplicate step directory"
  step_dir = workdir / "checkpoints" / str(steps)
  assert (step_dir / "commit_success.txt").exists()
  # One Grain iterator state per process, each past the steps it fed.
  iter_files = sorted(p.name for p in (step_dir / "data_iter").glob("process_*.json"))
  assert iter_files == [f"process_{i}-of-{NUM_PROCESSES}.json" for i in range(NUM_PROCESSES)]
  for name in iter_files:
    assert json.loads((step_dir / "data_iter" / name).read_text())["next_index"] == steps
  # Process 0 writes the report and the metrics; the others only log.
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  train_rows = [json.loads(r) for r in lines if "train/loss" in r]
  logged = [r["step"] for r in train_rows]
  assert logged == sorted(set(logged)), "metrics were written by more than one process"
  assert len([f for f in os.listdir(workdir) if f.startswith("events.out")]) == 1


def test_two_process_params_equal_one_process_on_the_same_global_batches(
    two_process_run, tmp_path):
  workdir, config = two_process_run["workdir"], two_process_run["config"]
  steps = int(config.train.num_train_steps)
  single = _datasets(config, 0, 1)
  shards = [_first_batches(_datasets(config, i, NUM_PROCESSES), steps)
            for i in range(NUM_PROCESSES)]
  # Global batch k of the 2-process job: process 0's rows, then process 1's.
  global_batches = [{k: np.concatenate([s[step][k] for s in shards])
                     for k in shards[0][step]} for step in range(steps)]

  def run(batches, name):
    ds = loader.Datasets(train=grain.MapDataset.source(batches).to_iter_dataset(),
                         evals=single.evals, info=single.info)
    trainer.train_and_evaluate(config, str(tmp_path / name), datasets=ds)
    return _restore_params(tmp_path / name, config, single.info, steps)

  multi = _restore_params(workdir, config, single.info, steps)  # Restorable on 1 process.
  reference = run(global_batches, "reference")
  assert multi.keys() == reference.keys()
  for k in multi:
    np.testing.assert_allclose(multi[k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)

  # The tolerance can tell data apart: the same examples in the single-process
  # loader's order train to other parameters.
  other = run(_first_batches(single, steps), "other_order")
  assert max(float(np.max(np.abs(other[k] - reference[k]))) for k in other) > 1e-4


# --- preemption ----------------------------------------------------------------------

PREEMPT_STEPS = 60
PREEMPT_OVERRIDES = (f"train.num_train_steps={PREEMPT_STEPS}",
                     "train.checkpoint_every_steps=1000", "train.eval_every_steps=1000",
                     "train.log_every_steps=1000", "train.keep_checkpoints=3")


def _wait_for_progress(progress: Path, proc, at_least: int, timeout: float) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    try:
      done = int(progress.read_text() or 0)
    except (FileNotFoundError, ValueError):
      done = 0
    if done >= at_least:
      return done
    time.sleep(0.05)
  return -1


def test_sigterm_saves_at_the_preemption_step_and_resume_finishes(prepared, tmp_path):
  data_dir = prepared("mfcc")
  config = _config(data_dir, PREEMPT_OVERRIDES)
  workdir = tmp_path / "run"
  progress = tmp_path / "progress"
  stream = [multihost_driver.batch_digests(b)
            for b in _first_batches(_datasets(config, 0, 1), PREEMPT_STEPS)]

  with open(tmp_path / "first.log", "w+", encoding="utf-8") as log:
    proc = _launch(workdir, data_dir, tmp_path / "first.json", process_id=0,
                   num_processes=1, port=_free_port(), devices=2,
                   overrides=PREEMPT_OVERRIDES, log=log, AVJAX_TEST_STEP_SLEEP=0.1,
                   AVJAX_TEST_PROGRESS=progress)
    sent_after = _wait_for_progress(progress, proc, 3, TIMEOUT)
    if sent_after < 0:
      proc.kill()
    else:
      proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.seek(0)
    first_log = log.read()
  assert sent_after > 0, f"the run did not start training:\n{first_log[-4000:]}"
  assert proc.returncode == 0, f"exit {proc.returncode} after SIGTERM:\n{first_log[-4000:]}"

  first = json.loads((tmp_path / "first.json").read_text())
  saved = ckpt_lib.Checkpointer(str(workdir), read_only=True).all_steps()
  assert len(saved) == 1, f"expected only the preemption checkpoint, got {saved}"
  step = saved[0]
  # Saved where the preemption was noticed: after the signal, before the end, and
  # not on a regular checkpoint interval (there is none before step 1000).
  assert sent_after <= step < PREEMPT_STEPS
  assert f"preemption at step {step}" in first_log
  assert not (workdir / "report.json").exists(), "a preempted run must not report"
  assert first["train_batches"] == stream[:step]

  # The restarted job (a new coordinator, as after a real preemption) continues at
  # that step and the next example, and finishes.
  with open(tmp_path / "resumed.log", "w+", encoding="utf-8") as log:
    resumed_proc = _launch(workdir, data_dir, tmp_path / "resumed.json", process_id=0,
                           num_processes=1, port=_free_port(), devices=2,
                           overrides=PREEMPT_OVERRIDES, log=log)
    _finish([resumed_proc])
    log.seek(0)
    resumed_log = log.read()
  assert resumed_proc.returncode == 0, resumed_log[-4000:]
  resumed = json.loads((tmp_path / "resumed.json").read_text())
  assert f"resumed from step {step}" in resumed_log
  assert resumed["train_batches"] == stream[step:]
  assert ckpt_lib.Checkpointer(str(workdir), read_only=True).latest_step() == PREEMPT_STEPS
  report = json.loads((workdir / "report.json").read_text())
  assert report["checkpoint_step"] in (step, PREEMPT_STEPS)
