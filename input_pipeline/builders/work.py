"""The per-take work of the local `prepare` path, in a module that imports no
TensorFlow Datasets: each spawned worker imports this (to unpickle its tasks),
and TFDS alone costs a second of CPU per worker, more than a few hundred audio
clips' features.
"""

from __future__ import annotations

import dataclasses
import os

from input_pipeline import clip as clip_lib
from input_pipeline import features as features_lib
from input_pipeline.errors import InputError


@dataclasses.dataclass(frozen=True)
class Take:
  """One recorded performance and the files that carry it."""
  take_id: str
  actor: int
  label: int
  emotion: str
  sex: str = "unknown"
  intensity: int = 0
  statement: int = 0
  repetition: int = 0
  audio_file: str | None = None        # a wav, or a container with an audio track
  video_file: str | None = None
  files: tuple[str, ...] = ()          # every file of the take, for the report


@dataclasses.dataclass(frozen=True)
class Skip:
  """A take or file that did not become an example, and why."""
  files: tuple[str, ...]
  reason: str
  take_id: str | None = None
  path: str | None = None    # the file the reason is about, where one is known

  def where(self) -> str:
    """What to name in a warning: the failing file, else the take's files."""
    return self.path or ", ".join(self.files) or self.take_id or "?"


def compute_example(take: Take, feature_set_name: str) -> tuple[str, dict | Skip]:
  """Decodes a take and computes one feature set. Runs in worker processes.

  Decoding and face tracking go through input_pipeline.clip, the path `predict`
  takes too, so a served clip is featurised exactly as a training one."""
  feature_set = features_lib.get_feature_set(feature_set_name)
  need_audio = "audio" in feature_set.modalities
  need_video = "video" in feature_set.modalities
  try:
    decoded = clip_lib.decode(take.take_id, audio_file=take.audio_file,
                              video_file=take.video_file, need_audio=need_audio,
                              need_video=need_video)
    values = feature_set.compute(decoded.media())
  except InputError as e:
    return take.take_id, Skip(take.files, e.cause if e.path else str(e), take.take_id,
                              e.path)
  except Exception as e:  # noqa: BLE001 - a broken clip must not end a 1440-clip build.
    return take.take_id, Skip(take.files, f"{type(e).__name__}: {' '.join(str(e).split())}",
                              take.take_id)
  audio, frames = decoded.audio, decoded.frames
  hit_rate = decoded.face_hit_rate
  fallback_frames = decoded.face_fallback_frames
  centre = decoded.face_centre_fallback
  # A modality this feature set does not decode is recorded as it is: checked
  # (header and packets, no decode) as the decoding path would check it, so a
  # truncated 01- mp4 beside a good 03- wav is has_video=False for `mfcc`, and an
  # mp4 without its audio track (a RAVDESS fixture) has_audio=False.
  has_audio = audio is not None or (not need_audio and _usable(take.audio_file, "audio"))
  has_video = frames is not None or (not need_video and _usable(take.video_file, "video"))
  example = {
      "clip_id": take.take_id,
      "take_id": take.take_id,
      "actor": take.actor,
      "sex": take.sex,
      "label": take.label,
      "emotion": take.emotion,
      "intensity": take.intensity,
      "statement": take.statement,
      "repetition": take.repetition,
      "has_audio": has_audio,
      "has_video": has_video,
      "source_files": ";".join(os.path.basename(f) for f in take.files),
      "face_hit_rate": hit_rate,
      "face_fallback_frames": fallback_frames,
      "face_centre_fallback": centre,
      **values,
  }
  return take.take_id, example


def _usable(path: str | None, modality: str) -> bool:
  from input_pipeline import media  # Imported here: heavy, worker-side.
  if path is None:
    return False
  try:
    media.check_stream(path, modality)
  except InputError:
    return False
  return True


def compute_task(task: tuple[int, Take, str]) -> tuple[int, dict | Skip]:
  """A pool task: (position, take, feature set) -> (position, example or Skip).
  The example travels back through the pool's pipe: no scratch file."""
  index, take, feature_set_name = task
  return index, compute_example(take, feature_set_name)[1]


def warm_constants(feature_set_name: str) -> dict:
  """The filterbanks and windows an audio-only set uses, built here once (the
  parent) by computing the set on a second of silence, for `init_worker`."""
  from input_pipeline.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  feature_set = features_lib.get_feature_set(feature_set_name)
  if tuple(feature_set.modalities) == ("audio",):
    feature_set.compute(features_lib.ClipMedia(
        clip_id="warm-up", audio=np.zeros((16000,), np.float32), sample_rate=16000))
  return audio_lib.constants()


def init_worker(constants: dict | None = None) -> None:
  """One OpenCV thread per worker (the pool already runs one process per core),
  and the parent's filterbanks and windows."""
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  if constants:
    from input_pipeline.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
    audio_lib.preload(constants)
