"""Named, versioned feature sets: one per published system's input.

A `FeatureSet` turns a decoded clip (`ClipMedia`) into a dict of fixed-shape
arrays described by its `spec`, so datasets can be written once and models can
be built from the spec. Bump a set's `version` whenever its output changes, so
cached features computed by an older version are not mixed with new ones.

A name may have several registered versions (`FEATURE_SET_VERSIONS`); the newest
is the one `FEATURE_SETS` and `get_feature_set(name)` give, and so the one
`prepare` writes and `predict` computes. Older versions stay computable by
`get_feature_set(name, version)` (data prepared with them stays readable: it is
read from its own version directory). The face-cropped sets: 1.0.0 crops the
Haar box + 15 %; 2.0.0 crops aligned to BlazeFace's eye landmarks
(`video.align_to_eyes`). `FeatureSet.face_detector` names the detector a set's
crops need, and a clip tracked by another detector is refused.
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

__all__ = ["ClipMedia", "FeatureSet", "FEATURE_SETS", "FEATURE_SET_VERSIONS",
           "get_feature_set", "crop_to_boxes"]

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
  face_landmarks: np.ndarray | None = None  # (T, K, 2) float32 (BlazeFace); None for Haar
  face_detector: str | None = None       # the detector that made the boxes; None = unknown


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
  face_detector: str | None = None  # the detector its face crops need (face.DETECTORS)


def _checked(name: str, modalities: tuple[str, ...], spec: Spec,
             fn: Callable[[ClipMedia], dict[str, np.ndarray]],
             face_detector: str | None = None
             ) -> Callable[[ClipMedia], dict[str, np.ndarray]]:
  """Wraps a set's function: modality check first, bad input as InputError, and a
  spec check after (a mismatch is a bug in the set, so it is not an InputError).
  Boxes from another detector than the set's are refused (a RuntimeError: the
  caller decoded with the wrong detector), so versions are never mixed."""

  def compute(media: ClipMedia) -> dict[str, np.ndarray]:
    if "audio" in modalities and (media.audio is None or media.sample_rate is None):
      raise MissingModalityError(media.clip_id, "audio")
    if "video" in modalities and media.frames is None:
      raise MissingModalityError(media.clip_id, "video")
    if (face_detector and media.face_boxes is not None and media.face_detector
        and media.face_detector != face_detector):
      raise RuntimeError(f"{name} crops {face_detector} faces but {media.clip_id} was "
                         f"tracked with {media.face_detector}: decode it with "
                         f"detector={face_detector!r}")
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


FEATURE_SETS: dict[str, FeatureSet] = {}                     # name -> newest version
FEATURE_SET_VERSIONS: dict[str, dict[str, FeatureSet]] = {}  # name -> version -> set


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in version.split("."))


def _register(name: str, version: str, modalities: tuple[str, ...], spec: Spec,
              face_detector: str | None = None, doc: str | None = None):
  assert modalities and set(modalities) <= set(MODALITIES), modalities

  def decorator(fn):
    description = doc if doc is not None else (fn.__doc__ or "")
    fs = FeatureSet(
        name=name, version=version, description=" ".join(description.split()),
        modalities=modalities, spec=spec,
        compute=_checked(name, modalities, spec, fn, face_detector),
        face_detector=face_detector)
    versions = FEATURE_SET_VERSIONS.setdefault(name, {})
    assert version not in versions, (name, version)
    versions[version] = fs
    FEATURE_SETS[name] = versions[max(versions, key=_version_key)]
    return fn
  return decorator


def get_feature_set(name: str, version: str | None = None) -> FeatureSet:
  """The set of that name, its newest version unless `version` is given."""
  try:
    versions = FEATURE_SET_VERSIONS[name]
  except KeyError:
    raise ValueError(f"unknown feature set {name!r}; known: "
                     f"{', '.join(sorted(FEATURE_SETS))}") from None
  if version is None:
    return FEATURE_SETS[name]
  try:
    return versions[version]
  except KeyError:
    raise ValueError(f"feature set {name!r} has no version {version!r}; known: "
                     f"{', '.join(sorted(versions, key=_version_key))}") from None


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


# The versions of every face-cropped set: (version, face detector, aligned crops),
# and how each version's description says it crops.
FACE_VERSIONS = (("1.0.0", "haar", False), ("2.0.0", "blazeface", True))
_CROP_WORDS = {
    False: "face-cropped (Haar box + 15% margin)",
    True: ("face-cropped aligned to BlazeFace's eyes (rotated level, 30% of the crop's "
           "width apart, centred at 40% of its height)"),
}


def _eyes(media: ClipMedia, align: bool) -> np.ndarray | None:
  """The tracked eyes (T, 2, 2) for aligned crops; None for box crops and for
  untracked clips (no boxes: whole frames, as for every version)."""
  if not align or media.face_boxes is None:
    return None
  if media.face_landmarks is None:
    raise ValueError("aligned crops need the face track's eye landmarks (BlazeFace); "
                     "this clip has boxes only")
  from input_pipeline import face as face_lib  # pylint: disable=g-import-not-at-top
  return np.asarray(media.face_landmarks)[:, [face_lib.RIGHT_EYE, face_lib.LEFT_EYE]]


def _crops(media: ClipMedia, indices: np.ndarray, size: tuple[int, int], align: bool,
           gray: bool = False) -> np.ndarray:
  frames, boxes = _frames_and_boxes(media)
  return video_lib.gather_crops(frames, boxes, indices, size=size, gray=gray,
                                eyes=_eyes(media, align))


def _register_face_set(name: str, modalities: tuple[str, ...], spec: Spec):
  """Registers `fn(media, align)` once per FACE_VERSIONS entry; `{crop}` in its
  docstring becomes that version's way of cropping."""

  def decorator(fn):
    for version, detector, align in FACE_VERSIONS:
      def compute(media: ClipMedia, _align=align) -> dict[str, np.ndarray]:
        return fn(media, _align)
      _register(name, version, modalities, spec, face_detector=detector,
                doc=(fn.__doc__ or "").replace("{crop}", _CROP_WORDS[align]))(compute)
    return fn
  return decorator


