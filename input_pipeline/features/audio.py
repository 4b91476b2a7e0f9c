"""Audio features on numpy arrays: log-mel, MFCC, the 162-long handcrafted vector
and pitch/energy statistics.

Each set computes one STFT and derives everything else from it, because the STFT
is the bulk of the cost. Resampling uses soxr, which is fast and deterministic.

The resampler, the STFT, `power_to_db` and the MFCC DCT are librosa's own
computations (same soxr call, same frames through the same scipy.fft calls,
same dtypes), minus librosa's per-call wrappers: `prepare` spends a few ms per
clip here, and the wrappers (window construction, checks, lazy imports of
scipy.signal in every worker) cost as much as the numbers. tests/test_features_audio.py
checks the results bit-for-bit against librosa.
"""

from __future__ import annotations


import librosa
import numpy as np
import scipy.fft
import soxr

# Floor added before the natural log of mel power: silence maps to log(1e-6).
LOG_FLOOR = 1e-6


def to_mono_float32(audio: np.ndarray) -> np.ndarray:
  """Validates decoded audio: 1-D, finite, float32 (a decoder hands us mono)."""
  audio = np.asarray(audio)
  if audio.ndim != 1:
    raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
  if audio.size == 0:
    raise ValueError("audio is empty")
  audio = audio.astype(np.float32, copy=False)
  if not np.all(np.isfinite(audio)):
    raise ValueError("audio has non-finite samples")
  return audio


