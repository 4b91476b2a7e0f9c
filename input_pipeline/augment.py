"""Training-split augmentations as Grain transforms.

Everything here runs only in `loader.train_dataset` (evaluation batches are never
transformed), draws its randomness from the Grain-supplied generator, so a run is
deterministic for a seed and resumes at the same draw, and works on the prepared
features (the wav is not kept in the prepared data):

  * `SpecAugment`: time and frequency masks (Park et al. 2019).
  * `SpeedPerturb`: Kaldi-style speed perturbation (Ko et al. 2015) done on the
    log-mel itself: the time axis is resampled by 1/s and the frequency axis
    warped by s through the mel scale, which is what resampling the waveform by
    s does to its spectrum (tempo and pitch move together).
  * `PitchShift`: the frequency warp alone (pitch and formants move, tempo does
    not), in semitones.
  * `RandomTimeCrop`: a random window of fixed length from the real frames.
  * `Mixup` (batch level): convex mixes of two examples; the loss mixes their
    targets with the same weight (avjax.losses.cross_entropy).
  * `RandomFrameCropFlip`: spatial shift and flip of face frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np


class SpecAugment(grain.transforms.RandomMap):
  """Time and frequency masks on (time, freq) features, SpecAugment-style. Masked
  cells get the feature's mean, so masking does not shift the input distribution."""

  def __init__(self, key: str, time_masks: int = 2, time_width: int = 20,
               freq_masks: int = 2, freq_width: int = 4):
    self.key, self.time_masks, self.time_width = key, time_masks, time_width
    self.freq_masks, self.freq_width = freq_masks, freq_width

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    x = np.array(element[self.key], copy=True)
    t, f = x.shape[-2], x.shape[-1]
    fill = x.mean()
    for _ in range(self.time_masks):
      w = int(rng.integers(0, self.time_width + 1))
      s = int(rng.integers(0, max(t - w, 0) + 1))
      x[..., s:s + w, :] = fill
    for _ in range(self.freq_masks):
      w = int(rng.integers(0, self.freq_width + 1))
      s = int(rng.integers(0, max(f - w, 0) + 1))
      x[..., :, s:s + w] = fill
    element = dict(element)
    element[self.key] = x
    return element


class RandomFrameCropFlip(grain.transforms.RandomMap):
  """Random spatial crop (then zero-pad back to size) and horizontal flip of a
  frames tensor (..., H, W, C). Faces are left-right symmetric enough that the
  flip keeps the label."""

  def __init__(self, key: str, max_shift: int = 4, flip: bool = True):
    self.key, self.max_shift, self.flip = key, max_shift, flip

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    x = np.asarray(element[self.key])
    h, w = x.shape[-3], x.shape[-2]
    dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
    out = np.zeros_like(x)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd, :] = x[..., ys, xs, :]
    if self.flip and rng.random() < 0.5:
      out = out[..., :, ::-1, :]
    element = dict(element)
    element[self.key] = np.ascontiguousarray(out)
    return element


class Mixup(grain.transforms.RandomMap):
  """Batch-level mixup: mixes each example with another of the same batch. Adds
  `mixup_label` (the partner's label) and `mixup_lambda` (the weight of `label`);
  the loss mixes the two cross-entropies with that weight."""

  def __init__(self, keys: Sequence[str], alpha: float = 0.2):
    self.keys, self.alpha = tuple(keys), alpha

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    n = batch["label"].shape[0]
    perm = rng.permutation(n)
    lam = rng.beta(self.alpha, self.alpha, size=(n,)).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)  # The original example always dominates.
    batch = dict(batch)
    for k in self.keys:
      x = batch[k].astype(np.float32)
      shape = (n,) + (1,) * (x.ndim - 1)
      batch[k] = lam.reshape(shape) * x + (1.0 - lam.reshape(shape)) * x[perm]
    batch["mixup_label"] = batch["label"][perm]
    batch["mixup_lambda"] = lam
    return batch


# --- log-mel warps -----------------------------------------------------------------


def _hz_to_mel(f):
  """Slaney mel scale (librosa's default, the one `logmel` is computed on)."""
  f = np.asarray(f, np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(f >= min_log_hz,
                  min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
                  f / f_sp)


def _mel_to_hz(m):
  m = np.asarray(m, np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)),
                  f_sp * m)


def mel_warp_positions(n_mels: int, factor: float, fmin: float = 0.0,
                       fmax: float = 8000.0) -> np.ndarray:
  """For each of `n_mels` bands, the (fractional) band index whose centre
  frequency is f / factor: reading the log-mel there moves every frequency f to
  f * factor. Band centres are those of librosa's Slaney filterbank."""
  edges = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
  centres_hz = _mel_to_hz(edges[1:-1])
  source_mel = _hz_to_mel(centres_hz / float(factor))
  # Band index as a function of mel is linear: band i sits at edges[i + 1].
  step = edges[1] - edges[0]
  pos = (source_mel - edges[1]) / step
  return np.clip(pos, 0.0, n_mels - 1.0)


