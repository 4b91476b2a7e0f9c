"""benchmarks/face_detectors.py runs end to end on a small input, so it cannot rot.

Only that it runs and reports every detector is checked; times are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_face_detectors_benchmark_runs(tmp_path):
  out = tmp_path / "faces.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "benchmarks.face_detectors", "--no-fixtures",
                         "--synthetic", "1", "--no-tflite", "--json", str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  assert "ratio: " in proc.stdout and "Haar CPU time / BlazeFace" in proc.stdout
  result = json.loads(out.read_text())
  (clip,) = result["clips"].values()
  assert set(clip) == {"haar", "blazeface", "blazeface-full"}
  for row in clip.values():
    assert row["frames"] > 0 and 0 <= row["found"] <= row["frames"] and row["ms"] > 0