def resample(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
  """Resamples to `target_rate` (no-op when equal) so every clip shares one rate."""
  audio = to_mono_float32(audio)
  if int(sample_rate) == int(target_rate):
    return audio
  return np.ascontiguousarray(soxr_resample(audio, int(sample_rate), int(target_rate)),
                              dtype=np.float32)


def soxr_resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """`librosa.resample(y, res_type="soxr_hq")` for 1-D `y`, without importing
  librosa's audio module (scipy.signal, scipy.stats, numba: seconds per worker)."""
  if orig_sr == target_sr:
    return y
  ratio = float(target_sr) / orig_sr
  n_samples = int(np.ceil(y.shape[-1] * ratio))
  y_hat = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
  return np.asarray(_fix_length(y_hat, n_samples), dtype=y.dtype)


def _fix_length(data: np.ndarray, size: int) -> np.ndarray:
  """librosa.util.fix_length on the last axis: trim, or zero-pad at the end."""
  n = data.shape[-1]
  if n > size:
    return data[..., :size]
  if n < size:
    return np.pad(data, [(0, 0)] * (data.ndim - 1) + [(0, size - n)], mode="constant")
  return data


def power_spectrogram(audio: np.ndarray, n_fft: int, hop_length: int,
                      win_length: int | None = None) -> np.ndarray:
  """|STFT|^2, (1 + n_fft // 2, 1 + len // hop), centred frames, zero padding.

  Zero (not reflect) padding keeps the frame count a pure function of the length,
  which is what the masks are computed from. Clips shorter than n_fft are fine
  (zero padded)."""
  spec = stft(audio, n_fft=n_fft, hop_length=hop_length, win_length=win_length)
  return (spec.real ** 2 + spec.imag ** 2).astype(np.float32)


_MAX_MEM_BLOCK = 2 ** 8 * 2 ** 10  # librosa.util.MAX_MEM_BLOCK: frames per rfft call


def stft_window(n_fft: int, win_length: int) -> np.ndarray:
  """librosa's periodic Hann window centred in n_fft, (n_fft, 1) float64, cached:
  building it goes through scipy.signal, which costs more than the STFT."""
  def build():
    window = librosa.filters.get_window("hann", win_length, fftbins=True)
    return librosa.util.pad_center(window, size=n_fft)[:, None]
  return _constant(("hann", int(n_fft), int(win_length)), build)


def _frame(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
  """librosa.util.frame of 1-D `y`: a (frame_length, n_frames) strided view."""
  n_frames = 1 + (y.shape[-1] - frame_length) // hop_length
  if n_frames < 1:
    raise ValueError(f"input of {y.shape[-1]} samples is shorter than a frame "
                     f"({frame_length})")
  return np.lib.stride_tricks.as_strided(
      y, shape=(frame_length, n_frames), strides=(y.strides[-1], hop_length * y.strides[-1]),
      writeable=False)


def stft(y: np.ndarray, n_fft: int, hop_length: int,
         win_length: int | None = None) -> np.ndarray:
  """`librosa.stft(y, window="hann", center=True, pad_mode="constant")` of 1-D
  float32 `y`, (1 + n_fft // 2, frames) complex64: the same frames, window and
  scipy.fft.rfft, so the same numbers (checked bit for bit in
  tests/test_features_audio.py), without the per-call window construction."""
  y = np.asarray(y)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.floating):
    raise ValueError(f"audio must be 1-D floating point, got {y.dtype} {y.shape}")
  if not np.all(np.isfinite(y)):
    raise ValueError("audio has non-finite samples")
  win_length = n_fft if win_length is None else win_length
  window = stft_window(n_fft, win_length)
  # librosa zero-pads only the edge frames (to avoid copying long signals); padding
  # the whole clip once gives the same frames, and clips here are seconds long.
  frames = _frame(np.pad(y, (n_fft // 2, n_fft // 2), mode="constant"), n_fft, hop_length)
  dtype = np.complex128 if y.dtype == np.float64 else np.complex64
  out = np.empty((1 + n_fft // 2, frames.shape[-1]), dtype=dtype, order="F")
  n_columns = max(1, int(_MAX_MEM_BLOCK // (frames.shape[0] * frames.itemsize)))
  for bl_s in range(0, frames.shape[-1], n_columns):
    bl_t = min(bl_s + n_columns, frames.shape[-1])
    out[:, bl_s:bl_t] = scipy.fft.rfft(window * frames[:, bl_s:bl_t], axis=-2)
  return out


def power_to_db(power: np.ndarray, top_db: float = 80.0, amin: float = 1e-10) -> np.ndarray:
  """`librosa.power_to_db(power, ref=1.0, amin=amin, top_db=top_db)` for real input
  (ref=1.0: librosa's `- 10 log10(ref)` term is zero)."""
  power = np.asarray(power)
  log_spec = 10.0 * np.log10(np.maximum(amin, power))
  return np.maximum(log_spec, log_spec.max() - top_db)


def mfcc_from_db(mel_db: np.ndarray, n_mfcc: int = 20) -> np.ndarray:
  """`librosa.feature.mfcc(S=mel_db, n_mfcc=n_mfcc)`: orthonormal DCT-II over mels."""
  return scipy.fft.dct(mel_db, axis=-2, type=2, norm="ortho")[..., :n_mfcc, :]


def num_frames(num_samples: int, hop_length: int) -> int:
  """Frames a centred STFT gives for `num_samples` samples."""
  return 1 + int(num_samples) // int(hop_length)


# Filterbanks and windows, built once per process. `constants()` / `preload()` let
# `prepare` hand its workers the ones it built: building them imports
# scipy.signal through librosa.filters, over a second of CPU per worker.
_CONSTANTS: dict[tuple, np.ndarray] = {}


def _constant(key: tuple, build) -> np.ndarray:
  value = _CONSTANTS.get(key)
  if value is None:
    value = build()
    value.setflags(write=False)
    _CONSTANTS[key] = value
  return value


def constants() -> dict[tuple, np.ndarray]:
  """Every filterbank and window built so far in this process."""
  return dict(_CONSTANTS)


def preload(built: dict[tuple, np.ndarray]) -> None:
  """Adopts filterbanks and windows built by another process (same code, same values)."""
  for key, value in built.items():
    _constant(key, lambda v=value: np.array(v))


def mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  """Slaney mel filterbank, cached: building it costs as much as a short STFT."""
  return _constant(("mel", int(sample_rate), int(n_fft), int(n_mels)), lambda: librosa.filters.mel(
      sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0,
      fmax=sample_rate / 2.0).astype(np.float32))


def mel_power(power: np.ndarray, sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  return mel_basis(sample_rate, n_fft, n_mels) @ power


def log_mel(audio: np.ndarray, sample_rate: int, n_mels: int = 64, n_fft: int = 512,
            win_length: int = 400, hop_length: int = 160) -> np.ndarray:
  """Natural-log mel power, (n_mels, frames); defaults are 25 ms / 10 ms at 16 kHz."""
  power = power_spectrogram(audio, n_fft, hop_length, win_length)
  return np.log(mel_power(power, sample_rate, n_fft, n_mels) + LOG_FLOOR)


def crop_or_pad_time(feature: np.ndarray, length: int,
                     pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Fixes a (time, dims) array to `length` rows.

  Longer inputs keep their centre, because RAVDESS and CREMA-D clips start and end
  in silence; shorter ones are padded at the end with `pad_value`. The mask marks
  real rows (True)."""
  n = feature.shape[0]
  mask = np.zeros((length,), dtype=bool)
  if n >= length:
    start = (n - length) // 2
    mask[:] = True
    return np.ascontiguousarray(feature[start:start + length]), mask
  out = np.full((length,) + feature.shape[1:], pad_value, dtype=feature.dtype)
  out[:n] = feature
  mask[:n] = True
  return out, mask


def logmel_fixed(audio: np.ndarray, sample_rate: int, n_frames: int = 400,
                 target_rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
  """(n_frames, 64) log-mel at 16 kHz, 25 ms / 10 ms, padded with the silence level."""
  y = resample(audio, sample_rate, target_rate)
  feats = log_mel(y, target_rate).T.astype(np.float32)
  return crop_or_pad_time(feats, n_frames, pad_value=float(np.log(LOG_FLOOR)))


def mfcc_fixed(audio: np.ndarray, sample_rate: int, n_frames: int = 180,
               n_mfcc: int = 20, target_rate: int = 16000, hop_length: int = 320
               ) -> tuple[np.ndarray, np.ndarray]:
  """(n_frames, n_mfcc) MFCCs at 16 kHz with a 20 ms hop, so 180 frames span 3.6 s.

  25 ms window (n_fft 512), 64 mel bands, dB with librosa's 80 dB floor, DCT-II.
  Padding is zeros, as in S1/S3's Keras pipelines."""
  y = resample(audio, sample_rate, target_rate)
  power = power_spectrogram(y, n_fft=512, hop_length=hop_length, win_length=400)
  mel_db = power_to_db(mel_power(power, target_rate, 512, 64))
  mfcc = mfcc_from_db(mel_db, n_mfcc=n_mfcc).T.astype(np.float32)
  return crop_or_pad_time(mfcc, n_frames, pad_value=0.0)


def frame_signal(audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
  """(frames, frame_length) frames, centred like the STFT (zero padded both ends)."""
  padded = np.pad(audio, frame_length // 2)
  return librosa.util.frame(padded, frame_length=frame_length, hop_length=hop_length,
                            axis=0)


def autocorrelation_pitch(frames: np.ndarray, sample_rate: int, fmin: float = 65.0,
                          fmax: float = 500.0, voicing_threshold: float = 0.5,
                          relative_energy: float = 0.05,
                          ) -> tuple[np.ndarray, np.ndarray]:
  """F0 per frame from the autocorrelation maximum (S2's pitch), and a voiced flag.

  The biased autocorrelation (via one FFT per frame) is searched over lags for
  fmin..fmax; its first period beats its multiples, so octave-down errors are rare.
  A frame is voiced when the normalised peak is at least `voicing_threshold` and its
  energy is at least `relative_energy` of the loudest frame (and not digital
  silence). Parabolic interpolation gives sub-sample lags."""
  frame_length = frames.shape[1]
  centred = frames - frames.mean(axis=1, keepdims=True)
  n_fft = 1 << int(np.ceil(np.log2(2 * frame_length)))
  spectrum = np.fft.rfft(centred, n=n_fft, axis=1)
  acf = np.fft.irfft(spectrum.real ** 2 + spectrum.imag ** 2, n=n_fft, axis=1)
  energy = acf[:, 0]
  safe_energy = np.maximum(energy, 1e-12)
  min_lag = max(1, int(np.floor(sample_rate / fmax)))
  max_lag = min(frame_length - 2, int(np.ceil(sample_rate / fmin)))
  window = acf[:, min_lag:max_lag + 1] / safe_energy[:, None]
  best = np.argmax(window, axis=1)
  peak = window[np.arange(len(best)), best]
  lag = (best + min_lag).astype(np.float64)
  # Parabolic refinement; both neighbours exist as 1 <= min_lag, max_lag + 1 < length.
  rows = np.arange(len(best))
  left = acf[rows, np.maximum(best + min_lag - 1, 0)] / safe_energy
  centre = acf[rows, best + min_lag] / safe_energy
  right = acf[rows, best + min_lag + 1] / safe_energy
  denom = left - 2.0 * centre + right
  safe_denom = np.where(np.abs(denom) > 1e-12, denom, np.inf)   # flat: no shift
  lag = lag + np.clip(0.5 * (left - right) / safe_denom, -0.5, 0.5)
  f0 = sample_rate / lag
  rms = np.sqrt(np.maximum(energy, 0.0) / frame_length)
  loud_enough = (rms >= relative_energy * rms.max()) & (rms > 1e-4)
  voiced = (peak >= voicing_threshold) & loud_enough
  return f0.astype(np.float32), voiced


def _stats(values: np.ndarray) -> np.ndarray:
  """mean, std, min, max; zeros when there is nothing to summarise."""
  if values.size == 0:
    return np.zeros((4,), dtype=np.float32)
  return np.array([values.mean(), values.std(), values.min(), values.max()],
                  dtype=np.float32)


def handcrafted(audio: np.ndarray, sample_rate: int, target_rate: int = 22050,
                n_fft: int = 2048, hop_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """The common 162-vector and S2's pitch/energy statistics (8).

  162 = time means of ZCR (1), chroma (12), MFCC (20), RMS (1), mel power (128),
  in that order, at librosa's defaults (22,050 Hz, 2048 / 512) as in the widely
  used recipe. Chroma skips tuning estimation (tuning 0): it is slow and moves
  the bins by under a semitone. Mel power is left unscaled, as in the recipe;
  standardise downstream.

  Stats (8) = F0 mean/std/min/max over voiced frames (zeros if none) and frame
  RMS mean/std/min/max over all frames."""
  y = resample(audio, sample_rate, target_rate)
  power = power_spectrogram(y, n_fft, hop_length)
  magnitude = np.sqrt(power)
  frames = frame_signal(y, n_fft, hop_length)

  signs = np.signbit(frames)
  zcr = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
  chroma = librosa.feature.chroma_stft(S=power, sr=target_rate, n_fft=n_fft, tuning=0.0)
  mel = mel_power(power, target_rate, n_fft, 128)
  mfcc = mfcc_from_db(power_to_db(mel), n_mfcc=20)
  rms_spec = librosa.feature.rms(S=magnitude, frame_length=n_fft)[0]
  vector = np.concatenate([
      [zcr.mean()], chroma.mean(axis=1), mfcc.mean(axis=1), [rms_spec.mean()],
      mel.mean(axis=1)]).astype(np.float32)

  f0, voiced = autocorrelation_pitch(frames, target_rate)
  frame_rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
  stats = np.concatenate([_stats(f0[voiced]), _stats(frame_rms)]).astype(np.float32)
  return vector, stats


def mel_image(audio: np.ndarray, sample_rate: int, size: int = 128,
              target_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256
              ) -> np.ndarray:
  """(size, size) log-mel image in [0, 1] for S5: 128 mels, whole clip resized in
  time to `size` columns, min-max scaled per clip (all zeros for a flat input).

  Low frequencies are row 0."""
  import cv2  # Local: audio-only users need not import OpenCV.
  y = resample(audio, sample_rate, target_rate)
  power = power_spectrogram(y, n_fft, hop_length)
  db = power_to_db(mel_power(power, target_rate, n_fft, size), top_db=80.0)
  db = db.astype(np.float32)
  cols = db.shape[1]
  interp = cv2.INTER_AREA if cols > size else cv2.INTER_LINEAR
  image = cv2.resize(db, (size, size), interpolation=interp)
  lo, hi = float(image.min()), float(image.max())
  if hi - lo < 1e-6:
    return np.zeros((size, size), dtype=np.float32)
  return ((image - lo) / (hi - lo)).astype(np.float32)


def resize_time(feature: np.ndarray, length: int) -> np.ndarray:
  """Resizes (dims, time) to (dims, length) columns: area when shrinking, linear
  when stretching."""
  import cv2
  feature = np.ascontiguousarray(feature, dtype=np.float32)
  interp = cv2.INTER_AREA if feature.shape[1] > length else cv2.INTER_LINEAR
  return cv2.resize(feature, (length, feature.shape[0]), interpolation=interp)
