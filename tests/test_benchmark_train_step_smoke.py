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
