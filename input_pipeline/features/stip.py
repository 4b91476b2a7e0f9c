"""Space-time interest points (Laptev's Harris-3D) and a fixed 162-long summary, S2's
video features.

Choices (the S2 paper gives the detector, not its parameters or descriptor):
  * volume: grayscale face crops, 64x64, sampled at ~15 fps, the centre 48 frames,
    standardised per clip (zero mean, unit std, std floored at 0.02) so that one
    threshold serves dim and bright, flat and contrasty faces (H scales with the
    6th power of contrast);
  * scale space: sigma^2 = 2 (space; a 64-pixel face has small mouth/eye
    structures), tau^2 = 2 (time), integration scale s = 2, k = 0.005 (Laptev's
    value); derivatives are central differences of L;
  * points: 3x5x5 local maxima of H = det(mu) - k trace(mu)^3 above 1e-8, away
    from the volume border. A static scene has Lt = 0, and motion at constant
    velocity keeps all gradients in one plane, so mu is singular and H <= 0 for
    both: points mark motion that starts, stops or turns (a mouth opening);
  * descriptor: Laptev's HOG/HOF layout, which happens to be 162 long: a 3x3x2
    grid of cells (6x6 pixels x 3 frames each) around the point, 4 gradient-
    orientation bins (magnitude weighted) and 5 flow bins (4 directions weighted by
    flow magnitude + a no-motion bin) per cell: 18*4 + 18*5 = 72 + 90 = 162. Each
    point's HOG and HOF parts are L2-normalised; the clip vector is the mean over
    the (at most 256) strongest points, zeros when none are found.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

SIGMA2 = 2.0
TAU2 = 2.0
INTEGRATION_SCALE = 2.0
HARRIS_K = 0.005
RESPONSE_THRESHOLD = 1e-8
MIN_STD = 0.02
MAX_POINTS = 256
CELL_XY = 6         # pixels per cell side
CELL_T = 3          # frames per cell
GRID_XY = 3
GRID_T = 2
HOG_BINS = 4
HOF_BINS = 5
STATIC_FLOW = 0.2   # pixels/frame below which flow counts as no motion
DESCRIPTOR_LENGTH = GRID_XY * GRID_XY * GRID_T * (HOG_BINS + HOF_BINS)  # 162


def harris3d(volume: np.ndarray, sigma2: float = SIGMA2, tau2: float = TAU2,
             s: float = INTEGRATION_SCALE, k: float = HARRIS_K
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Harris-3D response of a (T, H, W) float volume; also returns Lx, Ly."""
  volume = np.asarray(volume, dtype=np.float32)
  sigma, tau = np.sqrt(sigma2), np.sqrt(tau2)
  smooth = ndimage.gaussian_filter(volume, sigma=(tau, sigma, sigma), mode="nearest")
  lt, ly, lx = np.gradient(smooth)
  integration = (np.sqrt(s) * tau, np.sqrt(s) * sigma, np.sqrt(s) * sigma)

  def g(a):
    return ndimage.gaussian_filter(a, sigma=integration, mode="nearest")

  xx, yy, tt = g(lx * lx), g(ly * ly), g(lt * lt)
  xy, xt, yt = g(lx * ly), g(lx * lt), g(ly * lt)
  det = xx * (yy * tt - yt * yt) - xy * (xy * tt - yt * xt) + xt * (xy * yt - yy * xt)
  trace = xx + yy + tt
  return det - k * trace ** 3, lx, ly


def interest_points(response: np.ndarray, threshold: float = RESPONSE_THRESHOLD,
                    border: tuple[int, int] = (1, 2)) -> tuple[np.ndarray, np.ndarray]:
  """Local maxima of the response above `threshold`, not within `border`
  (frames, pixels) of the edges. Returns (points (N, 3) as t, y, x; responses (N,)),
  strongest first."""
  peaks = response == ndimage.maximum_filter(response, size=(3, 5, 5), mode="nearest")
  peaks &= response > threshold
  bt, bs = border
  inner = np.zeros_like(peaks)
  inner[bt:response.shape[0] - bt, bs:response.shape[1] - bs,
        bs:response.shape[2] - bs] = True
  points = np.argwhere(peaks & inner)
  values = response[tuple(points.T)]
  order = np.argsort(-values, kind="stable")
  return points[order], values[order]


def dense_flow(frames: np.ndarray, needed: np.ndarray | None = None) -> np.ndarray:
  """Farneback flow from each frame to the next, (T, H, W, 2); the last frame uses
  the flow into it, so flow aligns with frames. `needed` (bool per frame) skips
  frames no descriptor looks at (they stay zero)."""
  t = frames.shape[0]
  flow = np.zeros(frames.shape + (2,), dtype=np.float32)
  if t < 2:
    return flow
  for i in range(t):
    if needed is not None and not needed[i]:
      continue
    a, b = (i, i + 1) if i < t - 1 else (t - 2, t - 1)
    flow[i] = cv2.calcOpticalFlowFarneback(frames[a], frames[b], None, 0.5, 2, 9, 3, 5,
                                           1.1, 0)
  return flow


def _orientation_channels(dx: np.ndarray, dy: np.ndarray, bins: int,
                          signed: bool) -> tuple[np.ndarray, np.ndarray]:
  """Orientation bin index and magnitude of a vector field."""
  magnitude = np.sqrt(dx * dx + dy * dy)
  angle = np.arctan2(dy, dx)
  period = 2 * np.pi if signed else np.pi
  index = np.floor(np.mod(angle, period) / period * bins).astype(np.int64) % bins
  return index, magnitude


