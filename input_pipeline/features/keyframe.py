"""Key-frame selection for S5 (Aktürk & Keçeli 2024, as the review describes it).

The review gives the order of the filters but no thresholds; ours:
  1. motion: mean absolute LUV difference from the previous frame; keep frames at
     or above the median (the first frame borrows the second's difference);
  2. brightness: mean gray level; drop frames darker than 80% of the brightest
     candidate (its job is to drop dark frames, not to pick the brightest);
  3. entropy: gray-histogram Shannon entropy; keep frames within 90% of the best;
  4. contrast: gray standard deviation; keep frames within 70% of the best (a
     median cut would halve even a set of equally good frames);
  5. clustering: k-means (k <= 3) on 32-bin gray histograms; each cluster's
     sharpest frame (variance of the Laplacian) represents it;
  6. the representatives are ranked by sharpness: the first is the key frame,
     and asking for n key frames gives n frames from different clusters.
Every filter keeps its best frame, so at least one candidate always survives.
All measures are taken on the (face-cropped) frames passed in.
"""

from __future__ import annotations

import cv2
import numpy as np


def frame_measures(frames: np.ndarray) -> dict[str, np.ndarray]:
  """Per-frame motion (LUV), brightness, entropy, contrast, sharpness and gray
  histograms of uint8 RGB (T, H, W, 3) frames."""
  t = frames.shape[0]
  # 8-bit LUV (OpenCV's scaled L, u, v): int16 differences are exact and cheap.
  luv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LUV) for f in frames]).astype(np.int16)
  gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
  motion = np.zeros((t,), dtype=np.float32)
  if t > 1:
    motion[1:] = np.abs(luv[1:] - luv[:-1]).reshape(t - 1, -1).mean(axis=1)
    motion[0] = motion[1]
  flat = gray.reshape(t, -1)
  counts = np.stack([np.bincount(row, minlength=256) for row in flat]).astype(np.float64)
  probs = counts / counts.sum(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    entropy = -np.sum(np.where(probs > 0, probs * np.log2(probs), 0.0), axis=1)
  hist32 = counts.reshape(t, 32, 8).sum(axis=2) / flat.shape[1]
  sharpness = np.array([cv2.Laplacian(g, cv2.CV_64F).var() for g in gray])
  return {
      "motion": motion,
      "brightness": flat.mean(axis=1),
      "entropy": entropy,
      "contrast": flat.std(axis=1),
      "sharpness": sharpness,
      "histogram": hist32,
  }


def kmeans(points: np.ndarray, k: int, iterations: int = 20) -> np.ndarray:
  """Deterministic k-means (farthest-point initialisation); returns labels."""
  n = points.shape[0]
  k = max(1, min(k, n))
  centres = [points[0]]
  for _ in range(1, k):
    dist = np.min([np.sum((points - c) ** 2, axis=1) for c in centres], axis=0)
    centres.append(points[int(np.argmax(dist))])
  centres = np.stack(centres)
  labels = np.zeros((n,), dtype=np.int64)
  for step in range(iterations):
    dist = np.sum((points[:, None, :] - centres[None, :, :]) ** 2, axis=2)
    new_labels = np.argmin(dist, axis=1)
    if step > 0 and np.array_equal(new_labels, labels):
      break
    labels = new_labels
    for c in range(k):
      members = points[labels == c]
      if len(members):
        centres[c] = members.mean(axis=0)
  return labels


def select_keyframes(frames: np.ndarray, n: int = 1, clusters: int = 3) -> np.ndarray:
  """Indices of up to `n` key frames (best first) of uint8 RGB (T, H, W, 3)."""
  m = frame_measures(frames)
  candidates = np.arange(frames.shape[0])

  def keep(mask: np.ndarray) -> None:
    nonlocal candidates
    candidates = candidates[mask]

  keep(m["motion"][candidates] >= np.median(m["motion"][candidates]))
  keep(m["brightness"][candidates] >= 0.8 * m["brightness"][candidates].max())
  keep(m["entropy"][candidates] >= 0.9 * m["entropy"][candidates].max())
  keep(m["contrast"][candidates] >= 0.7 * m["contrast"][candidates].max())

  labels = kmeans(m["histogram"][candidates], clusters)
  # Sharpest first; a frame is kept only if its cluster has none kept yet, so each
  # kept frame is its cluster's sharpest and the first kept is the sharpest of all.
  by_sharpness = np.argsort(-m["sharpness"][candidates], kind="stable")
  chosen, seen = [], set()
  for i in by_sharpness:
    if labels[i] not in seen:
      seen.add(labels[i])
      chosen.append(candidates[i])
  return np.array(chosen[:n], dtype=np.int64)
