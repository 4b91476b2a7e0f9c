"""Audio feature sets against signals whose answers are known in advance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from input_pipeline.errors import MissingModalityError
from input_pipeline.features import ClipMedia, get_feature_set
from input_pipeline.features import audio as audio_lib

AUDIO_SETS = ("logmel", "mfcc", "handcrafted162")
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
RAVDESS_WAVS = sorted((FIXTURES / "ravdess" / "Actor_01").glob("*.wav"))


def tone(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
  t = np.arange(int(round(seconds * sr))) / sr
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pulse_train(f0: float, seconds: float, sr: int, amplitude: float = 0.8) -> np.ndarray:
  """Band-limited pulse train: equal-amplitude harmonics of f0 up to 4 kHz, exactly
  periodic at any f0 (rounding pulse positions to samples would add jitter)."""
  t = np.arange(int(round(seconds * sr))) / sr
  harmonics = np.arange(1, int(4000.0 // f0) + 1)
  y = np.cos(2 * np.pi * f0 * harmonics[:, None] * t[None, :]).sum(axis=0)
  return (amplitude * y / np.abs(y).max()).astype(np.float32)


def audio_clip(y: np.ndarray, sr: int, clip_id: str = "clip") -> ClipMedia:
  return ClipMedia(clip_id=clip_id, audio=y, sample_rate=sr)


def compute(name: str, y: np.ndarray, sr: int) -> dict[str, np.ndarray]:
  return get_feature_set(name).compute(audio_clip(y, sr))


@pytest.mark.parametrize("name", AUDIO_SETS)
@pytest.mark.parametrize("sr", [16000, 48000])
def test_outputs_match_spec(name, sr):
  out = compute(name, tone(440.0, 3.5, sr), sr)
  spec = get_feature_set(name).spec
  assert set(out) == set(spec)
  for key, (shape, dtype) in spec.items():
    assert out[key].shape == shape and out[key].dtype == dtype, key
    assert np.all(np.isfinite(out[key])), key


def test_short_clip_is_padded_and_mask_counts_real_frames():
  sr = 16000                       # the sets' own rate: no resampling changes the length
  y = tone(300.0, 1.37, sr)
  hop_logmel, hop_mfcc = 160, 320
  expected_logmel = 1 + len(y) // hop_logmel
  expected_mfcc = 1 + len(y) // hop_mfcc

  out = compute("logmel", y, sr)
  assert out["logmel_mask"].sum() == expected_logmel
  assert np.all(out["logmel_mask"][:expected_logmel])
  np.testing.assert_allclose(out["logmel"][expected_logmel:], np.log(audio_lib.LOG_FLOOR))

  out = compute("mfcc", y, sr)
  assert out["mfcc_mask"].sum() == expected_mfcc
  assert np.all(out["mfcc_mask"][:expected_mfcc])
  assert np.all(out["mfcc"][expected_mfcc:] == 0.0)
  assert np.any(out["mfcc"][:expected_mfcc] != 0.0)


def test_long_clip_is_cropped_to_its_centre():
  sr = 16000
  # 1.5 s silence, 4.2 s tone, 1.5 s silence: a centred 4 s (or 3.6 s) window
  # sees only tone, a window from the start would see mostly silence.
  silence = np.zeros(int(1.5 * sr), dtype=np.float32)
  y = np.concatenate([silence, tone(500.0, 4.2, sr), silence])
  out = compute("logmel", y, sr)
  assert out["logmel_mask"].all()
  floor = np.log(audio_lib.LOG_FLOOR)
  assert np.all(out["logmel"].max(axis=1) > floor + 10.0)
  out = compute("mfcc", y, sr)
  assert out["mfcc_mask"].all()
  c0 = out["mfcc"][:, 0]
  assert c0.max() - c0.min() < 0.1 * abs(c0.mean())  # loud throughout


@pytest.mark.parametrize("sr", [16000, 48000])
@pytest.mark.parametrize("f0", [120.0, 200.0, 310.0])
def test_pitch_of_pulse_train(sr, f0):
  stats = compute("handcrafted162", pulse_train(f0, 2.0, sr), sr)["pitch_energy_stats"]
  mean, std, low, high = stats[:4]
  assert abs(mean - f0) < 0.02 * f0
  assert low > 0.95 * f0 and high < 1.05 * f0
  assert std < 0.02 * f0


def test_energy_stats_scale_with_amplitude_and_pitch_does_not():
  sr = 22050
  quiet = compute("handcrafted162", tone(180.0, 2.0, sr, 0.1), sr)["pitch_energy_stats"]
  loud = compute("handcrafted162", tone(180.0, 2.0, sr, 0.5), sr)["pitch_energy_stats"]
  np.testing.assert_allclose(loud[4:], 5.0 * quiet[4:], rtol=1e-3, atol=1e-7)
  np.testing.assert_allclose(loud[:4], quiet[:4], rtol=1e-3)
  # The RMS of a sine of amplitude a is a / sqrt(2); the max frame is a full one.
  assert abs(loud[7] - 0.5 / np.sqrt(2)) < 0.01


def test_zcr_follows_frequency_and_chroma_finds_the_note():
  sr = 22050
  low = compute("handcrafted162", tone(220.0, 2.0, sr), sr)["handcrafted162"]
  high = compute("handcrafted162", tone(1760.0, 2.0, sr), sr)["handcrafted162"]
  assert high[0] > 4 * low[0]
  # A sine of frequency f crosses zero 2f times a second.
  assert abs(high[0] - 2 * 1760.0 / sr) < 0.05 * (2 * 1760.0 / sr)
  # Chroma bins start at C, so A is bin 9.
  assert int(np.argmax(low[1:13])) == 9
  assert int(np.argmax(high[1:13])) == 9


@pytest.mark.parametrize("name", AUDIO_SETS)
def test_silence_is_finite(name):
  sr = 16000
  out = compute(name, np.zeros(int(2.5 * sr), dtype=np.float32), sr)
  for key, value in out.items():
    assert np.all(np.isfinite(value)), key
  if name == "handcrafted162":
    assert np.all(out["pitch_energy_stats"] == 0.0)    # nothing voiced, no energy


def test_missing_audio_names_the_clip():
  media = ClipMedia(clip_id="03-01-05-02-01-01-07", audio=None, sample_rate=None)
  for name in AUDIO_SETS:
    with pytest.raises(MissingModalityError) as info:
      get_feature_set(name).compute(media)
    assert info.value.modality == "audio"
    assert "03-01-05-02-01-01-07" in str(info.value)


def test_real_ravdess_wavs_give_finite_features():
  assert len(RAVDESS_WAVS) >= 4, f"fixtures missing under {FIXTURES}"
  for path in RAVDESS_WAVS:
    y, sr = soundfile.read(path, dtype="float32")
    if y.ndim == 2:
      y = y.mean(axis=1)
    for name in AUDIO_SETS:
      out = compute(name, y, sr)
      for key, value in out.items():
        assert np.all(np.isfinite(value)), (path.name, key)
    stats = out["pitch_energy_stats"]
    # Actor 01 is a man speaking: some voiced frames, F0 in a speaking range.
    assert 60.0 < stats[0] < 400.0, path.name
