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

import pytest

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


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
  """The precompute smoke run, whose avjax-prepared output feeds the loader smoke."""
  out = tmp_path_factory.mktemp("bench")
  corpus = _one_take(out / "corpus")
  data = out / "data"
  # One worker: the pool's start-up would dominate a one-clip smoke run.
  stdout = _run("benchmarks.precompute", "--smoke", "--corpus", str(corpus),
                "--workers", "1", "--keep-data", str(data), "--json", str(out / "p.json"))
  return out, data, stdout


def test_precompute_smoke(smoke_data):
  out, _, stdout = smoke_data
  assert len(RATIO.findall(stdout)) == 6, stdout  # 3 ratios x 2 feature sets
  result = json.loads((out / "p.json").read_text())
  assert [r["feature_set"] for r in result["results"]] == ["mfcc", "frames3d_gray_80x70x30"]
  assert all(len(r["ratios"]) == 3 for r in result["results"])


def test_loader_throughput_smoke(smoke_data):
  out, data, _ = smoke_data
  stdout = _run("benchmarks.loader_throughput", "--smoke", "--data-dir", str(data),
                "--json", str(out / "l.json"))
  assert len(RATIO.findall(stdout)) == 1, stdout
  assert "model:" in stdout
  result = json.loads((out / "l.json").read_text())
  assert result["ratios"][0]["value"] > 0
