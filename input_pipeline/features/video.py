"""Video features on numpy arrays: face crops and the frame-index plans of the
fixed-length video sets (S1 3-D clips, S3 frames, S4 snippets).

Index plans are computed before any cropping, so only the frames a set keeps are
cropped and resized. Crops are either the face box plus a margin (the 1.0.0 sets)
or aligned to the eyes (the 2.0.0 sets: level eyes, fixed inter-ocular distance).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def validate_frames(frames: np.ndarray) -> np.ndarray:
  """Decoded video must be uint8 RGB (T, H, W, 3) with at least one frame."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
  if frames.shape[0] == 0:
    raise ValueError("video has no frames")
  if frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8, got {frames.dtype}")
  return frames


def full_frame_boxes(frames: np.ndarray) -> np.ndarray:
  """Boxes covering whole frames: the crop used when no face track is given."""
  t, h, w = frames.shape[:3]
  return np.tile(np.array([0.0, 0.0, w, h], dtype=np.float32), (t, 1))


def crop_to_boxes(frames: np.ndarray, boxes: np.ndarray | None,
                  size: tuple[int, int] = (64, 64), gray: bool = False,
                  margin: float = 0.15) -> np.ndarray:
  """Crops each frame to its box and resizes it to `size` = (height, width).

  A box is (x, y, w, h) in pixels. It is enlarged by `margin` of its width/height
  on every side (Haar boxes cut off the chin and forehead), then clipped to the
  image; a box entirely outside keeps at least the nearest pixel row/column. The
  crop is stretched, not letterboxed, and resized with INTER_AREA. `boxes=None`
  uses whole frames. Returns uint8 (T, h, w, 3), or (T, h, w, 1) when `gray`."""
  frames = validate_frames(frames)
  t, img_h, img_w = frames.shape[:3]
  boxes = full_frame_boxes(frames) if boxes is None else np.asarray(boxes, np.float64)
  if boxes.shape != (t, 4):
    raise ValueError(f"boxes must be ({t}, 4) to match the frames, got {boxes.shape}")
  if not np.all(np.isfinite(boxes)):
    raise ValueError("boxes have non-finite values")
  out_h, out_w = int(size[0]), int(size[1])
  x, y, bw, bh = boxes.T
  bw = np.maximum(bw, 1.0)
  bh = np.maximum(bh, 1.0)
  x0 = np.floor(x - margin * bw).astype(np.int64)
  y0 = np.floor(y - margin * bh).astype(np.int64)
  x1 = np.ceil(x + bw + margin * bw).astype(np.int64)
  y1 = np.ceil(y + bh + margin * bh).astype(np.int64)
  x0 = np.clip(x0, 0, img_w - 1)
  y0 = np.clip(y0, 0, img_h - 1)
  x1 = np.clip(x1, x0 + 1, img_w)
  y1 = np.clip(y1, y0 + 1, img_h)

  channels = 1 if gray else 3
  out = np.empty((t, out_h, out_w, channels), dtype=np.uint8)
  for i in range(t):
    crop = frames[i, y0[i]:y1[i], x0[i]:x1[i]]
    if gray:
      crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    resized = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_AREA)
    out[i] = resized.reshape(out_h, out_w, channels)
  return out


