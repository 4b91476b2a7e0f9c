"""benchmarks/train_step.py runs end to end in --smoke mode, so it cannot rot.

Without torch (not an avjax dependency): jax against Keras only. Checks that it
runs, prints the ratio lines and the parameter counts agree; never the speed,
which depends on the machine and its load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^ratio: \d+\.\d\d\s+(\S+) jax / keras-(fit|step) examples/s", re.MULTILINE)


def test_train_step_benchmark_runs_in_smoke_mode(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # One CPU device, as the benchmark times it.
  out = tmp_path / "train_step.json"
  # The S1 video net is inside the fusion net; two nets keep this under a minute.
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--smoke", "--nets",
       "s1_fusion,fercnn", "--frameworks", "jax,keras", "--json", str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
  assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  assert [m.group(1) for m in RATIO.finditer(proc.stdout)] == ["s1_fusion", "fercnn"], \
      proc.stdout
  assert "peak = " in proc.stdout and "MFU" in proc.stdout
  result = json.loads(out.read_text())
  for net in result["results"]:
    assert len(set(net["param_counts"].values())) == 1, net["param_counts"]
    assert set(net["param_counts"]) == {"jax", "keras-fit", "keras-step"}
  # By default each framework of each net is built in a process of its own.
  built = re.findall(r"^  built (\S+) in [\d.]+ s \(process (\d+)\)$", proc.stdout, re.M)
  assert [fw for fw, _ in built] == ["jax", "keras"] * 2, proc.stdout
  assert len({pid for _, pid in built}) == 4, built
  assert result["processes"] == "per-framework"


def test_train_step_benchmark_runs_every_framework_in_one_process_on_request(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  out = tmp_path / "train_step.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--smoke", "--nets", "fercnn",
       "--frameworks", "jax,keras", "--processes", "one", "--json", str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
  assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  assert [m.group(1) for m in RATIO.finditer(proc.stdout)] == ["fercnn"], proc.stdout
  assert re.findall(r"^  built (\S+) in [\d.]+ s$", proc.stdout, re.M) == ["jax", "keras"]
  assert json.loads(out.read_text())["processes"] == "one"


def test_s5_onn_spec_matches_the_registered_model():
  """The S5 ONN's framework-neutral spec (which builds the Keras and PyTorch
  replicas and the FLOP count) has exactly avjax's parameters, at full size."""
  import jax
  import numpy as np

  from avjax import models
  from benchmarks import train_step

  spec = train_step.build_specs(smoke=False)["s5_onn"]
  params, macs = train_step.trace(spec)
  inputs = {b.key: jax.ShapeDtypeStruct(b.shape[:-1] if b.squeeze_for_avjax else b.shape,
                                        np.dtype(b.dtype)) for b in spec.branches}
  inputs = {k: jax.ShapeDtypeStruct((2, *v.shape), v.dtype) for k, v in inputs.items()}
  model = models.get_model("akturk_onn", num_classes=8)
  shapes = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i, train=False), inputs)
  assert params == sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
  assert macs > 0
