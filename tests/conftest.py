"""Shared test fixtures: the real media fixtures in ../shared/fixtures and small
synthetic corpora, generated once per test session and shared across xdist
workers (a file lock makes the first worker build them, the others wait)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

import pytest

# Every test process sees 8 simulated CPU devices, as on a TPU v3-8, so sharded
# code paths run in the default suite. Set before anything imports jax.
_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES_FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# librosa compiles numba functions with cache=True; concurrent workers writing one
# shared cache have left it corrupt. So every test process compiles into a new,
# empty cache dir of its own (its subprocesses inherit it). librosa.yin's numba
# gufunc segfaulted now and then, in test workers and in clean subprocesses
# alike, so the tests measure pitch with Praat instead (tests/test_synth.py).
# The library's `handcrafted162` features call numba ufuncs through librosa too
# (e.g. its complex-magnitude helper); none of those has crashed here, in test
# workers or in `prepare`/`predict`.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="avjax-numba-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

# Small synthetic corpus used across the suite: 4 actors (2 male, 2 female), one
# clip per emotion each.
SYNTH_ACTORS = 4
SYNTH_CLIPS_PER_EMOTION = 1
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
  if not SHARED_FIXTURES.is_dir():
    pytest.fail(f"{SHARED_FIXTURES} is missing: the shared fixtures must sit beside the repo")
  return SHARED_FIXTURES


def _shared_root(tmp_path_factory) -> Path:
  """A directory shared by all xdist workers of this session."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = root / "shared-data"
  path.mkdir(exist_ok=True)
  return path


@contextlib.contextmanager
def _locked(path: Path):
  with open(str(path) + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(tmp_path_factory, name: str, build, path: Path | None = None) -> Path:
  """Runs `build(path)` once per session across workers; returns the path."""
  marker = _shared_root(tmp_path_factory) / name
  path = path or marker
  done = Path(str(marker) + ".done")
  with _locked(marker):
    if not done.exists():
      build(path)
      done.write_text("ok")
  return path


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
  """A tiny RAVDESS-layout synthetic corpus."""
  from input_pipeline.synth import generate_corpus

  def build(path: Path):
    generate_corpus(path, actors=SYNTH_ACTORS, clips_per_emotion=SYNTH_CLIPS_PER_EMOTION,
                    seed=SYNTH_SEED, workers=1, progress=False)
  return build_once(tmp_path_factory, "synth_corpus", build)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, synth_corpus):
  """`prepared(feature_set)` -> the data_dir holding the synthetic corpus prepared
  with that feature set (each set built once per session, all in one data_dir)."""
  from input_pipeline.prepare import prepare
  data_dir = _shared_root(tmp_path_factory) / "prepared_data"

  def get(feature_set: str) -> Path:
    def build(path: Path):
      prepare("ravdess", str(synth_corpus), str(path), feature_set, workers=1,
              progress=False)
    return build_once(tmp_path_factory, f"prepared_{feature_set}", build, path=data_dir)
  return get


@pytest.fixture
def no_face_mp4():
  """Writes an H.264 + AAC mp4 of uniform gray frames and a 440 Hz tone (no face
  anywhere) to the given path and returns it."""
  import subprocess
  import imageio_ffmpeg

  def write(path: Path, seconds: float = 1.0, fps: int = 15) -> Path:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
                    "-f", "lavfi", "-i", f"color=c=gray:s=160x120:r={fps}:d={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:d={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(path)], check=True, capture_output=True)
    return path
  return write