def centre_window_plan(n_frames: int, fps: float, seconds: float = 3.0,
                       n_out: int = 30) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices for S1: `n_out` frames evenly over the centre `seconds`.

  Sampling step is seconds * fps / n_out frames. A clip shorter than the window is
  sampled at the same step from its start; the remaining slots repeat the last real
  frame and are masked out. Returns (indices (n_out,) int64, mask (n_out,) bool)."""
  if fps is None or not fps > 0:
    raise ValueError(f"a positive frame rate is needed, got {fps}")
  step = seconds * fps / n_out
  window = seconds * fps
  slots = np.arange(n_out, dtype=np.float64) * step
  if n_frames >= window:
    start = math.floor((n_frames - window) / 2.0)
    idx = start + np.floor(slots + step / 2.0).astype(np.int64)
    return np.minimum(idx, n_frames - 1), np.ones((n_out,), dtype=bool)
  mask = slots < n_frames
  idx = np.floor(slots).astype(np.int64)
  last_real = int(idx[mask][-1])
  return np.where(mask, idx, last_real), mask


def every_nth_plan(n_frames: int, step: int = 5, n_out: int = 24
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices for S3: every `step`-th frame, the centre `n_out` of them if more.

  Missing slots get index -1 and mask False (the set fills them with zeros)."""
  taken = np.arange(0, n_frames, step, dtype=np.int64)
  idx = np.full((n_out,), -1, dtype=np.int64)
  mask = np.zeros((n_out,), dtype=bool)
  if len(taken) >= n_out:
    start = (len(taken) - n_out) // 2
    idx[:] = taken[start:start + n_out]
    mask[:] = True
  else:
    idx[:len(taken)] = taken
    mask[:len(taken)] = True
  return idx, mask


