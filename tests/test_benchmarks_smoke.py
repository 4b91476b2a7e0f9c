"""The benchmark scripts run end to end in --smoke mode, so they cannot rot.

Only that they run, print a `ratio:` line and write their JSON is checked: speed
depends on the machine and its load, and is never asserted here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^ratio: \d+\.\d\d\s+\S", re.MULTILINE)


def _run(module: str, *args: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # The loader benchmark times a single-device CPU step.
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


def _one_take(root: Path) -> Path:
  """A one-take RAVDESS-layout corpus (mp4 + wav): smoke runs use one clip, and
  rendering one is much cheaper than the shared 32-take corpus."""
  from input_pipeline import media
  from input_pipeline.naming import RavdessName
  from input_pipeline.synth import synth_clip

  name = RavdessName(1, 1, 3, 1, 1, 1, 1)
  frames, fps, audio, sr = synth_clip(name, seed=0)
  media.write_av(root / "Actor_01" / name.filename(".mp4"), frames, fps, audio, sr)
  media.write_wav(root / "Actor_01" / name.with_modality(3).filename(".wav"), audio, sr)
  return root


def test_benchmarks_run_in_smoke_mode(tmp_path):
  """One test, not two: the loader smoke reads what the precompute smoke prepared,
  and pytest-xdist would otherwise run the precompute smoke once per worker."""
  corpus = _one_take(tmp_path / "corpus")
  data = tmp_path / "data"
  # One worker: the pool's start-up would dominate a one-clip smoke run.
  stdout = _run("benchmarks.precompute", "--smoke", "--corpus", str(corpus),
                "--workers", "1", "--keep-data", str(data), "--json",
                str(tmp_path / "p.json"))
  # 3 ratios per feature set, plus for video the decode + face detection floor's
  # and the newest version's per-clip work over the oldest's.
  assert len(RATIO.findall(stdout)) == 8, stdout
  result = json.loads((tmp_path / "p.json").read_text())
  assert [r["feature_set"] for r in result["results"]] == ["mfcc", "frames3d_gray_80x70x30"]
  assert [len(r["ratios"]) for r in result["results"]] == [3, 5]
  assert "decode+detect_floor" in result["results"][1]["ratios"][3]["label"]
  assert "2.0.0 / 1.0.0 clips/s" in result["results"][1]["ratios"][4]["label"]

  stdout = _run("benchmarks.loader_throughput", "--smoke", "--data-dir", str(data),
                "--json", str(tmp_path / "l.json"))
  assert len(RATIO.findall(stdout)) == 1, stdout
  assert "model:" in stdout
  result = json.loads((tmp_path / "l.json").read_text())
  assert result["ratios"][0]["value"] > 0
