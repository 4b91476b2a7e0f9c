"""benchmarks/predict_rtf.py runs end to end in --smoke mode, so it cannot rot.

Checks that it runs, reports every stage and a consistent RTF line; never the
speed, which depends on the machine and its load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^ratio: (\d+\.\d\d)\s+predict RTF \(processing s / clip s\)\s+"
                   r"\[target <= 0\.25: (met|MISSED)\]$", re.MULTILINE)


def test_predict_rtf_benchmark_runs_in_smoke_mode(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # One CPU device, as predict runs.
  out = tmp_path / "predict_rtf.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.predict_rtf", "--smoke",
                         "--json", str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  match = RATIO.search(proc.stdout)
  assert match, proc.stdout
  for stage in ("decode", "faces", "features", "model", "total"):
    assert re.search(rf"^{stage}\s+\d+\.\d+", proc.stdout, re.MULTILINE), proc.stdout
  result = json.loads(out.read_text())["result"]
  assert result["model"] == "feature_concat_fusion"
  assert set(result["modalities"]) == {"audio", "video"}
  stages = result["median_s"]
  assert set(stages) == {"decode", "faces", "features", "model"}
  assert all(v > 0 for v in stages.values())
  # The RTF is the stages' total over the clip's duration, and the line says so.
  assert result["rtf"] == pytest.approx(result["total_median_s"] / result["clip_seconds"])
  assert float(match.group(1)) == pytest.approx(result["rtf"], abs=0.006)
  assert (match.group(2) == "met") == (result["rtf"] <= 0.25)
