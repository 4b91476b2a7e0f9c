"""Named, versioned feature sets: one per published system's input.

A `FeatureSet` turns a decoded clip (`ClipMedia`) into a dict of fixed-shape
arrays described by its `spec`, so datasets can be written once and models can
be built from the spec. Bump a set's `version` whenever its output changes, so
cached features computed by an older version are not mixed with new ones.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from input_pipeline.errors import InputError, MissingModalityError
from input_pipeline.features import audio as audio_lib
from input_pipeline.features import keyframe as keyframe_lib
from input_pipeline.features import stip as stip_lib
from input_pipeline.features import video as video_lib
from input_pipeline.features.video import crop_to_boxes

__all__ = ["ClipMedia", "FeatureSet", "FEATURE_SETS", "get_feature_set", "crop_to_boxes"]

MODALITIES = ("audio", "video")
Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


@dataclasses.dataclass(frozen=True)
class ClipMedia:
  """What a decoded clip gives the features. Video fields are None together when
  the clip has no video, audio fields when it has no audio."""
  clip_id: str
  audio: np.ndarray | None = None        # float32 mono in [-1, 1]
  sample_rate: int | None = None
  frames: np.ndarray | None = None       # uint8 RGB (T, H, W, 3)
  fps: float | None = None
  face_boxes: np.ndarray | None = None   # (T, 4) float32 (x, y, w, h); None = whole frame


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSet:
  """A named, versioned feature extractor with a fixed output spec.

  `compute` raises MissingModalityError for a needed modality that is None, and
  InputError (naming the clip) for unusable input; its outputs match `spec`."""
  name: str
  version: str
  description: str
  modalities: tuple[str, ...]
  spec: Spec
  compute: Callable[[ClipMedia], dict[str, np.ndarray]]


def _checked(name: str, modalities: tuple[str, ...], spec: Spec,
             fn: Callable[[ClipMedia], dict[str, np.ndarray]]
             ) -> Callable[[ClipMedia], dict[str, np.ndarray]]:
  """Wraps a set's function: modality check first, bad input as InputError, and a
  spec check after (a mismatch is a bug in the set, so it is not an InputError)."""

  def compute(media: ClipMedia) -> dict[str, np.ndarray]:
    if "audio" in modalities and (media.audio is None or media.sample_rate is None):
      raise MissingModalityError(media.clip_id, "audio")
    if "video" in modalities and media.frames is None:
      raise MissingModalityError(media.clip_id, "video")
    try:
      out = fn(media)
    except ValueError as e:
      raise InputError(media.clip_id, f"{name}: {e}") from e
    if set(out) != set(spec):
      raise RuntimeError(f"{name} produced keys {sorted(out)}, spec has {sorted(spec)}")
    result = {}
    for key, (shape, dtype) in spec.items():
      value = np.asarray(out[key])
      if value.shape != shape or value.dtype != dtype:
        raise RuntimeError(f"{name}[{key}] is {value.shape} {value.dtype}, spec says "
                           f"{shape} {dtype}")
      result[key] = value
    return result

  compute.__name__ = f"compute_{name}"
  compute.__doc__ = fn.__doc__
  return compute


FEATURE_SETS: dict[str, FeatureSet] = {}


def _register(name: str, version: str, modalities: tuple[str, ...], spec: Spec):
  assert modalities and set(modalities) <= set(MODALITIES), modalities

  def decorator(fn):
    FEATURE_SETS[name] = FeatureSet(
        name=name, version=version, description=" ".join((fn.__doc__ or "").split()),
        modalities=modalities, spec=spec, compute=_checked(name, modalities, spec, fn))
    return fn
  return decorator


def get_feature_set(name: str) -> FeatureSet:
  try:
    return FEATURE_SETS[name]
  except KeyError:
    raise ValueError(f"unknown feature set {name!r}; known: "
                     f"{', '.join(sorted(FEATURE_SETS))}") from None


F32, U8, I32, BOOL = (np.dtype(t) for t in ("float32", "uint8", "int32", "bool"))


# ---------------------------------------------------------------------------- audio

@_register("logmel", "1.0.0", ("audio",),
           {"logmel": ((400, 64), F32), "logmel_mask": ((400,), BOOL)})
def _logmel(media: ClipMedia) -> dict[str, np.ndarray]:
  """Log-mel: audio resampled to 16 kHz, 25 ms Hann window (n_fft 512), 10 ms hop,
  64 Slaney mel bands over 0-8 kHz, natural log of power + 1e-6. Fixed 400 frames
  (4 s): longer clips keep their centre, shorter ones are padded at the end with
  the silence level log(1e-6); logmel_mask is True on real frames."""
  feats, mask = audio_lib.logmel_fixed(media.audio, media.sample_rate)
  return {"logmel": feats, "logmel_mask": mask}


@_register("mfcc", "1.0.0", ("audio",),
           {"mfcc": ((180, 20), F32), "mfcc_mask": ((180,), BOOL)})
def _mfcc(media: ClipMedia) -> dict[str, np.ndarray]:
  """S1's 180x20 'spectrogram' (S3 adds a channel axis): 20 MFCCs at 16 kHz, 25 ms
  window, 20 ms hop so 180 frames cover 3.6 s (paper: features padded/trimmed to a
  fixed length, parameters unstated). 64 mel bands, dB with an 80 dB floor, DCT-II.
  Longer clips keep their centre; shorter ones are zero-padded at the end, as
  Keras padding does; mfcc_mask is True on real frames."""
  feats, mask = audio_lib.mfcc_fixed(media.audio, media.sample_rate)
  return {"mfcc": feats, "mfcc_mask": mask}


@_register("handcrafted162", "1.0.0", ("audio",),
           {"handcrafted162": ((162,), F32), "pitch_energy_stats": ((8,), F32)})
def _handcrafted162(media: ClipMedia) -> dict[str, np.ndarray]:
  """The common 162-vector (S2's 162-long audio input): time means of ZCR (1),
  chroma STFT (12), 20 MFCCs, RMS (1) and 128-band mel power, at 22,050 Hz with
  n_fft 2048 and hop 512 (librosa's defaults; chroma without tuning estimation;
  mel power unscaled). pitch_energy_stats: F0 from the autocorrelation maximum
  (65-500 Hz, voiced = normalised peak >= 0.5 and energy >= 5% of the loudest
  frame) mean/std/min/max over voiced frames (zeros if none), then frame RMS
  mean/std/min/max."""
  vector, stats = audio_lib.handcrafted(media.audio, media.sample_rate)
  return {"handcrafted162": vector, "pitch_energy_stats": stats}


# ---------------------------------------------------------------------------- video

def _frames_and_boxes(media: ClipMedia) -> tuple[np.ndarray, np.ndarray | None]:
  """Frames checked once up front; boxes are checked against them where cropped."""
  return video_lib.validate_frames(media.frames), media.face_boxes


@_register("frames3d_gray_80x70x30", "1.0.0", ("video",),
           {"frames3d": ((30, 80, 70, 1), U8), "frames3d_mask": ((30,), BOOL)})
def _frames3d(media: ClipMedia) -> dict[str, np.ndarray]:
  """S1's 3-D CNN input: the centre 3 s of the clip (leading/trailing frames
  dropped), 30 frames sampled evenly in it (one per fps/10 frames), face-cropped
  (box + 15% margin), grayscale, resized to 80 high x 70 wide. A clip shorter than
  3 s is sampled at the same step from its start and padded by repeating its last
  sampled frame; frames3d_mask is True on real frames."""
  frames, boxes = _frames_and_boxes(media)
  idx, mask = video_lib.centre_window_plan(frames.shape[0], media.fps)
  crops = video_lib.gather_crops(frames, boxes, idx, size=(80, 70), gray=True)
  return {"frames3d": crops, "frames3d_mask": mask}


@_register("frames2d_64", "1.0.0", ("video",),
           {"frames2d": ((24, 64, 64, 3), U8), "frames2d_mask": ((24,), BOOL)})
def _frames2d(media: ClipMedia) -> dict[str, np.ndarray]:
  """S3's frame CNN input: every 5th frame, face-cropped (box + 15% margin), RGB
  64x64 (scaling to [0, 1] is left to the model). Fixed 24 frames: the centre 24
  when there are more, zero frames with frames2d_mask False when fewer (the paper
  keeps all frames as separate samples; the mask says which exist)."""
  frames, boxes = _frames_and_boxes(media)
  idx, mask = video_lib.every_nth_plan(frames.shape[0])
  crops = video_lib.gather_crops(frames, boxes, idx, size=(64, 64))
  return {"frames2d": crops, "frames2d_mask": mask}


@_register("stip", "1.0.0", ("video",),
           {"stip": ((162,), F32), "stip_count": ((), I32)})
def _stip(media: ClipMedia) -> dict[str, np.ndarray]:
  """S2's video features: Harris-3D space-time interest points (Laptev) on
  grayscale 64x64 face crops sampled at ~15 fps (centre 48 frames), standardised
  per clip, sigma^2 = 2, tau^2 = 2, s = 2, k = 0.005, 3x5x5 local maxima of H
  above 1e-8 (static scenes and constant-velocity motion give none). Reduced to
  the audio vector's length, 162, as the mean over the 256 strongest points of
  Laptev's HOG/HOF descriptor (3x3x2 cells of 6x6 pixels x 3 frames, 4 gradient +
  5 Farneback-flow bins each, HOG and HOF parts L2-normalised per point); zeros
  when no point is found or the clip gives fewer than 3 frames. stip_count is the
  number of points found."""
  frames, boxes = _frames_and_boxes(media)
  idx = stip_lib.stip_frame_plan(frames.shape[0], media.fps)
  gray = video_lib.gather_crops(frames, boxes, idx, size=(64, 64), gray=True)[..., 0]
  vector, count = stip_lib.stip_features(gray)
  return {"stip": vector, "stip_count": np.asarray(count, dtype=np.int32)}


# ---------------------------------------------------------------------- audio-visual

@_register("keyframe_mel", "1.0.0", ("audio", "video"),
           {"keyframe": ((96, 96, 3), U8), "keyframe_index": ((), I32),
            "mel_image": ((128, 128), F32)})
def _keyframe_mel(media: ClipMedia) -> dict[str, np.ndarray]:
  """S5's two inputs. Key frame: on 96x96 RGB face crops, keep frames with at least
  median LUV change from the previous frame, drop dark frames (< 80% of the
  brightest), keep high-entropy (>= 90% of the best) and high-contrast (gray std
  >= 70% of the best) frames, k-means (k = 3) them on gray histograms and take
  the sharpest cluster representative (variance of the Laplacian). Mel image: 16 kHz, n_fft
  1024, hop 256, 128 mels, dB with an 80 dB floor, the whole clip resized in time
  to 128 columns, min-max scaled to [0, 1] per clip (low frequencies in row 0)."""
  frames, boxes = _frames_and_boxes(media)
  crops = crop_to_boxes(frames, boxes, size=(96, 96))
  index = int(keyframe_lib.select_keyframes(crops, n=1)[0])
  image = audio_lib.mel_image(media.audio, media.sample_rate)
  return {"keyframe": crops[index], "keyframe_index": np.asarray(index, dtype=np.int32),
          "mel_image": image}


@_register("snippets", "1.0.0", ("audio", "video"),
           {"video_snippets": ((4, 8, 112, 112, 3), U8),
            "audio_snippets": ((4, 64, 64), F32),
            "snippet_times": ((4, 2), F32)})
def _snippets(media: ClipMedia) -> dict[str, np.ndarray]:
  """S4's paired snippets: the clip is cut into 4 equal time segments covering it;
  each video snippet is 8 frames spread evenly in its segment, face-cropped, RGB
  112x112; each audio snippet is the same span of the clip's log-mel (16 kHz,
  25 ms / 10 ms, 64 mels, computed once), resized to 64 frames (64 mels x 64).
  Audio shorter than the video is padded with the silence level. snippet_times
  holds each segment's (start, end) in seconds."""
  frames, boxes = _frames_and_boxes(media)
  idx, times = video_lib.snippet_plan(frames.shape[0], media.fps)
  video = video_lib.gather_crops(frames, boxes, idx, size=(112, 112))

  y = audio_lib.resample(media.audio, media.sample_rate, 16000)
  mel = audio_lib.log_mel(y, 16000)                     # (64, frames), 100 frames/s
  silence = float(np.log(audio_lib.LOG_FLOOR))
  audio = np.empty((len(times), 64, 64), dtype=np.float32)
  for i, (start, end) in enumerate(times):
    first = int(round(start * 100.0))                   # 10 ms hop: 100 frames/s
    stop = max(first + 1, int(round(end * 100.0)))
    span = np.full((64, stop - first), silence, dtype=np.float32)
    available = mel[:, first:min(stop, mel.shape[1])]
    span[:, :available.shape[1]] = available
    audio[i] = audio_lib.resize_time(span, 64)
  return {"video_snippets": video, "audio_snippets": audio, "snippet_times": times}