def _interp_axis(x: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
  """Linear interpolation of `x` at fractional `positions` along `axis`."""
  lo = np.floor(positions).astype(np.int64)
  hi = np.minimum(lo + 1, x.shape[axis] - 1)
  w = (positions - lo).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = -1
  w = w.reshape(shape)
  return (np.take(x, lo, axis=axis) * (1.0 - w) + np.take(x, hi, axis=axis) * w
          ).astype(x.dtype)


def warp_frequency(x: np.ndarray, factor: float, fmin: float = 0.0,
                   fmax: float = 8000.0) -> np.ndarray:
  """(time, n_mels) log-mel with every frequency f moved to f * factor."""
  if factor == 1.0:
    return x
  return _interp_axis(x, mel_warp_positions(x.shape[-1], factor, fmin, fmax), axis=-1)


def stretch_time(x: np.ndarray, mask: np.ndarray | None, rate: float
                 ) -> tuple[np.ndarray, np.ndarray | None]:
  """Resamples the time axis so the clip plays `rate` times as fast: T frames
  become round(T / rate). The mask follows by nearest frame."""
  t = x.shape[0]
  n = max(int(round(t / float(rate))), 1)
  positions = np.minimum(np.arange(n) * (t / n), t - 1.0)
  out = _interp_axis(x, positions, axis=0)
  if mask is None:
    return out, None
  return out, np.asarray(mask)[np.minimum(np.round(positions).astype(np.int64), t - 1)]


class SpeedPerturb(grain.transforms.RandomMap):
  """Speed perturbation of a (time, n_mels) log-mel: a speed s drawn uniformly
  from [min_rate, max_rate] (with probability `prob`) makes the clip s times as
  fast (round(T / s) frames) and raises its frequencies by s, as resampling the
  waveform would. The time length changes: follow it with RandomTimeCrop."""

  def __init__(self, key: str, mask_key: str | None = None, min_rate: float = 0.9,
               max_rate: float = 1.1, prob: float = 1.0, fmin: float = 0.0,
               fmax: float = 8000.0):
    self.key, self.mask_key = key, mask_key
    self.min_rate, self.max_rate, self.prob = float(min_rate), float(max_rate), float(prob)
    self.fmin, self.fmax = float(fmin), float(fmax)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    rate = float(rng.uniform(self.min_rate, self.max_rate))
    if rng.random() >= self.prob:
      return element
    element = dict(element)
    x = np.asarray(element[self.key], np.float32)
    mask = element.get(self.mask_key) if self.mask_key else None
    x, mask = stretch_time(warp_frequency(x, rate, self.fmin, self.fmax), mask, rate)
    element[self.key] = x
    if self.mask_key:
      element[self.mask_key] = mask
    return element


class PitchShift(grain.transforms.RandomMap):
  """Frequency warp of a (time, n_mels) log-mel by a shift drawn uniformly in
  [-semitones, semitones] (with probability `prob`); the time axis is untouched."""

  def __init__(self, key: str, semitones: float = 2.0, prob: float = 1.0,
               fmin: float = 0.0, fmax: float = 8000.0):
    self.key, self.semitones, self.prob = key, float(semitones), float(prob)
    self.fmin, self.fmax = float(fmin), float(fmax)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    shift = float(rng.uniform(-self.semitones, self.semitones))
    if rng.random() >= self.prob:
      return element
    element = dict(element)
    element[self.key] = warp_frequency(np.asarray(element[self.key], np.float32),
                                       2.0 ** (shift / 12.0), self.fmin, self.fmax)
    return element


class RandomTimeCrop(grain.transforms.RandomMap):
  """A random window of `length` frames from a (time, ...) feature and its mask.

  The window starts anywhere that keeps it inside the real frames (the mask's
  True span; with `active_db` > 0, the span of frames within that many dB of
  the loudest, i.e. the take without its leading and trailing silence). A span
  shorter than `length` is centred in the window where the array allows (a
  short clip starts at 0 and keeps its padding, masked). A feature shorter than `length` (after SpeedPerturb) is
  padded at the end with its padding value (its smallest value), masked False.
  Evaluation sees the whole clip: the models pool over time with the mask."""

  def __init__(self, key: str, mask_key: str | None = None, length: int = 300,
               active_db: float = 0.0):
    self.key, self.mask_key, self.length = key, mask_key, int(length)
    self.active_db = float(active_db)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    x = np.asarray(element[self.key])
    t = x.shape[0]
    mask = (np.asarray(element[self.mask_key], bool) if self.mask_key
            else np.ones((t,), bool))
    real = np.flatnonzero(mask)
    if self.active_db > 0 and real.size:
      # Only the span from the first to the last frame within active_db dB of
      # the loudest (natural-log mel power), as AvjaxAudioNet.active_db masks.
      energy = _logsumexp(np.asarray(x, np.float64), axis=-1)
      loud = energy >= energy[mask].max() - self.active_db * np.log(10.0) / 10.0
      real = np.flatnonzero(loud & mask)
    first, last = (int(real[0]), int(real[-1]) + 1) if real.size else (0, t)
    room = (last - first) - self.length
    if room >= 0:
      start = first + int(rng.integers(0, room + 1))
    else:  # The span is shorter than the window: centre it, inside the array.
      start = min(max(first + room // 2, 0), max(t - self.length, 0))
    out_x = x[start:start + self.length]
    out_m = mask[start:start + self.length]
    if out_x.shape[0] < self.length:
      pad = self.length - out_x.shape[0]
      out_x = np.concatenate(
          [out_x, np.full((pad,) + x.shape[1:], x.min(), x.dtype)], axis=0)
      out_m = np.concatenate([out_m, np.zeros((pad,), bool)])
    element = dict(element)
    element[self.key] = np.ascontiguousarray(out_x)
    if self.mask_key:
      element[self.mask_key] = out_m
    return element


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
  top = x.max(axis=axis, keepdims=True)
  return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


# Per-example transforms by config name, applied in this order whatever the order
# of the config section: warps change the length, the crop fixes it, masks last.
PER_EXAMPLE = {
    "speed_perturb": SpeedPerturb,
    "pitch_shift": PitchShift,
    "time_crop": RandomTimeCrop,
    "spec_augment": SpecAugment,
    "frames": RandomFrameCropFlip,
}
BATCH = {"mixup": Mixup}
