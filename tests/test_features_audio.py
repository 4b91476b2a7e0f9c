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


# -- The lean STFT/resample/dB/DCT path gives librosa's numbers, bit for bit ---------
# features.audio mirrors librosa's computations without its per-call wrappers; these
# references are the librosa calls the features were computed with before.

def _signals() -> list[tuple[str, np.ndarray, int]]:
  rng = np.random.default_rng(3)
  out = [(f"noise{n}", (rng.standard_normal(n) * 0.3).astype(np.float32), 48000)
         for n in (1, 300, 511, 512, 513, 4000, 57601, 144000)]
  out += [("silence", np.zeros(24000, np.float32), 44100),
          ("tone", tone(440.0, 2.3, 22050), 22050),
          ("pulses", pulse_train(120.0, 1.7, 16000), 16000),
          ("signed zeros", np.where(rng.random(8000) < 0.5, -0.0, 0.25).astype(np.float32),
           8000)]
  out += [(p.name, soundfile.read(p, dtype="float32", always_2d=True)[0].mean(
      axis=1, dtype=np.float32), soundfile.info(p).samplerate) for p in RAVDESS_WAVS[:2]]
  return out


SIGNALS = _signals()


@pytest.mark.parametrize("name,y,sr", SIGNALS, ids=[s[0] for s in SIGNALS])
def test_lean_primitives_equal_librosa_bitwise(name, y, sr):
  import librosa
  for n_fft, hop, win in ((512, 320, 400), (512, 160, 400), (2048, 512, None), (1024, 256, None)):
    want = librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=win, window="hann",
                        center=True, pad_mode="constant")
    got = audio_lib.stft(y, n_fft, hop, win)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
  for target in (16000, 22050, sr):
    want = librosa.resample(y, orig_sr=sr, target_sr=target, res_type="soxr_hq")
    got = audio_lib.soxr_resample(y, sr, target)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  power = np.abs(librosa.stft(y, n_fft=512, hop_length=320)) ** 2
  for top_db in (80.0, 20.0):
    np.testing.assert_array_equal(audio_lib.power_to_db(power, top_db=top_db),
                                  librosa.power_to_db(power, top_db=top_db))
  db = librosa.power_to_db(power)
  np.testing.assert_array_equal(audio_lib.mfcc_from_db(db, 20),
                                librosa.feature.mfcc(S=db, n_mfcc=20))


def _reference_features(name: str, y: np.ndarray, sr: int) -> dict[str, np.ndarray]:
  """The audio sets as they were computed through librosa's public functions."""
  import librosa
  import warnings

  def resample(target):
    out = librosa.resample(y, orig_sr=sr, target_sr=target, res_type="soxr_hq")
    return np.ascontiguousarray(out, dtype=np.float32)

  def power(x, n_fft, hop, win=None):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)
      spec = librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window="hann",
                          center=True, pad_mode="constant")
    return (spec.real ** 2 + spec.imag ** 2).astype(np.float32)

  if name == "mfcc":
    x = resample(16000)
    mel = audio_lib.mel_basis(16000, 512, 64) @ power(x, 512, 320, 400)
    feats = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=20).T.astype(np.float32)
    values, mask = audio_lib.crop_or_pad_time(feats, 180)
    return {"mfcc": values, "mfcc_mask": mask}
  if name == "logmel":
    x = resample(16000)
    mel = audio_lib.mel_basis(16000, 512, 64) @ power(x, 512, 160, 400)
    feats = np.log(mel + audio_lib.LOG_FLOOR).T.astype(np.float32)
    values, mask = audio_lib.crop_or_pad_time(feats, 400,
                                              pad_value=float(np.log(audio_lib.LOG_FLOOR)))
    return {"logmel": values, "logmel_mask": mask}
  raise ValueError(name)


@pytest.mark.parametrize("set_name", ["mfcc", "logmel"])
@pytest.mark.parametrize("name,y,sr", SIGNALS[4:], ids=[s[0] for s in SIGNALS[4:]])
def test_feature_sets_equal_the_librosa_reference(set_name, name, y, sr):
  got = compute(set_name, y, sr)
  want = _reference_features(set_name, y, sr)
  assert set(got) == set(want)
  for key in want:
    assert got[key].dtype == want[key].dtype
    np.testing.assert_array_equal(got[key], want[key])


def test_handcrafted_and_mel_image_spectra_equal_librosa():
  """handcrafted162 and mel_image go through the same lean STFT and dB."""
  import librosa
  y, sr = SIGNALS[-1][1], SIGNALS[-1][2]
  for target, n_fft, hop in ((22050, 2048, 512), (16000, 1024, 256)):
    x = audio_lib.resample(y, sr, target)
    spec = librosa.stft(x, n_fft=n_fft, hop_length=hop, window="hann", center=True,
                        pad_mode="constant")
    want = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    got = audio_lib.power_spectrogram(x, n_fft, hop)
    np.testing.assert_array_equal(got, want)
    mel = audio_lib.mel_power(got, target, n_fft, 128)
    np.testing.assert_array_equal(audio_lib.power_to_db(mel),
                                  librosa.power_to_db(mel, top_db=80.0))


def test_mono_wav_reads_as_its_channel_mean(tmp_path):
  """read_audio skips the mean over a mono file's one column: same samples."""
  from input_pipeline import media
  rng = np.random.default_rng(1)
  y = np.clip(rng.standard_normal(9000) * 0.3, -1, 1).astype(np.float32)
  y[::7] = -0.0
  path = tmp_path / "mono.wav"
  soundfile.write(path, y, 16000, subtype="FLOAT")
  data, _ = soundfile.read(path, dtype="float32", always_2d=True)
  want = np.clip(data.mean(axis=1, dtype=np.float32), -1.0, 1.0)
  got, sr = media.read_audio(path)
  assert sr == 16000 and got.dtype == want.dtype
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
