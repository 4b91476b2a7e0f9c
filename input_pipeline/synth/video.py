"""A talking face on a cluttered background, rendered with OpenCV primitives.

The head is shaded like a lit ellipsoid with darker eye sockets and brows and a
brighter nose bridge and cheeks: the luminance layout a Haar frontal-face cascade
keys on, so the shared `FaceDetector` finds it as it finds a real face. Static
parts (background, head, hair, shading) are drawn once per clip; per frame only
the moving parts (eyes, brows, mouth, head position) are redrawn, which keeps
a full corpus cheap to render.
"""

from __future__ import annotations

import cv2
import numpy as np

from input_pipeline.synth.profile import FPS, HEIGHT, WIDTH, Actor, ClipPlan, rng_for

_VIDEO_TAG = 0x71D
_BG_TAG = 0xB6
_SHIFT = 4                 # cv2 fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
  return int(round(x * _ONE)), int(round(y * _ONE))


def _background(actor: Actor, plan: ClipPlan) -> np.ndarray:
  """Per-actor room (gradient, texture, furniture-like shapes) plus a few
  per-clip objects, so the background is clutter, not a cue."""
  rng = rng_for(plan.clip_seed[0], actor.actor, _BG_TAG)
  clip_rng = rng_for(*plan.clip_seed, _BG_TAG)
  base = rng.uniform(60, 200, 3)
  other = rng.uniform(40, 220, 3)
  ramp = np.linspace(0.0, 1.0, WIDTH)[None, :, None]
  img = base[None, None] * (1 - ramp) + other[None, None] * ramp
  img = np.broadcast_to(img, (HEIGHT, WIDTH, 3)).copy()
  coarse = rng.normal(0.0, 18.0, (HEIGHT // 12 + 2, WIDTH // 12 + 2, 3))
  img += cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
  img = np.clip(img, 0, 255).astype(np.uint8)
  for r, n in ((rng, 22), (clip_rng, 4)):
    for _ in range(n):
      color = tuple(float(c) for c in r.uniform(0, 255, 3))
      kind = r.integers(0, 3)
      x, y = int(r.uniform(0, WIDTH)), int(r.uniform(0, HEIGHT))
      if kind == 0:
        w, h = int(r.uniform(8, 70)), int(r.uniform(8, 70))
        cv2.rectangle(img, (x, y), (x + w, y + h), color, -1)
      elif kind == 1:
        cv2.circle(img, (x, y), int(r.uniform(4, 25)), color, -1, cv2.LINE_AA)
      else:
        x2, y2 = int(r.uniform(0, WIDTH)), int(r.uniform(0, HEIGHT))
        cv2.line(img, (x, y), (x2, y2), color, int(r.integers(1, 5)), cv2.LINE_AA)
  return cv2.GaussianBlur(img, (3, 3), 0)


def _head_layer(actor: Actor) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """Static head (hair, neck, shaded face, sockets, nose) as RGB + alpha over a
  box; returns (rgb float32, alpha float32, (x0, y0) of the box in the frame)."""
  a, b = actor.face_w, actor.face_h
  pad_x, pad_top = int(a * 0.5) + 6, int(b * 0.55) + 6
  x0, y0 = int(actor.cx - a) - pad_x, int(actor.cy - b) - pad_top
  w, h = int(2 * a) + 2 * pad_x, HEIGHT - y0 + 10
  cx, cy = actor.cx - x0, actor.cy - y0
  skin = np.array(actor.skin, dtype=np.float32)
  hair = np.array(actor.hair, dtype=np.float32)
  rgb = np.zeros((h, w, 3), np.float32)
  alpha = np.zeros((h, w), np.float32)
  mask = np.zeros((h, w), np.uint8)

  def paint(color, draw):
    mask[:] = 0
    draw(mask)
    m = mask.astype(np.float32)[..., None] / 255.0
    rgb[:] = rgb * (1 - m) + np.asarray(color, np.float32) * m
    alpha[:] = np.maximum(alpha, m[..., 0])

  # Shoulders and neck, then hair behind the head.
  paint(hair * 0.5 + 40, lambda m: cv2.ellipse(m, _pt(cx, cy + 2.05 * b), _pt(2.3 * a, 0.75 * b),
                                               0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT))
  paint(skin * 0.7, lambda m: cv2.rectangle(m, (int(cx - 0.45 * a), int(cy + 0.5 * b)),
                                            (int(cx + 0.45 * a), int(cy + 1.5 * b)), 255, -1))
  paint(hair, lambda m: cv2.ellipse(m, _pt(cx, cy - 0.22 * b), _pt(1.12 * a, 0.92 * b),
                                    0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT))
  # Face: an ellipsoid lit from the front-top, so edges and jaw fall off in shade.
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  u, v = (xx - cx) / a, (yy - cy) / b
  inside = u * u + v * v
  z = np.sqrt(np.clip(1.0 - inside, 0.0, 1.0))
  light = np.array([-0.15, -0.35, 0.92], np.float32)
  light /= np.linalg.norm(light)
  shade = np.clip(0.35 + 0.75 * (light[0] * u + light[1] * v + light[2] * z), 0.25, 1.15)
  face_mask = np.zeros((h, w), np.uint8)
  cv2.ellipse(face_mask, _pt(cx, cy), _pt(a, b), 0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
  # Features that shade the face: sockets and brow ridge darker, nose ridge and
  # cheekbones brighter, shadow under the nose.
  tone = np.ones((h, w), np.float32)
  eye_y = cy - 0.12 * b
  ex = actor.eye_gap
  for side in (-1, 1):
    cv2.ellipse(tone, _pt(cx + side * ex, eye_y - 0.02 * b), _pt(0.34 * a, 0.18 * b),
                0, 0, 360, 0.42, -1, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(tone, _pt(cx + side * 0.5 * a, cy + 0.2 * b), _pt(0.22 * a, 0.14 * b),
                0, 0, 360, 1.12, -1, cv2.LINE_AA, _SHIFT)
  cv2.ellipse(tone, _pt(cx, cy - 0.56 * b), _pt(0.6 * a, 0.18 * b), 0, 0, 360, 1.18, -1,
              cv2.LINE_AA, _SHIFT)  # forehead catches the light
  cv2.line(tone, _pt(cx, eye_y - 0.1 * b), _pt(cx, cy + 0.18 * b), 1.15,
           max(2, int(0.16 * a)), cv2.LINE_AA, _SHIFT)
  cv2.ellipse(tone, _pt(cx, cy + 0.29 * b), _pt(0.2 * a, 0.05 * b), 0, 0, 360, 0.7, -1,
              cv2.LINE_AA, _SHIFT)
  cv2.ellipse(tone, _pt(cx, cy + 0.75 * b), _pt(0.3 * a, 0.06 * b), 0, 0, 360, 0.85, -1,
              cv2.LINE_AA, _SHIFT)  # under the lower lip
  tone = cv2.GaussianBlur(tone, (0, 0), max(1.5, 0.06 * a))
  face_rgb = skin[None, None] * (shade * tone)[..., None]
  fm = face_mask.astype(np.float32)[..., None] / 255.0
  rgb[:] = rgb * (1 - fm) + face_rgb * fm
  alpha[:] = np.maximum(alpha, fm[..., 0])
  # Nostrils and a hairline fringe over the forehead.
  for side in (-1, 1):
    cv2.ellipse(rgb, _pt(cx + side * 0.09 * a, cy + 0.25 * b), _pt(0.06 * a, 0.025 * b), 0,
                0, 360, tuple(float(c) for c in skin * 0.35), -1, cv2.LINE_AA, _SHIFT)
  paint(hair, lambda m: cv2.ellipse(m, _pt(cx, cy - 0.86 * b), _pt(1.02 * a, 0.3 * b), 0,
                                    180, 360, 255, -1, cv2.LINE_AA, _SHIFT))
  return np.clip(rgb, 0, 255), alpha, (x0, y0)


def _composite(bg: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x0: int,
               y0: int) -> np.ndarray:
  out = bg.copy()
  h, w = alpha.shape
  fx0, fy0 = max(0, x0), max(0, y0)
  fx1, fy1 = min(WIDTH, x0 + w), min(HEIGHT, y0 + h)
  if fx1 <= fx0 or fy1 <= fy0:
    return out
  src = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
  a = alpha[src][..., None]
  region = out[fy0:fy1, fx0:fx1].astype(np.float32)
  out[fy0:fy1, fx0:fx1] = (region * (1 - a) + rgb[src] * a + 0.5).astype(np.uint8)
  return out


def face_geometry(plan: ClipPlan, env: float, blink: float) -> dict[str, float]:
  """Emotion- and speech-driven feature geometry for one frame (in face units).

  Kept separate from drawing so tests and calibration can read the same numbers
  the renderer uses.
  """
  c = plan.cues
  return dict(
      eye_open=float(np.clip(1.0 + 0.4 * c["eye_open"], 0.45, 1.7) * blink),
      # Clipped so an extreme take still looks like a face (to people and to Haar).
      brow_raise=float(np.clip(c["brow_raise"], -1.0, 1.0)),
      brow_angle=float(np.clip(c["brow_angle"], -1.4, 1.2)),  # + inner end up (sad, fear)
      mouth_curve=float(np.clip(c["mouth_curve"], -1.2, 1.5)),  # + corners up (smile)
      mouth_open=float(np.clip(env * (0.55 + 0.25 * c["jaw"]
                                      + 0.05 * c["energy_db"]), 0.0, 1.5)
                       + max(0.0, 0.3 * c["jaw"]) * (env > 0)),
  )


def _draw_features(img: np.ndarray, actor: Actor, geo: dict[str, float], ox: float,
                   oy: float) -> None:
  a, b = actor.face_w, actor.face_h
  cx, cy = actor.cx + ox, actor.cy + oy
  skin = np.array(actor.skin)
  eye_y = cy - 0.12 * b
  ex = actor.eye_gap
  eye_w = 0.18 * a
  eye_h = 0.07 * b * geo["eye_open"]
  brow_color = tuple(float(c) for c in np.minimum(np.array(actor.hair) * 0.8, skin * 0.35))
  for side in (-1, 1):
    ecx = cx + side * ex
    if eye_h > 0.8:
      # Sclera a little darker than paper white and a large iris: on video the eye
      # reads as a dark spot, which is what keeps the socket band dark for Haar.
      cv2.ellipse(img, _pt(ecx, eye_y), _pt(eye_w, eye_h), 0, 0, 360, (190, 184, 178), -1,
                  cv2.LINE_AA, _SHIFT)
      iris_r = min(0.11 * a, eye_h * 1.1)
      cv2.circle(img, _pt(ecx, eye_y), int(iris_r * _ONE), (40, 30, 26), -1, cv2.LINE_AA,
                 _SHIFT)
    # Lids and lashes: a dark upper arc, a fainter lower one (a line when closed).
    cv2.ellipse(img, _pt(ecx, eye_y), _pt(eye_w * 1.08, max(eye_h, 0.5)), 0, 180, 360,
                (25, 20, 20), 3, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(img, _pt(ecx, eye_y), _pt(eye_w, max(eye_h, 0.5)), 0, 20, 160,
                tuple(float(c) for c in skin * 0.45), 1, cv2.LINE_AA, _SHIFT)
    # Brow: inner and outer ends; raise lifts both, angle lifts the inner end.
    lift = actor.brow_base * (1.0 + 0.25 * geo["brow_raise"]) + 0.04 * b * (geo["eye_open"] - 1)
    inner = (cx + side * 0.1 * a, eye_y - lift - 2.5 * geo["brow_angle"])
    mid = (cx + side * (ex + 0.02 * a), eye_y - lift - 2.5 - 0.8 * geo["brow_angle"])
    outer = (cx + side * (ex + 0.3 * a), eye_y - lift + 1.5)
    pts = np.array([_pt(*inner), _pt(*mid), _pt(*outer)], np.int32)
    cv2.polylines(img, [pts], False, brow_color, max(2, int(0.1 * a)), cv2.LINE_AA, _SHIFT)
  # Mouth: corners move with curvature, the jaw opens with the syllable envelope.
  my = cy + 0.52 * b
  mw = actor.mouth_w * (1.0 + 0.08 * max(0.0, geo["mouth_curve"]))
  corner_dy = -0.07 * b * geo["mouth_curve"]
  open_px = 0.16 * b * geo["mouth_open"]
  xs = np.linspace(-1.0, 1.0, 13)
  bow = 1.0 - xs ** 2
  upper_y = my + corner_dy * (1 - bow) - 0.3 * open_px * bow
  lower_y = my + corner_dy * (1 - bow) + 0.7 * open_px * bow
  lip = tuple(float(c) for c in skin * np.array([0.62, 0.42, 0.42]))
  if open_px > 0.6:
    poly = np.array([_pt(cx + x * mw, y) for x, y in zip(xs, upper_y)]
                    + [_pt(cx + x * mw, y) for x, y in zip(xs[::-1], lower_y[::-1])], np.int32)
    cv2.fillPoly(img, [poly], (50, 18, 22), cv2.LINE_AA, _SHIFT)
    cv2.polylines(img, [poly], True, lip, 2, cv2.LINE_AA, _SHIFT)
  else:
    line = np.array([_pt(cx + x * mw, y) for x, y in zip(xs, upper_y)], np.int32)
    cv2.polylines(img, [line], False, lip, 3, cv2.LINE_AA, _SHIFT)


def synth_video(plan: ClipPlan) -> np.ndarray:
  """Renders the plan as uint8 RGB frames (n_frames, HEIGHT, WIDTH, 3) at FPS."""
  rng = rng_for(*plan.clip_seed, _VIDEO_TAG)
  actor = plan.actor
  bg = _background(actor, plan)
  head_rgb, head_alpha, (x0, y0) = _head_layer(actor)
  t = np.arange(plan.n_frames) / FPS + 0.5 / FPS
  env = plan.envelope(t)
  motion = plan.cues["head_motion"]
  phase = rng.uniform(0, 2 * np.pi, 2)
  dx = motion * (2.0 * np.sin(2 * np.pi * 0.35 * t + phase[0])
                 + 0.8 * np.sin(2 * np.pi * 0.9 * t + phase[1]))
  dy = motion * (1.2 * np.sin(2 * np.pi * 0.5 * t + phase[1]) + 1.5 * env)
  blink = np.ones(plan.n_frames)
  for start in rng.uniform(0.0, plan.duration, max(1, int(plan.duration / 2.5))):
    k = int(start * FPS)
    blink[k:k + 2] = 0.1
    blink[k + 2:k + 3] = 0.5
  frames = np.empty((plan.n_frames, HEIGHT, WIDTH, 3), np.uint8)
  for i in range(plan.n_frames):
    ox, oy = int(round(dx[i])), int(round(dy[i]))
    img = _composite(bg, head_rgb, head_alpha, x0 + ox, y0 + oy)
    _draw_features(img, actor, face_geometry(plan, float(env[i]), float(blink[i])), ox, oy)
    frames[i] = img
  return frames