def snippet_plan(n_frames: int, fps: float, n_snippets: int = 4, snippet_len: int = 8
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices and time spans for S4's snippets.

  The clip is cut into `n_snippets` equal segments that together cover it; each
  snippet takes `snippet_len` frames evenly inside its segment (a clip with fewer
  frames than that repeats frames). Returns (indices (K, T) int64, times (K, 2)
  float32 start/end seconds), so the audio can be sliced to the same spans."""
  if fps is None or not fps > 0:
    raise ValueError(f"a positive frame rate is needed, got {fps}")
  seg = n_frames / n_snippets
  k = np.arange(n_snippets, dtype=np.float64)[:, None]
  j = np.arange(snippet_len, dtype=np.float64)[None, :]
  idx = np.floor(k * seg + (j + 0.5) * seg / snippet_len).astype(np.int64)
  idx = np.clip(idx, 0, n_frames - 1)
  starts = np.arange(n_snippets) * seg / fps
  times = np.stack([starts, starts + seg / fps], axis=1).astype(np.float32)
  return idx, times


# Where the aligned crops put the eyes: level, their midpoint centred across and
# EYE_HEIGHT of the way down, EYE_DISTANCE of the crop's width apart. That keeps
# brow to chin and cheek to cheek, with about as much margin as the 1.0.0 sets'
# Haar box + 15 %.
EYE_HEIGHT = 0.40
EYE_DISTANCE = 0.30


def eye_transform(eyes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """The 2x3 affine map (rotation + uniform scale + shift) from frame pixels to
  an aligned crop of `size` = (height, width), given the eyes (2, 2) as (x, y):
  the eyes land level, EYE_DISTANCE * width apart, centred at EYE_HEIGHT."""
  eyes = np.asarray(eyes, np.float64)
  if eyes[1, 0] < eyes[0, 0]:  # Either order: the image-left eye first.
    eyes = eyes[::-1]
  d = eyes[1] - eyes[0]
  distance = float(np.hypot(*d))
  if not distance > 1e-3:
    raise ValueError(f"eyes coincide at {eyes[0].tolist()}: cannot align the face")
  out_h, out_w = size
  scale = EYE_DISTANCE * out_w / distance
  angle = np.degrees(np.arctan2(d[1], d[0]))  # Clockwise tilt on screen (y is down).
  centre = eyes.mean(axis=0)
  m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), scale)
  m[:, 2] += np.array([out_w / 2.0, EYE_HEIGHT * out_h]) - centre
  return m


def align_to_eyes(frames: np.ndarray, eyes: np.ndarray, size: tuple[int, int] = (64, 64),
                  gray: bool = False) -> np.ndarray:
  """Aligned face crops: each frame rotated so its eyes (T, 2, 2) are level and
  scaled to a fixed inter-ocular distance (`eye_transform`), uint8 (T, h, w, 3),
  or (T, h, w, 1) when `gray`. A crop shrinking the face is area-averaged first
  (as crop_to_boxes' INTER_AREA resize), then rotated bilinearly; pixels beyond
  the frame repeat its edge."""
  frames = validate_frames(frames)
  eyes = np.asarray(eyes, np.float64)
  t = frames.shape[0]
  if eyes.shape != (t, 2, 2):
    raise ValueError(f"eyes must be ({t}, 2, 2) to match the frames, got {eyes.shape}")
  if not np.all(np.isfinite(eyes)):
    raise ValueError("eye landmarks have non-finite values")
  out_h, out_w = int(size[0]), int(size[1])
  img_h, img_w = frames.shape[1:3]
  corners = np.array([[0, 0, 1], [out_w, 0, 1], [0, out_h, 1], [out_w, out_h, 1]], np.float64)
  channels = 1 if gray else 3
  out = np.empty((t, out_h, out_w, channels), dtype=np.uint8)
  for i in range(t):
    m = eye_transform(eyes[i], (out_h, out_w))
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    frame = frames[i]
    if scale < 1.0:
      # The region the crop covers (inverse-mapped corners), shrunk by area first.
      inverse = cv2.invertAffineTransform(m)
      src = corners @ inverse.T
      x0 = int(np.clip(np.floor(src[:, 0].min()) - 2, 0, img_w - 1))
      y0 = int(np.clip(np.floor(src[:, 1].min()) - 2, 0, img_h - 1))
      x1 = int(np.clip(np.ceil(src[:, 0].max()) + 2, x0 + 1, img_w))
      y1 = int(np.clip(np.ceil(src[:, 1].max()) + 2, y0 + 1, img_h))
      region = frame[y0:y1, x0:x1]
      small_w = max(1, round((x1 - x0) * scale))
      small_h = max(1, round((y1 - y0) * scale))
      frame = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
      # Frame pixels -> small: shift by the region's corner, then scale per axis.
      shrink = np.array([[small_w / (x1 - x0), 0, -x0 * small_w / (x1 - x0)],
                         [0, small_h / (y1 - y0), -y0 * small_h / (y1 - y0)]])
      m = m @ np.vstack([cv2.invertAffineTransform(shrink), [0, 0, 1]])
    crop = cv2.warpAffine(frame, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    if gray:
      crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    out[i] = crop.reshape(out_h, out_w, channels)
  return out


def gather_crops(frames: np.ndarray, boxes: np.ndarray | None, indices: np.ndarray,
                 size: tuple[int, int], gray: bool = False,
                 eyes: np.ndarray | None = None) -> np.ndarray:
  """Crops only the frames at `indices` (any shape, -1 = zero frame), keeping that
  shape in front of (h, w, c); each distinct frame is cropped once. With `eyes`
  (T, 2, 2) the crops are eye-aligned (`align_to_eyes`) instead of box crops."""
  frames = validate_frames(frames)
  if boxes is not None and np.asarray(boxes).shape != (frames.shape[0], 4):
    raise ValueError(f"boxes must be ({frames.shape[0]}, 4) to match the frames, "
                     f"got {np.asarray(boxes).shape}")
  if eyes is not None and np.asarray(eyes).shape != (frames.shape[0], 2, 2):
    raise ValueError(f"eyes must be ({frames.shape[0]}, 2, 2) to match the frames, "
                     f"got {np.asarray(eyes).shape}")
  flat = np.asarray(indices).reshape(-1)
  valid = flat >= 0
  unique, inverse = np.unique(flat[valid], return_inverse=True)
  if eyes is not None:
    crops = align_to_eyes(frames[unique], np.asarray(eyes)[unique], size=size, gray=gray)
  else:
    sub_boxes = None if boxes is None else np.asarray(boxes)[unique]
    crops = crop_to_boxes(frames[unique], sub_boxes, size=size, gray=gray)
  out = np.zeros((flat.shape[0],) + crops.shape[1:], dtype=np.uint8)
  out[valid] = crops[inverse]
  return out.reshape(np.asarray(indices).shape + crops.shape[1:])