@_register_face_set("frames3d_gray_80x70x30", ("video",),
                    {"frames3d": ((30, 80, 70, 1), U8), "frames3d_mask": ((30,), BOOL)})
def _frames3d(media: ClipMedia, align: bool) -> dict[str, np.ndarray]:
  """S1's 3-D CNN input: the centre 3 s of the clip (leading/trailing frames
  dropped), 30 frames sampled evenly in it (one per fps/10 frames), {crop},
  grayscale, 80 high x 70 wide. A clip shorter than
  3 s is sampled at the same step from its start and padded by repeating its last
  sampled frame; frames3d_mask is True on real frames."""
  idx, mask = video_lib.centre_window_plan(len(video_lib.validate_frames(media.frames)), media.fps)
  crops = _crops(media, idx, (80, 70), align, gray=True)
  return {"frames3d": crops, "frames3d_mask": mask}


@_register_face_set("frames2d_64", ("video",),
                    {"frames2d": ((24, 64, 64, 3), U8), "frames2d_mask": ((24,), BOOL)})
def _frames2d(media: ClipMedia, align: bool) -> dict[str, np.ndarray]:
  """S3's frame CNN input: every 5th frame, {crop}, RGB
  64x64 (scaling to [0, 1] is left to the model). Fixed 24 frames: the centre 24
  when there are more, zero frames with frames2d_mask False when fewer (the paper
  keeps all frames as separate samples; the mask says which exist)."""
  idx, mask = video_lib.every_nth_plan(len(video_lib.validate_frames(media.frames)))
  crops = _crops(media, idx, (64, 64), align)
  return {"frames2d": crops, "frames2d_mask": mask}


@_register_face_set("stip", ("video",), {"stip": ((162,), F32), "stip_count": ((), I32)})
def _stip(media: ClipMedia, align: bool) -> dict[str, np.ndarray]:
  """S2's video features: Harris-3D space-time interest points (Laptev) on
  grayscale 64x64 crops ({crop}) sampled at ~15 fps (centre 48 frames), standardised
  per clip, sigma^2 = 2, tau^2 = 2, s = 2, k = 0.005, 3x5x5 local maxima of H
  above 1e-8 (static scenes and constant-velocity motion give none). Reduced to
  the audio vector's length, 162, as the mean over the 256 strongest points of
  Laptev's HOG/HOF descriptor (3x3x2 cells of 6x6 pixels x 3 frames, 4 gradient +
  5 Farneback-flow bins each, HOG and HOF parts L2-normalised per point); zeros
  when no point is found or the clip gives fewer than 3 frames. stip_count is the
  number of points found."""
  idx = stip_lib.stip_frame_plan(len(video_lib.validate_frames(media.frames)), media.fps)
  gray = _crops(media, idx, (64, 64), align, gray=True)[..., 0]
  vector, count = stip_lib.stip_features(gray)
  return {"stip": vector, "stip_count": np.asarray(count, dtype=np.int32)}


# ---------------------------------------------------------------------- audio-visual

@_register_face_set("keyframe_mel", ("audio", "video"),
                    {"keyframe": ((96, 96, 3), U8), "keyframe_index": ((), I32),
                     "mel_image": ((128, 128), F32)})
def _keyframe_mel(media: ClipMedia, align: bool) -> dict[str, np.ndarray]:
  """S5's two inputs. Key frame: on 96x96 RGB crops ({crop}), keep frames with at least
  median LUV change from the previous frame, drop dark frames (< 80% of the
  brightest), keep high-entropy (>= 90% of the best) and high-contrast (gray std
  >= 70% of the best) frames, k-means (k = 3) them on gray histograms and take
  the sharpest cluster representative (variance of the Laplacian). Mel image: 16 kHz, n_fft
  1024, hop 256, 128 mels, dB with an 80 dB floor, the whole clip resized in time
  to 128 columns, min-max scaled to [0, 1] per clip (low frequencies in row 0)."""
  crops = _crops(media, np.arange(len(video_lib.validate_frames(media.frames))), (96, 96), align)
  index = int(keyframe_lib.select_keyframes(crops, n=1)[0])
  image = audio_lib.mel_image(media.audio, media.sample_rate)
  return {"keyframe": crops[index], "keyframe_index": np.asarray(index, dtype=np.int32),
          "mel_image": image}


@_register_face_set("snippets", ("audio", "video"),
                    {"video_snippets": ((4, 8, 112, 112, 3), U8),
                     "audio_snippets": ((4, 64, 64), F32),
                     "snippet_times": ((4, 2), F32)})
def _snippets(media: ClipMedia, align: bool) -> dict[str, np.ndarray]:
  """S4's paired snippets: the clip is cut into 4 equal time segments covering it;
  each video snippet is 8 frames spread evenly in its segment, {crop}, RGB
  112x112; each audio snippet is the same span of the clip's log-mel (16 kHz,
  25 ms / 10 ms, 64 mels, computed once), resized to 64 frames (64 mels x 64).
  Audio shorter than the video is padded with the silence level. snippet_times
  holds each segment's (start, end) in seconds."""
  idx, times = video_lib.snippet_plan(len(video_lib.validate_frames(media.frames)), media.fps)
  video = _crops(media, idx, (112, 112), align)

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
