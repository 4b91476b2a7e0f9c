"""Video feature sets, face crops, key frames and space-time interest points on
generated frames whose content is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from input_pipeline.errors import InputError, MissingModalityError
from input_pipeline.features import ClipMedia, crop_to_boxes, get_feature_set
from input_pipeline.features import keyframe as keyframe_lib
from input_pipeline.features import stip as stip_lib
from input_pipeline.features import video as video_lib

VIDEO_SETS = ("frames3d_gray_80x70x30", "frames2d_64", "stip")


def index_frames(n: int, height: int = 36, width: int = 48) -> np.ndarray:
  """Frame i is uniformly gray with level i % 256, so any crop reveals its source."""
  levels = (np.arange(n) % 256).astype(np.uint8)
  return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def video_clip(frames, fps=30.0, boxes=None, clip_id="clip", landmarks=None) -> ClipMedia:
  return ClipMedia(clip_id=clip_id, frames=frames, fps=fps, face_boxes=boxes,
                   face_landmarks=landmarks)


def source_levels(crops: np.ndarray) -> np.ndarray:
  """The frame index each uniform crop came from."""
  flat = crops.reshape(crops.shape[0], -1)
  assert np.all(flat == flat[:, :1]), "crop of a uniform frame is not uniform"
  return flat[:, 0].astype(int)


# ---------------------------------------------------------------- crop_to_boxes

def test_crop_contains_the_boxed_square():
  frame = np.zeros((180, 320, 3), dtype=np.uint8)
  x, y, side = 150, 60, 40
  frame[y:y + side, x:x + side] = 255
  box = np.array([[x, y, side, side]], dtype=np.float32)
  crop = crop_to_boxes(frame[None], box, size=(64, 64), margin=0.15)[0]
  assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
  # The margin adds 0.15 * side on each side: the square spans the middle
  # side / (1.3 * side) of the crop.
  pad = 0.15 / 1.3 * 64
  inner = slice(int(np.ceil(pad)) + 1, int(np.floor(64 - pad)) - 1)
  assert np.all(crop[inner, inner] >= 250)
  assert np.all(crop[:int(pad) - 1] <= 5) and np.all(crop[:, :int(pad) - 1] <= 5)
  tight = crop_to_boxes(frame[None], box, size=(64, 64), margin=0.0)[0]
  assert np.all(tight >= 250)


def test_crop_of_boxes_outside_the_image_is_clipped():
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
  # Hangs over the top-left corner; with the margin it covers x < 65, y < 45.
  box = np.array([[-50.0, -40.0, 100.0, 70.0]], dtype=np.float32)
  crop = crop_to_boxes(frame[None], box, size=(32, 32), margin=0.15)[0]
  x1 = int(np.ceil(-50 + 100 * 1.15))
  y1 = int(np.ceil(-40 + 70 * 1.15))
  expected = cv2.resize(frame[:y1, :x1], (32, 32), interpolation=cv2.INTER_AREA)
  np.testing.assert_array_equal(crop, expected)
  # Entirely outside: still a valid crop of the nearest edge pixels.
  far = np.array([[500.0, 500.0, 20.0, 20.0]], dtype=np.float32)
  edge = crop_to_boxes(frame[None], far, size=(8, 8), gray=True)
  assert edge.shape == (1, 8, 8, 1)
  gray_corner = cv2.cvtColor(frame[-1:, -1:], cv2.COLOR_RGB2GRAY)[0, 0]
  assert np.all(edge == gray_corner)


def test_crop_rejects_boxes_that_do_not_match_frames():
  frames = index_frames(5)
  with pytest.raises(ValueError):
    crop_to_boxes(frames, np.zeros((4, 4), dtype=np.float32))
  with pytest.raises(ValueError):
    crop_to_boxes(frames, np.full((5, 4), np.nan, dtype=np.float32))


# ------------------------------------------------------------------ frame plans

def test_frames3d_keeps_the_centre_three_seconds():
  n, fps = 200, 30.0
  out = get_feature_set("frames3d_gray_80x70x30").compute(video_clip(index_frames(n), fps))
  assert out["frames3d"].shape == (30, 80, 70, 1)
  assert out["frames3d_mask"].all()
  levels = source_levels(out["frames3d"])
  window = 3 * fps
  start = (n - window) / 2
  assert levels.min() >= np.floor(start) and levels.max() < start + window + 1
  assert np.all(np.diff(levels) > 0)
  # Evenly spread: the 30 samples span (almost) the whole window.
  assert levels.max() - levels.min() >= window * 29 / 30 - 1


@pytest.mark.parametrize("n", [1, 13, 40, 89])
def test_frames3d_short_clip_is_padded_with_its_last_frame(n):
  fps = 30.0
  out = get_feature_set("frames3d_gray_80x70x30").compute(video_clip(index_frames(n), fps))
  step = 3 * fps / 30
  expected_real = sum(j * step < n for j in range(30))
  mask = out["frames3d_mask"]
  assert mask.sum() == expected_real and mask[:expected_real].all()
  levels = source_levels(out["frames3d"])
  assert np.all(levels[expected_real:] == levels[expected_real - 1])
  assert levels[expected_real - 1] < n


@pytest.mark.parametrize("n", [7, 105, 119])
def test_frames2d_takes_every_fifth_frame(n):
  out = get_feature_set("frames2d_64").compute(video_clip(index_frames(n)))
  assert out["frames2d"].shape == (24, 64, 64, 3)
  expected_real = -(-n // 5)
  mask = out["frames2d_mask"]
  assert mask.sum() == min(24, expected_real)
  levels = source_levels(out["frames2d"][mask])
  assert np.all(levels % 5 == 0) and np.all(np.diff(levels) == 5)
  assert np.all(out["frames2d"][~mask] == 0)


def test_frames2d_long_clip_keeps_the_centre():
  n = 200                                  # 40 fifth-frames: drop 8 at each end
  out = get_feature_set("frames2d_64").compute(video_clip(index_frames(n)))
  assert out["frames2d_mask"].all()
  levels = source_levels(out["frames2d"])
  taken = np.arange(0, n, 5)
  start = (len(taken) - 24) // 2
  np.testing.assert_array_equal(levels, taken[start:start + 24])


def test_face_boxes_drive_the_crop():
  n = 20
  frames = np.zeros((n, 120, 160, 3), dtype=np.uint8)
  boxes = np.zeros((n, 4), dtype=np.float32)
  for i in range(n):                      # a "face" that walks right
    x = 10 + 4 * i
    frames[i, 40:80, x:x + 40] = 200
    boxes[i] = (x, 40, 40, 40)
  out = get_feature_set("frames2d_64", "1.0.0").compute(video_clip(frames, boxes=boxes))
  real = out["frames2d"][out["frames2d_mask"]]
  assert np.all(real[:, 16:48, 16:48] == 200)  # the face stays centred
  # 2.0.0 aligns to the eyes: boxes without landmarks are refused, not box-cropped.
  with pytest.raises(InputError, match="eye landmarks"):
    get_feature_set("frames2d_64").compute(video_clip(frames, boxes=boxes))


def _tilting_face(n: int = 20, size=(180, 240)):
  """A gray 'face' with two white eyes that walks right, grows and tilts from
  -30 to +30 degrees; returns frames, boxes and landmarks (T, 6, 2)."""
  frames = np.full((n, *size, 3), 30, np.uint8)
  boxes = np.zeros((n, 4), np.float32)
  marks = np.zeros((n, 6, 2), np.float32)
  for i in range(n):
    angle = np.radians(-30 + 60 * i / (n - 1))
    half = 20 + i                                   # half the eye distance, px
    centre = np.array([90 + 2 * i, 80.0])
    along = np.array([np.cos(angle), np.sin(angle)])
    eyes = [centre - half * along, centre + half * along]
    cv2.circle(frames[i], (int(centre[0]), int(centre[1] + half)), int(2.2 * half),
               (120, 120, 120), -1)
    for e in eyes:
      cv2.circle(frames[i], (int(round(e[0])), int(round(e[1]))), 3, (255, 255, 255), -1)
    marks[i, :2] = eyes
    marks[i, 2:] = centre
    boxes[i] = (centre[0] - 2 * half, centre[1] - half, 4 * half, 4 * half)
  return frames, boxes, marks


def test_aligned_crops_put_the_eyes_level_at_a_fixed_place():
  """Whatever the tilt, size and position of the face, 2.0.0's crops put the
  eyes at the same two pixels: level, 30 % of the width apart, 40 % down."""
  frames, boxes, marks = _tilting_face()
  crops = video_lib.align_to_eyes(frames, marks[:, :2], size=(64, 64), gray=True)[..., 0]
  want = [(round(0.4 * 64), round(32 - 0.15 * 64)), (round(0.4 * 64), round(32 + 0.15 * 64))]
  for crop in crops:
    for row, col in want:
      # The 3-px dots are area-averaged when shrunk: bright, not white.
      assert crop[row - 2:row + 3, col - 2:col + 3].max() > 150, "an eye is not in place"
    ys, xs = np.nonzero(crop > 150)
    assert ys.max() - ys.min() <= 6          # both eyes on one level row band
  # The box crops of 1.0.0 keep the tilt: the eyes' rows differ at +-30 degrees.
  boxed = crop_to_boxes(frames[[0, -1]], boxes[[0, -1]], size=(64, 64), gray=True)[..., 0]
  for crop in boxed:
    ys, _ = np.nonzero(crop > 150)
    assert ys.max() - ys.min() > 10


def test_aligned_feature_set_uses_the_tracked_eyes():
  frames, boxes, marks = _tilting_face(30)
  media = video_clip(frames, boxes=boxes, landmarks=marks)
  out = get_feature_set("frames2d_64").compute(media)
  real = out["frames2d"][out["frames2d_mask"]]
  np.testing.assert_array_equal(
      real, video_lib.align_to_eyes(frames[::5], marks[::5, :2], size=(64, 64)))
  # Eyes given in the other order are the same eyes.
  swapped = marks.copy()
  swapped[:, [0, 1]] = marks[:, [1, 0]]
  np.testing.assert_array_equal(
      video_lib.align_to_eyes(frames, swapped[:, :2], size=(32, 32)),
      video_lib.align_to_eyes(frames, marks[:, :2], size=(32, 32)))
  with pytest.raises(ValueError, match="eyes coincide"):
    video_lib.align_to_eyes(frames[:1], np.zeros((1, 2, 2)), size=(32, 32))


def test_versions_of_a_face_set_and_their_detectors():
  from input_pipeline.features import FEATURE_SET_VERSIONS
  for name in ("frames3d_gray_80x70x30", "frames2d_64", "stip", "keyframe_mel", "snippets"):
    versions = FEATURE_SET_VERSIONS[name]
    assert versions["1.0.0"].face_detector == "haar"
    assert versions["2.0.0"].face_detector == "blazeface"
    assert get_feature_set(name) is versions["2.0.0"]
    assert versions["1.0.0"].spec == versions["2.0.0"].spec  # old data reads the same way
  with pytest.raises(ValueError, match="has no version '9.0.0'"):
    get_feature_set("stip", "9.0.0")
  frames, boxes, marks = _tilting_face(8)
  tracked = ClipMedia(clip_id="c", frames=frames, fps=30.0, face_boxes=boxes,
                      face_landmarks=marks, face_detector="blazeface")
  with pytest.raises(RuntimeError, match="decode it with detector='haar'"):
    get_feature_set("frames2d_64", "1.0.0").compute(tracked)


def test_missing_video_and_bad_video_name_the_clip():
  media = ClipMedia(clip_id="1001_DFA_ANG_XX", audio=np.zeros(100, np.float32),
                    sample_rate=16000)
  for name in VIDEO_SETS:
    with pytest.raises(MissingModalityError) as info:
      get_feature_set(name).compute(media)
    assert info.value.modality == "video" and "1001_DFA_ANG_XX" in str(info.value)
  no_rate = video_clip(index_frames(10), fps=None, clip_id="x-no-fps")
  with pytest.raises(InputError, match="x-no-fps"):
    get_feature_set("frames3d_gray_80x70x30").compute(no_rate)
  wrong_boxes = video_clip(index_frames(10), boxes=np.zeros((3, 4), np.float32),
                           clip_id="x-boxes")
  with pytest.raises(InputError, match="x-boxes"):
    get_feature_set("frames2d_64").compute(wrong_boxes)


# -------------------------------------------------------------------- key frame

def blurred_sequence(n: int, sharp_at: int, seed: int = 0) -> np.ndarray:
  """A textured scene, out of focus in every frame but one."""
  rng = np.random.default_rng(seed)
  texture = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
  frames = []
  for i in range(n):
    frame = texture if i == sharp_at else cv2.GaussianBlur(texture, (0, 0), 2.5 + 0.05 * i)
    frames.append(frame)
  return np.stack(frames)


@pytest.mark.parametrize("sharp_at", [0, 11, 29])
def test_keyframe_is_the_one_sharp_frame(sharp_at):
  frames = blurred_sequence(30, sharp_at)
  assert keyframe_lib.select_keyframes(frames)[0] == sharp_at
  sr = 16000
  t = np.arange(sr) / sr
  media = ClipMedia("kf", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr,
                    frames, 30.0, None)
  out = get_feature_set("keyframe_mel").compute(media)
  assert out["keyframe_index"] == sharp_at
  np.testing.assert_array_equal(out["keyframe"], crop_to_boxes(frames[sharp_at:sharp_at + 1],
                                                               None, (96, 96))[0])
  assert out["mel_image"].min() == 0.0 and out["mel_image"].max() == 1.0


def test_keyframe_skips_a_dark_frame_even_if_it_is_the_sharpest():
  rng = np.random.default_rng(5)
  texture = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
  frames = np.stack([cv2.GaussianBlur(texture, (0, 0), 3.0 + 0.05 * i) for i in range(20)])
  frames[5] = cv2.GaussianBlur(texture, (0, 0), 0.8)       # in focus, well exposed
  # Frame 12: under-exposed sensor noise, sharper and busier than frame 5.
  frames[12] = rng.integers(0, 120, (96, 96, 3), dtype=np.uint8)
  m = keyframe_lib.frame_measures(frames)
  assert int(np.argmax(m["sharpness"])) == 12              # sharpness alone picks it
  assert m["entropy"][12] > m["entropy"][5] and m["contrast"][12] > m["contrast"][5]
  assert keyframe_lib.select_keyframes(frames)[0] == 5


def test_several_keyframes_are_the_sharpest_of_each_shot():
  first = blurred_sequence(14, sharp_at=3, seed=1)
  second = 255 - blurred_sequence(10, sharp_at=6, seed=2)   # other histograms
  # Frame 7 of the second shot is nearly as good as its frame 6: a slight blur.
  second[7] = cv2.addWeighted(second[6], 0.8, cv2.GaussianBlur(second[6], (0, 0), 1.0),
                              0.2, 0.0)
  frames = np.concatenate([first, second])
  chosen = keyframe_lib.select_keyframes(frames, n=2)
  assert sorted(chosen.tolist()) == [3, 14 + 6]


# ------------------------------------------------------------------------- STIP

def oscillating_blob_volume(n: int = 48, size: int = 64, static: bool = False
                            ) -> np.ndarray:
  """A bright square swinging left and right in the top-left quadrant of a
  textured, otherwise still scene (speed changes sign: that is what Harris-3D finds)."""
  rng = np.random.default_rng(3)
  background = cv2.GaussianBlur(rng.integers(60, 120, (size, size), dtype=np.uint8),
                                (0, 0), 1.5)
  frames = np.repeat(background[None], n, axis=0)
  for i in range(n):
    x = int(round(12 + 6 * np.sin(2 * np.pi * (0 if static else i) / 10)))
    frames[i, 10:20, x:x + 10] = 230
  return frames


def test_stip_finds_points_where_motion_is():
  moving = oscillating_blob_volume()
  still = oscillating_blob_volume(static=True)
  moving_vec, moving_count = stip_lib.stip_features(moving)
  still_vec, still_count = stip_lib.stip_features(still)
  assert moving_count >= 10 and moving_count > 5 * max(still_count, 1)
  assert np.any(moving_vec != 0) and np.all(np.isfinite(moving_vec))
  volume = (moving.astype(np.float32) - moving.mean()) / moving.std()
  points, _ = stip_lib.interest_points(stip_lib.harris3d(volume)[0])
  # The square sweeps x in [6, 28) and y in [10, 20): points sit on or by it.
  near = (points[:, 1] < 20 + 5) & (points[:, 2] < 28 + 5)
  assert near.mean() > 0.9


def test_stip_set_on_clip_with_motion_and_without():
  def clip(static):
    gray = oscillating_blob_volume(n=96, size=96, static=static)
    return video_clip(np.repeat(gray[..., None], 3, axis=-1), fps=30.0)

  moving = get_feature_set("stip").compute(clip(False))
  still = get_feature_set("stip").compute(clip(True))
  assert moving["stip"].shape == (162,) and moving["stip_count"].shape == ()
  assert moving["stip_count"] > 5 * max(int(still["stip_count"]), 1)
  assert np.all(still["stip"] == 0) == (still["stip_count"] == 0)
  # Per point, HOG and HOF parts have unit norm, so their means have norm <= 1.
  assert 0 < np.linalg.norm(moving["stip"][:72]) <= 1 + 1e-5
  assert 0 < np.linalg.norm(moving["stip"][72:]) <= 1 + 1e-5