def _cell_histograms(fields: list[tuple[np.ndarray, np.ndarray, int]],
                     points: np.ndarray, channels: int) -> np.ndarray:
  """Per point, per grid cell histograms: (N, GRID_T*GRID_XY*GRID_XY, channels).

  Each field is (bin index, weight, first channel) over the (T, H, W) volume. Each
  point's (6, 18, 18) neighbourhood is gathered and binned with one bincount, so the
  cost follows the number of points, not the volume. Voxels past the border count
  as zero: cells there just hold less."""
  half_t, half_s = GRID_T * CELL_T // 2, GRID_XY * CELL_XY // 2
  shape = fields[0][0].shape
  n_cells = GRID_T * GRID_XY * GRID_XY

  def axis_index(centres, half, size):
    idx = centres[:, None] + np.arange(-half, half)[None, :]
    return np.clip(idx, 0, size - 1), (idx >= 0) & (idx < size)

  (ti, tv), (yi, yv), (xi, xv) = (axis_index(points[:, a], h, n) for a, h, n in
                                  ((0, half_t, shape[0]), (1, half_s, shape[1]),
                                   (2, half_s, shape[2])))
  flat = ((ti[:, :, None, None] * shape[1] + yi[:, None, :, None]) * shape[2]
          + xi[:, None, None, :]).ravel()                      # (N * 6 * 18 * 18,)
  valid = (tv[:, :, None, None] & yv[:, None, :, None] & xv[:, None, None, :]).ravel()
  t_cell = np.arange(2 * half_t) // CELL_T
  s_cell = np.arange(2 * half_s) // CELL_XY
  cell = (t_cell[:, None, None] * GRID_XY + s_cell[None, :, None]) * GRID_XY \
      + s_cell[None, None, :]                                    # (6, 18, 18)
  base = ((np.arange(len(points))[:, None, None, None] * n_cells + cell[None])
          * channels).ravel()
  index, weight = [], []
  for bins, weights, first in fields:
    index.append(base + first + bins.ravel().take(flat))
    weight.append(np.where(valid, weights.ravel().take(flat), 0.0))
  counts = np.bincount(np.concatenate(index), weights=np.concatenate(weight),
                       minlength=len(points) * n_cells * channels)
  return counts.reshape(len(points), n_cells, channels)


def _l2_rows(a: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(a, axis=1, keepdims=True)
  return a / np.maximum(norm, 1e-12)


def hoghof(frames: np.ndarray, lx: np.ndarray, ly: np.ndarray,
           points: np.ndarray) -> np.ndarray:
  """HOG/HOF descriptors (N, 162) of points in uint8 gray frames (T, H, W)."""
  if len(points) == 0:
    return np.zeros((0, DESCRIPTOR_LENGTH), dtype=np.float32)
  hog_bin, hog_mag = _orientation_channels(lx, ly, HOG_BINS, signed=False)
  needed = np.zeros((frames.shape[0],), dtype=bool)
  for dt in range(-(GRID_T * CELL_T) // 2, (GRID_T * CELL_T) // 2):
    needed[np.clip(points[:, 0] + dt, 0, frames.shape[0] - 1)] = True
  flow = dense_flow(frames, needed)
  hof_bin, hof_mag = _orientation_channels(flow[..., 0], flow[..., 1], HOF_BINS - 1,
                                           signed=True)
  static = hof_mag < STATIC_FLOW
  hof_bin = np.where(static, HOF_BINS - 1, hof_bin)
  hof_weight = np.where(static, STATIC_FLOW, hof_mag)
  cells = _cell_histograms([(hog_bin, hog_mag, 0), (hof_bin, hof_weight, HOG_BINS)],
                           points, HOG_BINS + HOF_BINS)         # (N, 18, 9)
  n = len(points)
  hog_part = _l2_rows(cells[..., :HOG_BINS].reshape(n, -1))
  hof_part = _l2_rows(cells[..., HOG_BINS:].reshape(n, -1))
  return np.concatenate([hog_part, hof_part], axis=1).astype(np.float32)


def stip_features(gray_frames: np.ndarray) -> tuple[np.ndarray, int]:
  """(162,) mean HOG/HOF over the strongest Harris-3D points, and the number of
  points found, for uint8 gray frames (T, H, W). Fewer than 3 frames hold no
  temporal structure to detect: zeros and 0 points."""
  gray_frames = np.asarray(gray_frames, dtype=np.uint8)
  if gray_frames.shape[0] < 3:
    return np.zeros((DESCRIPTOR_LENGTH,), dtype=np.float32), 0
  volume = gray_frames.astype(np.float32) / 255.0
  volume = (volume - volume.mean()) / max(float(volume.std()), MIN_STD)
  response, lx, ly = harris3d(volume)
  points, _ = interest_points(response)
  count = len(points)
  described = hoghof(gray_frames, lx, ly, points[:MAX_POINTS])
  if len(described) == 0:
    return np.zeros((DESCRIPTOR_LENGTH,), dtype=np.float32), 0
  return described.mean(axis=0).astype(np.float32), count


def stip_frame_plan(n_frames: int, fps: float, target_fps: float = 15.0,
                    n_out: int = 48) -> np.ndarray:
  """Indices of the STIP volume: every round(fps / target_fps)-th frame, the
  centre `n_out` of them (fewer for short clips)."""
  if fps is None or not fps > 0:
    raise ValueError(f"a positive frame rate is needed, got {fps}")
  stride = max(1, int(round(fps / target_fps)))
  taken = np.arange(0, n_frames, stride, dtype=np.int64)
  if len(taken) > n_out:
    start = (len(taken) - n_out) // 2
    taken = taken[start:start + n_out]
  return taken
