"""`avjax predict` on real fixture media: windows, probabilities, files, errors.

Models are S1's smoke-size nets with freshly initialised variables, exported for
CPU: predict's contract (windows, shapes, files, one-line errors) does not depend
on what the weights learnt. What the weights reproduce is test_export's job.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def _export(tmp_path_factory, variant: str) -> Path:
  from avjax.configs import load_config
  from avjax.serving.export import export_initialised
  config = load_config(str(REPO / "experiments" / "sultana2024.py") + f":{variant},smoke")
  out = tmp_path_factory.mktemp(f"predict_{variant}") / "model"
  export_initialised(config, str(out), class_names=CLASSES, platforms=("cpu",))
  return out


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory) -> Path:
  return _export(tmp_path_factory, "audio")


@pytest.fixture(scope="module")
def video_model(tmp_path_factory) -> Path:
  return _export(tmp_path_factory, "video")


@pytest.fixture(scope="module")
def fusion_model(tmp_path_factory) -> Path:
  return _export(tmp_path_factory, "fusion")


@pytest.fixture(scope="module")
def flv(fixtures_dir) -> Path:
  return sorted((fixtures_dir / "crema_d" / "VideoFlash").glob("*.flv"))[0]


@pytest.fixture(scope="module")
def no_audio_mp4(fixtures_dir) -> Path:
  return next((fixtures_dir / "ravdess" / "video_no_audio").glob("*.mp4"))


def _expected_windows(duration: float, window: float, hop: float) -> int:
  """Full windows `hop` apart from 0; one window when the clip is shorter."""
  if duration <= window:
    return 1
  slack = (duration - window) / hop
  # Keep away from the boundary, where container and decoded durations may differ.
  assert abs(slack - round(slack)) > 0.05, f"pick window/hop off the boundary ({slack})"
  return 1 + math.floor(slack)


def _cli(*args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "avjax", *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _check_probabilities(result, n_windows: int):
  probs = result.probabilities
  assert probs.shape == (n_windows, len(CLASSES))
  assert np.all(probs >= 0)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  assert result.label == CLASSES[int(np.argmax(probs.mean(axis=0)))]


def test_fusion_model_on_audio_video_flv(fusion_model, flv, tmp_path):
  from avjax.serving.predict import predict_file
  from input_pipeline import media
  window, hop = 1.0, 0.3
  n = _expected_windows(media.probe(str(flv)).duration, window, hop)
  assert n > 2  # The fixture is ~2.2 s: several windows, not the short-clip case.
  out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
  result = predict_file(str(flv), str(fusion_model), window=window, hop=hop, batch_size=2,
                        json_path=str(out_json), plot_path=str(out_png))
  _check_probabilities(result, n)
  np.testing.assert_allclose(result.starts, np.arange(n) * hop)
  assert 0.0 <= result.face_hit_rate <= 1.0
  assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report = json.loads(out_json.read_text())
  assert len(report["windows"]) == n
  assert report["label"] == result.label
  for w, p in zip(report["windows"], result.probabilities):
    assert list(w["probabilities"]) == list(CLASSES)
    np.testing.assert_allclose(list(w["probabilities"].values()), p, atol=1e-6)
    assert w["end_s"] - w["start_s"] == pytest.approx(window)


def test_window_features_are_the_feature_sets_own(audio_model, fixtures_dir):
  """A window covering a whole wav gives exactly what prepare computes for it."""
  from avjax.serving import artifact
  from input_pipeline import clip as clip_lib
  from input_pipeline import features, media
  wav = sorted((fixtures_dir / "crema_d" / "AudioWAV").glob("*.wav"))[0]
  audio, sr = media.read_audio(str(wav))
  want = features.get_feature_set("mfcc").compute(
      features.ClipMedia(clip_id="x", audio=audio, sample_rate=sr))
  decoded = clip_lib.decode_file(str(wav), artifact.load(str(audio_model)).modalities)
  got = clip_lib.compute_features(decoded.window(0.0, decoded.duration + 1.0), ["mfcc"])
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


def test_video_model_on_mp4_without_audio(video_model, no_audio_mp4):
  from avjax.serving.predict import predict_file
  from input_pipeline import media
  result = predict_file(str(no_audio_mp4), str(video_model))  # Default window: 3 s.
  assert result.window == pytest.approx(3.0)
  _check_probabilities(result, _expected_windows(media.probe(str(no_audio_mp4)).duration,
                                                 3.0, 1.0))


def test_audio_model_on_wav(audio_model, fixtures_dir):
  from avjax.serving.predict import predict_file
  wav = sorted((fixtures_dir / "ravdess" / "Actor_01").glob("*.wav"))[0]
  result = predict_file(str(wav), str(audio_model), window=1.5, hop=0.7)
  import soundfile
  info = soundfile.info(str(wav))
  _check_probabilities(result, _expected_windows(info.frames / info.samplerate, 1.5, 0.7))


def test_cli_predict_writes_json_and_png(audio_model, flv, tmp_path):
  out_json, out_png = tmp_path / "out" / "p.json", tmp_path / "out" / "p.png"
  proc = _cli("predict", flv, "--model", audio_model, "--json", out_json, "--plot", out_png)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert str(out_json) in proc.stdout and str(out_png) in proc.stdout
  report = json.loads(out_json.read_text())
  assert report["label"] in CLASSES and len(report["windows"]) == 1  # 2.2 s < 3.6 s
  assert out_png.stat().st_size > 0


def _one_line_error(proc, *fragments):
  err = proc.stderr.strip()
  assert proc.returncode == 2, (proc.returncode, err[-2000:])
  assert len(err.splitlines()) == 1, err
  assert err.startswith("avjax: error:") and "Traceback" not in err
  for fragment in fragments:
    assert fragment in err, err


def test_cli_missing_modality_says_which(audio_model, video_model, no_audio_mp4,
                                          fixtures_dir):
  proc = _cli("predict", no_audio_mp4, "--model", audio_model)
  _one_line_error(proc, str(no_audio_mp4), "needs audio", "no audio track")
  wav = sorted((fixtures_dir / "crema_d" / "AudioWAV").glob("*.wav"))[0]
  proc = _cli("predict", wav, "--model", video_model)
  _one_line_error(proc, wav.name, "needs video", "no video track")


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "extension"])
def test_cli_bad_files_give_one_line(kind, audio_model, flv, tmp_path):
  path = tmp_path / ("notes.txt" if kind == "extension" else f"{kind}.flv")
  if kind == "empty":
    path.write_bytes(b"")
  elif kind in ("text", "extension"):
    path.write_text("this is not a video\n" * 20)
  else:
    path.write_bytes(flv.read_bytes()[:2000])  # The header and a sliver of data.
  proc = _cli("predict", path, "--model", audio_model)
  _one_line_error(proc, path.name)


def test_cli_model_dir_that_is_not_a_model(flv, tmp_path):
  proc = _cli("predict", flv, "--model", tmp_path)
  _one_line_error(proc, str(tmp_path), "neither an export directory")
