"""The feature-set registry: names, versions, specs that match the papers' inputs,
outputs that match the specs, determinism and missing-modality errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from input_pipeline.errors import InputError, MissingModalityError
from input_pipeline.features import FEATURE_SETS, ClipMedia, FeatureSet, get_feature_set

EXPECTED_SETS = {"logmel", "mfcc", "handcrafted162", "frames3d_gray_80x70x30",
                 "frames2d_64", "keyframe_mel", "snippets", "stip"}
SECONDS, FPS, SR = 3.5, 30.0, 48000


def synthetic_clip(clip_id: str = "synthetic", seconds: float = SECONDS,
                   fps: float = FPS, sr: int = SR) -> ClipMedia:
  """A 320x180 clip with a 'face' box, a square that swings inside it, and a voice-
  like tone with vibrato and a loudness envelope."""
  n_frames = int(round(seconds * fps))
  rng = np.random.default_rng(7)
  background = rng.integers(20, 80, (180, 320, 3), dtype=np.uint8)
  frames = np.repeat(background[None], n_frames, axis=0)
  boxes = np.zeros((n_frames, 4), dtype=np.float32)
  landmarks = np.zeros((n_frames, 6, 2), dtype=np.float32)
  for i in range(n_frames):
    fx = 120 + 2 * (i % 10)                       # the face box jitters a little
    boxes[i] = (fx, 40, 90, 90)
    landmarks[i] = [(fx + 27, 65), (fx + 63, 65), (fx + 45, 85), (fx + 45, 105),
                    (fx + 5, 75), (fx + 85, 75)]  # eyes, nose, mouth, ears
    frames[i, 40:130, fx:fx + 90] = 150
    sx = int(fx + 30 + 15 * np.sin(2 * np.pi * i / 12))
    frames[i, 70:90, sx:sx + 20] = 250
  t = np.arange(int(seconds * sr)) / sr
  f0 = 160 + 20 * np.sin(2 * np.pi * 3 * t)
  phase = 2 * np.pi * np.cumsum(f0) / sr
  envelope = 0.5 * (1 - np.cos(2 * np.pi * t / seconds))
  audio = (0.4 * envelope * sum(np.sin(h * phase) / h for h in range(1, 6)))
  return ClipMedia(clip_id=clip_id, audio=audio.astype(np.float32), sample_rate=sr,
                   frames=frames, fps=fps, face_boxes=boxes, face_landmarks=landmarks)


@pytest.fixture(scope="module")
def clip() -> ClipMedia:
  return synthetic_clip()


@pytest.fixture(scope="module")
def outputs(clip) -> dict[str, dict[str, np.ndarray]]:
  return {name: fs.compute(clip) for name, fs in FEATURE_SETS.items()}


def test_registry_holds_every_set_with_metadata():
  assert set(FEATURE_SETS) == EXPECTED_SETS
  for name, fs in FEATURE_SETS.items():
    assert isinstance(fs, FeatureSet) and fs.name == name
    assert re.fullmatch(r"\d+\.\d+\.\d+", fs.version)
    assert len(fs.description) > 80, name       # the choices are written down
    assert fs.modalities and set(fs.modalities) <= {"audio", "video"}
    for key, (shape, dtype) in fs.spec.items():
      assert isinstance(shape, tuple) and all(isinstance(d, int) for d in shape), key
      assert isinstance(dtype, np.dtype), key


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError) as info:
    get_feature_set("mel_spectrogram")
  message = str(info.value)
  assert "\n" not in message and "mel_spectrogram" in message
  for name in EXPECTED_SETS:
    assert name in message
  assert get_feature_set("mfcc") is FEATURE_SETS["mfcc"]


def test_specs_match_the_papers():
  spec = {name: fs.spec for name, fs in FEATURE_SETS.items()}
  # S1: 180x20 audio "spectrogram"; 30 gray frames of 80 (high) x 70 (wide).
  assert spec["mfcc"]["mfcc"][0] == (180, 20)
  assert spec["frames3d_gray_80x70x30"]["frames3d"][0] == (30, 80, 70, 1)
  # S2: 162-long audio vector, video features reduced to the same length.
  assert spec["handcrafted162"]["handcrafted162"][0] == (162,)
  assert spec["stip"]["stip"][0] == spec["handcrafted162"]["handcrafted162"][0]
  # S3: 64x64 RGB frames.
  assert spec["frames2d_64"]["frames2d"][0][1:] == (64, 64, 3)
  # S4: RGB snippets of 112x112 paired with audio snippets, one per video snippet.
  video_shape = spec["snippets"]["video_snippets"][0]
  assert video_shape[2:] == (112, 112, 3)
  assert spec["snippets"]["audio_snippets"][0][0] == video_shape[0]
  assert spec["snippets"]["snippet_times"][0] == (video_shape[0], 2)
  # S5: one key frame and a mel image.
  assert spec["keyframe_mel"]["keyframe"][0][-1] == 3
  assert spec["keyframe_mel"]["mel_image"][0] == (128, 128)


@pytest.mark.parametrize("name", sorted(EXPECTED_SETS))
def test_outputs_match_spec_and_are_finite(name, outputs):
  out = outputs[name]
  spec = FEATURE_SETS[name].spec
  assert set(out) == set(spec)
  for key, (shape, dtype) in spec.items():
    assert out[key].shape == shape, key
    assert out[key].dtype == dtype, key
    if np.issubdtype(dtype, np.floating):
      assert np.all(np.isfinite(out[key])), key


def test_outputs_are_deterministic(clip, outputs):
  for name, fs in FEATURE_SETS.items():
    again = fs.compute(clip)
    for key in fs.spec:
      np.testing.assert_array_equal(again[key], outputs[name][key], err_msg=f"{name}.{key}")


def test_clip_level_values_are_sensible(clip, outputs):
  n_frames = clip.frames.shape[0]
  # 3.5 s is shorter than both fixed lengths (4 s, 3.6 s), so both are padded.
  assert outputs["logmel"]["logmel_mask"].sum() == 1 + int(SECONDS * 16000) // 160
  assert outputs["mfcc"]["mfcc_mask"].sum() == 1 + int(SECONDS * 16000) // 320
  assert outputs["frames3d_gray_80x70x30"]["frames3d_mask"].all()   # 3.5 s >= 3 s
  assert outputs["frames2d_64"]["frames2d_mask"].sum() == min(24, -(-n_frames // 5))
  assert 0 <= outputs["keyframe_mel"]["keyframe_index"] < n_frames
  times = outputs["snippets"]["snippet_times"]
  assert times[0, 0] == 0.0
  np.testing.assert_allclose(times[-1, 1], n_frames / FPS, rtol=1e-6)
  np.testing.assert_allclose(times[1:, 0], times[:-1, 1], rtol=1e-6)
  # The tone's pitch swings 140-180 Hz.
  pitch_mean = outputs["handcrafted162"]["pitch_energy_stats"][0]
  assert 140.0 < pitch_mean < 180.0
  assert outputs["stip"]["stip_count"] > 0


def test_snippet_audio_follows_the_loudness_envelope(outputs):
  # The envelope peaks mid-clip: the middle snippets are louder than the ends.
  loudness = outputs["snippets"]["audio_snippets"].mean(axis=(1, 2))
  assert loudness[1] > loudness[0] and loudness[2] > loudness[3]


@pytest.mark.parametrize("missing", ["audio", "video"])
def test_missing_modality_raises_for_exactly_the_sets_that_need_it(clip, missing):
  if missing == "audio":
    media = ClipMedia(clip.clip_id + "-mute", None, None, clip.frames, clip.fps,
                      clip.face_boxes, clip.face_landmarks)
  else:
    media = ClipMedia(clip.clip_id + "-blind", clip.audio, clip.sample_rate)
  for name, fs in FEATURE_SETS.items():
    if missing in fs.modalities:
      with pytest.raises(MissingModalityError) as info:
        fs.compute(media)
      assert info.value.modality == missing
      assert info.value.path == media.clip_id
    elif name in ("logmel", "mfcc", "frames3d_gray_80x70x30", "frames2d_64"):
      fs.compute(media)                   # the other modality alone is enough


def test_a_very_short_clip_still_fits_every_spec():
  short = synthetic_clip("short", seconds=0.07)          # 2 frames, 70 ms of audio
  assert short.frames.shape[0] == 2
  for name, fs in FEATURE_SETS.items():
    out = fs.compute(short)
    for key, (shape, dtype) in fs.spec.items():
      assert out[key].shape == shape and out[key].dtype == dtype, (name, key)
  assert FEATURE_SETS["stip"].compute(short)["stip_count"] == 0
  assert FEATURE_SETS["frames3d_gray_80x70x30"].compute(short)["frames3d_mask"].sum() \
      == sum(j * FPS * 3 / 30 < 2 for j in range(30))


def test_unusable_audio_is_an_input_error_naming_the_clip():
  stereo = ClipMedia("stereo-clip", np.zeros((16000, 2), np.float32), 16000)
  with pytest.raises(InputError, match="stereo-clip"):
    get_feature_set("logmel").compute(stereo)
  empty = ClipMedia("empty-clip", np.zeros((0,), np.float32), 16000)
  with pytest.raises(InputError, match="empty-clip"):
    get_feature_set("mfcc").compute(empty)


def test_snippets_pair_audio_and_video_of_the_same_seconds():
  fps, sr, n_frames = 30.0, 16000, 120                       # 4 s
  levels = np.arange(n_frames, dtype=np.uint8)
  frames = np.broadcast_to(levels[:, None, None, None], (n_frames, 24, 32, 3)).copy()
  t = np.arange(4 * sr) / sr
  audio = np.where(t >= 2.0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
  out = get_feature_set("snippets").compute(
      ClipMedia("aligned", audio, sr, frames, fps, None))
  segment = n_frames / 4
  np.testing.assert_allclose(out["snippet_times"],
                             [[k * segment / fps, (k + 1) * segment / fps] for k in range(4)],
                             rtol=1e-6)
  for k in range(4):
    source = out["video_snippets"][k, :, 0, 0, 0].astype(int)
    assert np.all((source >= k * segment) & (source < (k + 1) * segment))
    assert np.all(np.diff(source) > 0)
  silence = np.log(1e-6)
  audio_snippets = out["audio_snippets"]
  np.testing.assert_allclose(audio_snippets[0], silence, atol=1e-4)   # 0-1 s: silent
  assert np.median(audio_snippets[1]) < silence + 1.0                 # 1-2 s: silent
  assert np.all(audio_snippets[2:].max(axis=1) > silence + 10.0)      # 2-4 s: the tone
