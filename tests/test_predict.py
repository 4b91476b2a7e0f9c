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


@pytest.fixture(autouse=True)
def _no_compilation_cache(monkeypatch):
  """predict_file(model_dir) turns on the persistent cache; tests leave ~ alone."""
  monkeypatch.setenv("AVJAX_JAX_CACHE", "")


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


def _expected_starts(duration: float, window: float, hop: float) -> np.ndarray:
  """Full windows `hop` apart from 0, then one ending at the clip's end if they
  leave a tail; one window when the clip is shorter than a window."""
  if duration <= window:
    return np.zeros(1)
  slack = (duration - window) / hop
  # Keep away from the boundary, where container and decoded durations may differ.
  assert abs(slack - round(slack)) > 0.05, f"pick window/hop off the boundary ({slack})"
  starts = np.arange(1 + math.floor(slack)) * hop
  tail = duration - (starts[-1] + window)
  assert tail > 0.05, f"pick window/hop with a clear tail ({tail} s)"
  return np.append(starts, duration - window)


def _expected_windows(duration: float, window: float, hop: float) -> int:
  return len(_expected_starts(duration, window, hop))


def _cli(*args, timeout=240, env=None):
  # No persistent compilation cache unless a test asks for one: tests leave ~ alone.
  env = {**dict(os.environ, JAX_PLATFORMS="cpu", AVJAX_JAX_CACHE=""), **(env or {})}
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
  window, hop = 1.0, 0.35
  want = _expected_starts(media.probe(str(flv)).duration, window, hop)
  n = len(want)
  assert n > 2  # The fixture is ~2.2 s: several windows, not the short-clip case.
  out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
  result = predict_file(str(flv), str(fusion_model), window=window, hop=hop, batch_size=2,
                        json_path=str(out_json), plot_path=str(out_png))
  _check_probabilities(result, n)
  np.testing.assert_allclose(result.starts[:-1], want[:-1])
  # The last window ends at the clip's end (the container's duration is rounded).
  np.testing.assert_allclose(result.starts[-1], want[-1], atol=0.05)
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
  cache = tmp_path / "jax-cache"
  proc = _cli("predict", flv, "--model", audio_model, "--json", out_json, "--plot", out_png,
              env={"AVJAX_JAX_CACHE": str(cache),
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert any(cache.iterdir())  # The compiled model is kept for the next run.
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


def test_threaded_decode_equals_prepares_sequential_decode(flv):
  """predict decodes audio and video at once and detects faces concurrently; the
  clip (samples, frames, face track) is exactly what prepare's sequential path gets."""
  from input_pipeline import clip as clip_lib
  want = clip_lib.decode_file(str(flv), ["audio", "video"])
  got = clip_lib.track_faces(
      clip_lib.decode_file(str(flv), ["audio", "video"], faces=False, threads=2), threads=2)
  for field in ("audio", "frames", "face_boxes"):
    np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
  assert (got.sample_rate, got.fps, got.face_hit_rate, got.face_fallback_frames,
          got.face_centre_fallback) == (want.sample_rate, want.fps, want.face_hit_rate,
                                        want.face_fallback_frames, want.face_centre_fallback)
  assert want.face_boxes is not None and want.face_hit_rate > 0


def test_threaded_decode_raises_the_sequential_error(tmp_path):
  from input_pipeline import clip as clip_lib
  from input_pipeline.errors import InputError
  missing = str(tmp_path / "gone.flv")
  with pytest.raises(InputError, match="gone.flv"):
    clip_lib.decode("x", audio_file=missing, video_file=missing, need_audio=True,
                    need_video=True, threads=2)


@pytest.mark.parametrize("case", ["default", "env", "off", "jax_env"])
def test_compilation_cache_dir(case, tmp_path):
  """Where `avjax predict` keeps compiled code; run in a child: jax config is global."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("AVJAX_JAX_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
  env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"))
  want = {"default": str(tmp_path / "xdg" / "avjax" / "jax"),
          "env": str(tmp_path / "mine"), "off": "None", "jax_env": str(tmp_path / "jax")}[case]
  if case == "env":
    env["AVJAX_JAX_CACHE"] = want
  elif case == "off":
    env["AVJAX_JAX_CACHE"] = ""
  elif case == "jax_env":
    env["JAX_COMPILATION_CACHE_DIR"] = want
  proc = subprocess.run(
      [sys.executable, "-c", "import jax; from avjax.serving.predict import "
       "enable_compilation_cache as e; d = e(); "
       "assert (jax.config.jax_compilation_cache_dir or None) == d; print(d)"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == want
  if want != "None":
    assert os.path.isdir(want) or case == "jax_env"


# ------------------------------------------------------------- windows cover the clip

@pytest.mark.parametrize("duration,window,hop", [
    (4.1, 3.6, 1.0), (5.0, 3.0, 1.0), (2.0, 3.6, 1.0), (10.0, 3.0, 2.5), (7.3, 3.6, 0.5),
    (3.6, 3.6, 1.0), (3.61, 3.6, 1.0)])
def test_windows_cover_every_second_of_the_clip(duration, window, hop):
  from input_pipeline.clip import TAIL_TOLERANCE, window_starts
  starts = window_starts(duration, window, hop)
  assert starts[0] == 0.0 and np.all(np.diff(starts) > 0)
  assert np.all(np.diff(starts) <= window)                   # no gap between windows
  end = starts[-1] + window
  assert end >= duration - TAIL_TOLERANCE                    # the tail is covered
  if duration > window:
    assert end <= duration + 1e-9                            # and no window is padded
  hop_starts = starts[:-1] if len(starts) > 1 else starts
  np.testing.assert_allclose(hop_starts, np.arange(len(hop_starts)) * hop)


def test_the_last_window_of_a_4_1_s_wav_ends_at_its_end(audio_model, tmp_path):
  """The audit's case: 3.6 s windows every 1 s left the last 0.5 s of 4.1 s unheard."""
  import soundfile
  from avjax.serving.predict import predict_file
  sr, seconds = 16000, 4.1
  t = np.arange(int(sr * seconds)) / sr
  wav = tmp_path / "talk.wav"
  soundfile.write(str(wav), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
  result = predict_file(str(wav), str(audio_model), hop=1.0)
  assert result.window == pytest.approx(3.6)  # mfcc's span, the model's default
  np.testing.assert_allclose(result.starts, [0.0, seconds - 3.6], atol=1e-6)
  np.testing.assert_allclose(result.ends, [3.6, seconds], atol=1e-6)
  _check_probabilities(result, 2)


# ------------------------------------------------------------------ no face, no guess


def test_cli_video_model_on_a_clip_without_a_face_stops_with_one_line(video_model, tmp_path, no_face_mp4):
  mp4 = no_face_mp4(tmp_path / "wall.mp4")
  out_json = tmp_path / "p.json"
  proc = _cli("predict", mp4, "--model", video_model, "--json", out_json)
  _one_line_error(proc, str(mp4), "no face found in any of")
  assert not out_json.exists()


def test_a_workdir_is_not_exported_for_a_clip_without_a_face(
    video_model, tmp_path, no_face_mp4, monkeypatch):
  """The audit's case: predict on a training workdir exported it (seconds) before
  it found that the clip has no face. The face is looked for first now."""
  from avjax.serving import artifact, export
  from avjax.serving.predict import predict_file
  from input_pipeline.errors import InputError
  workdir = tmp_path / "runs" / "s1_video"
  workdir.mkdir(parents=True)
  # The run's own config, as training writes it (an export keeps it in its metadata).
  (workdir / "config.json").write_text(json.dumps(artifact.read_metadata(str(video_model))["config"]))
  monkeypatch.setattr(export, "export_workdir", lambda *a, **k: pytest.fail(
      "exported the workdir before looking for a face"))
  mp4 = no_face_mp4(tmp_path / "wall.mp4")
  with pytest.raises(InputError, match=f"^{mp4}: no face found in any of"):
    predict_file(str(mp4), str(workdir))


def test_model_needs_reads_a_workdir_config_like_the_export_metadata(video_model, tmp_path):
  from avjax.serving import artifact
  from avjax.serving.predict import model_needs
  meta = artifact.read_metadata(str(video_model))
  (tmp_path / "config.json").write_text(json.dumps(meta["config"]))
  from_workdir, from_export = model_needs(str(tmp_path)), model_needs(str(video_model))
  assert from_workdir.modalities == from_export.modalities == ("video",)
  assert from_workdir.feature_sets == from_export.feature_sets == tuple(meta["feature_sets"])
  (tmp_path / "config.json").write_text("{}")
  assert model_needs(str(tmp_path)) is None  # Unreadable: predict loads the model to know.


def test_audio_model_on_a_clip_without_a_face_ignores_the_video(audio_model, tmp_path, no_face_mp4):
  from avjax.serving.predict import predict_file
  result = predict_file(str(no_face_mp4(tmp_path / "wall.mp4")), str(audio_model))
  assert result.face_hit_rate is None  # No frame decoded, no face looked for.
  _check_probabilities(result, 1)


# ---------------------------------------------------------------- paths and the file

def test_json_records_the_model_path_given_not_the_temporary_export(
    audio_model, fixtures_dir, tmp_path, monkeypatch):
  """A workdir is exported to a temp dir on the fly; the report names the workdir."""
  import shutil
  from avjax.serving import export
  from avjax.serving.predict import predict_file
  workdir = tmp_path / "runs" / "s1"
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  exported_to = []

  def fake_export_workdir(src, out, **kwargs):  # Training a run is test_export's job.
    exported_to.append(out)
    shutil.copytree(audio_model, out)

  monkeypatch.setattr(export, "export_workdir", fake_export_workdir)
  monkeypatch.chdir(tmp_path)
  wav = sorted((fixtures_dir / "crema_d" / "AudioWAV").glob("*.wav"))[0]
  out_json = tmp_path / "p.json"
  result = predict_file(str(wav), os.path.join("runs", "s1"), json_path=str(out_json))
  assert exported_to and not exported_to[0].startswith(str(workdir))
  assert result.model == str(workdir)
  assert json.loads(out_json.read_text())["model"] == str(workdir)


def test_a_missing_file_is_reported_before_the_model_loads(tmp_path, monkeypatch):
  from avjax.serving import predict
  from input_pipeline.errors import InputError
  monkeypatch.setattr(predict, "load_model",
                      lambda *a, **k: pytest.fail("loaded the model before checking the file"))
  missing = tmp_path / "missing.wav"
  with pytest.raises(InputError, match=f"^{missing}: file not found$"):
    predict.predict_file(str(missing), str(tmp_path / "model"))
  (tmp_path / "dir.wav").mkdir()
  with pytest.raises(InputError, match="dir.wav: not a regular file"):
    predict.predict_file(str(tmp_path / "dir.wav"), str(tmp_path / "model"))


def test_cli_missing_file_and_missing_model_names_the_file(tmp_path):
  proc = _cli("predict", tmp_path / "missing.wav", "--model", tmp_path / "no_model")
  _one_line_error(proc, str(tmp_path / "missing.wav"), "file not found")


# ----------------------------------------------------------------------- the figure

def _prediction(probabilities, duration: float, window: float, hop: float = 1.0):
  from avjax.serving.predict import Prediction
  from input_pipeline.clip import window_starts
  starts = window_starts(duration, window, hop)
  probabilities = np.asarray(probabilities, np.float32).reshape(len(starts), len(CLASSES))
  return Prediction(file="/clips/take.mp4", model="/models/s1", model_name="sultana_audio",
                    class_names=list(CLASSES), duration=duration, window=window, hop=hop,
                    starts=starts, probabilities=probabilities, timings={})


def test_one_window_plot_is_a_bar_per_class_and_says_it_was_padded(tmp_path):
  from matplotlib.patches import Rectangle
  from avjax.serving.predict import figure, timeline_figure
  p = np.random.default_rng(0).dirichlet(np.ones(len(CLASSES)))
  result = _prediction(p, duration=3.2, window=3.6)
  fig = figure(result)
  (ax,) = fig.axes
  bars = [r for r in ax.patches if isinstance(r, Rectangle)]
  assert len(bars) == len(CLASSES)
  np.testing.assert_allclose(sorted(b.get_width() for b in bars), sorted(p), atol=1e-6)
  ticks = [t.get_text() for t in ax.get_yticklabels()]
  assert ticks == list(CLASSES)
  best = CLASSES[int(np.argmax(p))]
  title = ax.get_title()
  assert f"take.mp4: {best}" in title
  assert "3.2 s clip, padded to the 3.6 s window" in title
  assert "padded" not in figure(_prediction(p, duration=3.6, window=3.6)).axes[0].get_title()
  out = tmp_path / "one.png"
  timeline_figure(result, str(out))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_keeps_near_uniform_probabilities_apart_and_marks_chance():
  from avjax.serving.predict import figure
  rng = np.random.default_rng(0)
  duration, window, hop = 8.3, 3.6, 1.0
  n = len(_expected_starts(duration, window, hop))
  p = rng.dirichlet(np.full(len(CLASSES), 100.0), size=n)  # all within a few % of chance
  (ax,) = figure(_prediction(p, duration, window, hop)).axes
  chance = 1.0 / len(CLASSES)
  lo, hi = ax.get_ylim()
  assert lo <= min(p.min(), chance) and hi >= max(p.max(), chance)
  assert hi - lo < 0.5 * (1.0 - 0.0)  # fitted to the data, not the whole [0, 1]
  flat = [ln for ln in ax.get_lines() if np.allclose(ln.get_ydata(), chance)]
  assert flat, "no reference line at chance"
  assert f"{n} windows" in ax.get_title() and "ends at the clip's end" in ax.get_title()
