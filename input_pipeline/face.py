"""Face detection and tracking shared by `prepare` and `predict`.

One detector (OpenCV's Haar frontal-face cascade) is used everywhere so training
crops and serving crops come from the same boxes. Tracking turns sparse, noisy
per-frame detections into one box per frame and records where each box came from.
A clip whose face is never found raises NoFaceError (an InputError): a centre crop
of background would be silently trained or predicted on.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading

import numpy as np

from input_pipeline.errors import InputError

Box = tuple[float, float, float, float]  # (x, y, w, h) in pixels of the input frame

DETECTED = 0   # a detection on this frame (after temporal smoothing)
LAST_BOX = 1   # held or interpolated from detections on other frames

_CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector:
  """Largest frontal face per frame, via OpenCV's Haar cascade.

  The cascade is loaded on first use and dropped when pickled, so a detector can
  be handed to multiprocessing workers (cv2 objects cannot be pickled).
  """

  def __init__(self, max_side: int = 240, scale_factor: float = 1.1,
               min_neighbors: int = 5, min_size_frac: float = 0.12):
    # Detection runs on a copy this small: 240 px keeps every synthetic and
    # fixture face found at half the cost of 320 px (160 px starts missing).
    self.max_side = max_side
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_size_frac = min_size_frac  # of the shorter side: rejects tiny blobs
    self._cascade = None
    self._clones: list[FaceDetector] = []

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cascade"] = None
    state["_clones"] = []
    return state

  def __setstate__(self, state):
    self.__dict__.update({"_cascade": None, "_clones": [], **state})

  def clones(self, n: int) -> list[FaceDetector]:
    """`n` detectors with these parameters and cascades of their own (for other
    threads), kept and reused by later calls."""
    while len(self._clones) < n:
      self._clones.append(copy.copy(self))  # __getstate__: no shared cascade.
    return self._clones[:n]

  def _load(self):
    if self._cascade is None:
      import cv2  # pylint: disable=g-import-not-at-top
      path = os.path.join(cv2.data.haarcascades, _CASCADE_FILE)
      cascade = cv2.CascadeClassifier(path)
      if cascade.empty():
        raise RuntimeError(f"cannot load Haar cascade {path}")
      self._cascade = cascade
    return self._cascade

  def detect(self, frame_rgb: np.ndarray) -> Box | None:
    """The largest face in an RGB uint8 frame (H, W, 3), or None."""
    import cv2  # pylint: disable=g-import-not-at-top
    frame = np.asarray(frame_rgb)
    if frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    cascade = self._load()
    h, w = frame.shape[:2]
    scale = min(1.0, self.max_side / max(h, w))
    gray = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
      gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                        interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(20, int(self.min_size_frac * min(gray.shape)))
    faces = cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                     minNeighbors=self.min_neighbors,
                                     minSize=(min_side, min_side))
    if len(faces) == 0:
      return None
    x, y, bw, bh = max(faces, key=lambda f: f[2] * f[3])
    return (float(x / scale), float(y / scale), float(bw / scale), float(bh / scale))


class NoFaceError(InputError):
  """No detection on any searched frame of a clip: there is nothing to crop, and
  a centre crop would feed the model background as if it were a face."""

  def __init__(self, path: str | os.PathLike | None, searched: int, n_frames: int):
    self.searched, self.n_frames = searched, n_frames
    where = (f"{searched} frames" if searched == n_frames
             else f"{searched} frames searched (of {n_frames})")
    super().__init__(path, f"no face found in any of {where}")


@dataclasses.dataclass
class FaceTrack:
  """One box per frame plus where it came from (DETECTED / LAST_BOX)."""
  boxes: np.ndarray    # (T, 4) float32, (x, y, w, h)
  source: np.ndarray   # (T,) int8
  hit_rate: float      # fraction of attempted frames with a detection (> 0)


def _running(values: np.ndarray, window: int, reduce) -> np.ndarray:
  """Centred running `reduce` over axis 0 with a window clipped at the ends."""
  n = len(values)
  half = window // 2
  return np.stack([reduce(values[max(0, i - half):i + half + 1], axis=0)
                   for i in range(n)])


def track_from_detections(n_frames: int, indices: np.ndarray, boxes: list[Box | None],
                          median_window: int = 5, mean_window: int = 3,
                          path: str | os.PathLike | None = None) -> FaceTrack:
  """Builds a per-frame track from detections on the frames `indices`; raises
  NoFaceError, naming `path`, when none of them has a detection.

  A running median over consecutive detections rejects single-frame outliers
  (a false hit on the background, a box that jumps), and a short running mean
  then removes the cascade's pixel jitter; frames between detections are linearly
  interpolated and frames before the first / after the last hold the nearest box.
  """
  indices = np.asarray(indices, dtype=np.int64)
  hits = [(int(i), b) for i, b in zip(indices, boxes) if b is not None]
  if not hits:
    raise NoFaceError(path, len(indices), n_frames)
  hit_rate = len(hits) / len(indices)
  source = np.full((n_frames,), LAST_BOX, dtype=np.int8)
  hit_idx = np.array([i for i, _ in hits])
  raw = np.array([b for _, b in hits], dtype=np.float64)
  # Smooth centre and size rather than corners, so size noise does not move the centre.
  cs = np.concatenate([raw[:, :2] + raw[:, 2:] / 2.0, raw[:, 2:]], axis=1)
  cs = _running(cs, median_window, np.median)
  cs = _running(cs, mean_window, np.mean)
  per_frame = np.stack([np.interp(np.arange(n_frames), hit_idx, cs[:, k])
                        for k in range(4)], axis=1)
  boxes_out = np.concatenate([per_frame[:, :2] - per_frame[:, 2:] / 2.0,
                              per_frame[:, 2:]], axis=1).astype(np.float32)
  source[hit_idx] = DETECTED
  return FaceTrack(boxes_out, source, float(hit_rate))


def detect_frames(detector: FaceDetector, frames: np.ndarray, indices: np.ndarray,
                  threads: int = 1) -> list[Box | None]:
  """`detector.detect` on `frames[i]` for each of `indices`, in that order.

  With `threads` > 1 the frames are spread over a thread pool: OpenCV releases
  the GIL inside its calls, so detections of different frames run on different
  cores. Each running detection holds a detector of its own (`detector` or one of
  its clones: same parameters, own cascade, since a CascadeClassifier is not safe
  to share between threads), and every frame is detected exactly as it is
  sequentially, so the boxes are identical. Not for concurrent calls on one
  `detector` (neither is `detector.detect`).
  """
  indices = [int(i) for i in indices]
  threads = max(1, min(int(threads), len(indices)))
  if threads == 1:
    return [detector.detect(frames[i]) for i in indices]
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import queue  # pylint: disable=g-import-not-at-top
  free: queue.SimpleQueue[FaceDetector] = queue.SimpleQueue()
  for d in (detector, *detector.clones(threads - 1)):
    free.put(d)

  def detect(i: int) -> Box | None:
    d = free.get()  # One per worker thread: never waits.
    try:
      return d.detect(frames[i])
    finally:
      free.put(d)

  with concurrent.futures.ThreadPoolExecutor(threads, "face-detect") as pool:
    return list(pool.map(detect, indices))


_DEFAULT = threading.local()


def default_detector() -> FaceDetector:
  """The calling thread's default-parameter detector, kept so the cascade (~15 ms
  to parse) is loaded once per thread, not once per clip."""
  detector = getattr(_DEFAULT, "detector", None)
  if detector is None:
    detector = _DEFAULT.detector = FaceDetector()
  return detector


def track_faces(frames: np.ndarray, detector: FaceDetector | None = None,
                every: int = 1, threads: int = 1,
                path: str | os.PathLike | None = None) -> FaceTrack:
  """Detects on every `every`-th frame (and the last) and tracks one box per frame.
  Raises NoFaceError naming `path` (the clip's file) when no searched frame has a face.

  `threads` > 1 runs the detections concurrently (see `detect_frames`); the track
  is identical. The default, 1, suits `prepare`, whose worker processes already
  fill the cores; `predict` handles one clip and passes the core count."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"expected frames (T, H, W, 3), got shape {frames.shape}")
  if every < 1:
    raise ValueError(f"every must be >= 1, got {every}")
  if threads < 1:
    raise ValueError(f"threads must be >= 1, got {threads}")
  detector = detector or default_detector()
  n = len(frames)
  if n == 0:
    raise ValueError("no frames to track")
  indices = np.arange(0, n, every)
  if indices[-1] != n - 1:
    indices = np.append(indices, n - 1)  # anchor the tail of the clip too
  boxes = detect_frames(detector, frames, indices, threads)
  return track_from_detections(n, indices, boxes, path=path)
