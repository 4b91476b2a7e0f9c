"""Decode a clip once, track its face once, then compute feature sets on it or on
time windows cut from it.

The one path from a media file to model inputs, for `prepare` (one take, whole
clip) and `predict` (one file, sliding windows): a served clip is decoded,
face-tracked and featurised exactly as training data was. Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from input_pipeline import features as features_lib
from input_pipeline.errors import InputError, MissingModalityError

# Faces move little in 100 ms, and the tracker interpolates between detections.
FACE_DETECT_EVERY = 3
# Frames are decoded downscaled to this longest side: every feature set crops a
# face to at most 112 px, and 1280x720 RGB frames would cost 300 MB per clip.
VIDEO_MAX_SIDE = 480
NO_VIDEO = -1.0  # face_hit_rate of a clip without video frames

WAV_EXTENSIONS = (".wav", ".wave")

# The span of a clip that each feature set looks at (seconds), where it has one:
# the default window of `predict`. Sets that summarise a whole clip of any length
# (handcrafted162, keyframe_mel, snippets) take DEFAULT_WINDOW_SECONDS.
NATURAL_SECONDS = {
    "logmel": 4.0,                     # 400 frames x 10 ms
    "mfcc": 3.6,                       # 180 frames x 20 ms
    "frames3d_gray_80x70x30": 3.0,     # the centre 3 s
    "frames2d_64": 4.0,                # 24 frames, every 5th, at 30 fps
    "stip": 3.2,                       # 48 frames at ~15 fps
}
DEFAULT_WINDOW_SECONDS = 3.0
# A tail this short (under a frame at 30 fps, a few ms of audio) gets no window of
# its own: it is rounding in the decoded length, not content.
TAIL_TOLERANCE = 0.01


def natural_window(feature_sets: Sequence[str]) -> float:
  """The longest natural span of the sets: every set then sees all it would see
  in a training clip of that length."""
  return max(NATURAL_SECONDS.get(name, DEFAULT_WINDOW_SECONDS) for name in feature_sets)


def modalities_of(feature_sets: Sequence[str]) -> tuple[str, ...]:
  needed = {m for name in feature_sets for m in features_lib.get_feature_set(name).modalities}
  return tuple(m for m in features_lib.MODALITIES if m in needed)


@dataclasses.dataclass(frozen=True)
class DecodedClip:
  """A clip decoded once: what the features need plus the face-track statistics
  `prepare` records. Audio fields are None without audio, video fields without video."""
  clip_id: str
  audio: np.ndarray | None = None        # float32 mono in [-1, 1], the file's own rate
  sample_rate: int | None = None
  frames: np.ndarray | None = None       # uint8 RGB (T, H, W, 3), at most VIDEO_MAX_SIDE
  fps: float | None = None
  face_boxes: np.ndarray | None = None   # (T, 4) float32
  face_hit_rate: float = NO_VIDEO
  face_fallback_frames: int = 0
  # Always False: a clip with no face at all raises NoFaceError instead of being
  # centre-cropped. Kept because prepare stores it in every example (the builders'
  # metadata), and dropping it would change every feature set's output spec.
  face_centre_fallback: bool = False
  video_file: str | None = None          # where the frames came from, for errors
  face_landmarks: np.ndarray | None = None  # (T, K, 2) float32 (BlazeFace only)
  face_detector: str | None = None       # which detector made the track
  faces_tracked: int = 0                 # faces seen over time; > 1 is reported

  @property
  def duration(self) -> float:
    """Seconds covered by the longer of the decoded streams."""
    spans = [0.0]
    if self.audio is not None and self.sample_rate:
      spans.append(len(self.audio) / self.sample_rate)
    if self.frames is not None and self.fps:
      spans.append(len(self.frames) / self.fps)
    return max(spans)

  def media(self) -> features_lib.ClipMedia:
    return features_lib.ClipMedia(clip_id=self.clip_id, audio=self.audio,
                                  sample_rate=self.sample_rate, frames=self.frames,
                                  fps=self.fps, face_boxes=self.face_boxes,
                                  face_landmarks=self.face_landmarks,
                                  face_detector=self.face_detector)

  def window(self, start: float, seconds: float) -> features_lib.ClipMedia:
    """[start, start + seconds) of the clip; the boxes are the whole-clip track's,
    so a window's face crop does not depend on where the window falls."""
    audio = frames = boxes = marks = None
    if self.audio is not None:
      a0 = int(round(start * self.sample_rate))
      audio = self.audio[a0:a0 + int(round(seconds * self.sample_rate))]
      if audio.size == 0:  # A window past the audio's end (video a bit longer).
        audio = np.zeros((1,), np.float32)
    if self.frames is not None:
      f0 = min(int(round(start * self.fps)), len(self.frames) - 1)
      f1 = max(f0 + 1, int(round((start + seconds) * self.fps)))
      frames = self.frames[f0:f1]
      boxes = None if self.face_boxes is None else self.face_boxes[f0:f1]
      marks = None if self.face_landmarks is None else self.face_landmarks[f0:f1]
    return features_lib.ClipMedia(
        clip_id=f"{self.clip_id}@{start:.2f}s", audio=audio,
        sample_rate=self.sample_rate if audio is not None else None,
        frames=frames, fps=self.fps if frames is not None else None, face_boxes=boxes,
        face_landmarks=marks, face_detector=self.face_detector)


def decode(clip_id: str, *, audio_file: str | None = None, video_file: str | None = None,
           need_audio: bool = False, need_video: bool = False, faces: bool = True,
           max_side: int = VIDEO_MAX_SIDE, threads: int = 1,
           detector: str | None = None) -> DecodedClip:
  """Decodes the needed streams and (with `faces`) tracks the face over every frame.

  Without `need_video` no frame is decoded and no face tracked, so audio-only
  feature sets never fail for want of a face. `threads` > 1 decodes audio and
  video at once (two ffmpeg processes) and runs the face detections concurrently;
  the result is identical. The default, 1, suits `prepare`, whose worker
  processes already fill the cores. `detector` names the face detector
  (face.DETECTORS; default face.DEFAULT_DETECTOR, BlazeFace, which the newest
  feature sets crop with; a set's own is `FeatureSet.face_detector`).

  Raises InputError (MissingModalityError for an absent stream, NoFaceError for a
  video without a face on any searched frame) naming the file."""
  from input_pipeline import media  # pylint: disable=g-import-not-at-top
  if need_audio and audio_file is None:
    raise InputError(video_file or clip_id, "no audio file for this take")
  if need_video and video_file is None:
    raise InputError(audio_file or clip_id, "no video file for this take")
  audio = sample_rate = frames = fps = None
  pending_audio = None
  if need_audio and need_video and threads > 1:
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    pool = concurrent.futures.ThreadPoolExecutor(1, "decode-audio")
    pending_audio = pool.submit(media.read_audio, audio_file)
    pool.shutdown(wait=False)
  elif need_audio:
    audio, sample_rate = media.read_audio(audio_file)
  try:
    if need_video:
      frames, fps = media.read_video(video_file, max_side=max_side)
      if not fps or fps <= 0:
        raise InputError(video_file, "video stream has no frame rate")
  finally:
    if pending_audio is not None:
      # The audio's error first, as sequential decoding would raise it.
      audio, sample_rate = pending_audio.result()
  clip = DecodedClip(clip_id=clip_id, audio=audio, sample_rate=sample_rate, frames=frames,
                     fps=fps, video_file=video_file if frames is not None else None)
  return track_faces(clip, threads=threads, detector=detector) if faces else clip


def track_faces(clip: DecodedClip, every: int = FACE_DETECT_EVERY,
                threads: int = 1, detector: str | None = None) -> DecodedClip:
  """The clip with its face track over every frame (unchanged without video);
  `threads` > 1 runs the detections concurrently, with the same result.

  Raises NoFaceError (an InputError naming the video file) when no searched frame
  has a face: every video feature set crops faces, and a clip without one is bad
  input, skipped and reported by prepare and refused by predict. Frames without a
  detection in a clip that has some take the boxes around them (face.py).
  With two or more faces tracked over time the largest is kept, and a warning
  names the file (`faces_tracked` holds the count)."""
  if clip.frames is None:
    return clip
  from input_pipeline import face as face_lib  # cv2: imported only when tracking.
  where = clip.video_file or clip.clip_id
  track = face_lib.track_faces(clip.frames, detector=detector, every=every, threads=threads,
                               path=where)
  if track.n_faces > 1:
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger(__name__).warning(
        "%s: %d faces tracked; using the largest", where, track.n_faces)
  return dataclasses.replace(
      clip, face_boxes=track.boxes, face_hit_rate=float(track.hit_rate),
      face_fallback_frames=int(np.sum(track.source != face_lib.DETECTED)),
      face_centre_fallback=False, face_landmarks=track.landmarks,
      face_detector=track.detector, faces_tracked=int(track.n_faces))


def decode_file(path: str, modalities: Sequence[str], *, faces: bool = True,
                threads: int = 1) -> DecodedClip:
  """One user file (wav, or a container with audio and/or video) for `predict`.

  The streams are checked before anything is decoded, so a model that needs a
  stream the file lacks fails in milliseconds with a one-line reason."""
  from input_pipeline import media
  path = os.fspath(path)
  is_wav = path.lower().endswith(WAV_EXTENSIONS)
  info = media.probe(path)  # Header only: empty, text and corrupt files stop here.
  has_audio, has_video = info.has_audio, info.has_video and not is_wav
  for modality, present in (("audio", has_audio), ("video", has_video)):
    if modality in modalities and not present:
      raise MissingModalityError(
          path, modality, f"the model needs {modality} but the file has no "
                          f"{modality} track")
  return decode(os.path.basename(path), audio_file=path,
                video_file=None if is_wav else path,
                need_audio="audio" in modalities, need_video="video" in modalities,
                faces=faces, threads=threads)


def compute_features(media: features_lib.ClipMedia,
                     feature_sets: Sequence[str]) -> dict[str, np.ndarray]:
  """Every set's arrays for one clip (or window), merged into one dict."""
  out: dict[str, np.ndarray] = {}
  for name in feature_sets:
    out.update(features_lib.get_feature_set(name).compute(media))
  return out


def window_starts(duration: float, window: float, hop: float) -> np.ndarray:
  """Start times of the windows: as many full windows as fit, `hop` apart from 0,
  then one more ending at the clip's end if the hop left a tail uncovered, so
  every second of the clip is in some window (4.1 s, window 3.6 s, hop 1 s: starts
  0 and 0.5). A clip shorter than one window gives one window at 0 (the feature
  sets pad)."""
  if not window > 0 or not hop > 0:
    raise ValueError(f"window and hop must be > 0, got {window} and {hop}")
  if duration <= window:
    return np.zeros((1,), np.float64)
  # The epsilon keeps 3.0 / 1.0 from landing just under an integer.
  n = 1 + math.floor((duration - window) / hop + 1e-9)
  starts = np.arange(n, dtype=np.float64) * hop
  if duration - (starts[-1] + window) > TAIL_TOLERANCE:
    starts = np.append(starts, duration - window)
  return starts
