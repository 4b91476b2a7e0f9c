"""face: the shared Haar detector on real video, and tracking fallbacks/smoothing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from input_pipeline import media
from input_pipeline.face import (CENTRE, DETECTED, LAST_BOX, FaceDetector, centre_box,
                                 track_faces, track_from_detections)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FLVS = sorted((FIXTURES / "crema_d" / "VideoFlash").glob("*.flv"))

needs_fixtures = pytest.mark.skipif(not FLVS, reason="shared CREMA-D fixtures absent")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
  return FaceDetector()


@pytest.fixture(scope="module")
def flv_frames() -> np.ndarray:
  frames, _ = media.read_video(FLVS[0], max_frames=45)
  return frames


def _centre(box) -> np.ndarray:
  x, y, w, h = box
  return np.array([x + w / 2, y + h / 2])


@needs_fixtures
@pytest.mark.parametrize("path", FLVS, ids=[p.stem for p in FLVS])
def test_haar_finds_the_face_in_real_crema_d_video(detector, path):
  frames, _ = media.read_video(path)
  sample = frames[::6]
  boxes = [detector.detect(f) for f in sample]
  hits = [b for b in boxes if b is not None]
  assert len(hits) >= 0.8 * len(sample)
  h, w = frames.shape[1:3]
  for x, y, bw, bh in hits:
    # A face box lies inside the frame and is a sizeable part of a head-and-
    # shoulders shot, not a speck in the background.
    assert 0 <= x and 0 <= y and x + bw <= w + 1 and y + bh <= h + 1
    assert 0.1 * h < bh < 0.9 * h


@needs_fixtures
def test_detector_survives_pickling_after_use(detector, flv_frames):
  before = detector.detect(flv_frames[0])
  clone = pickle.loads(pickle.dumps(detector))
  assert clone.detect(flv_frames[0]) == before


@needs_fixtures
def test_track_holds_last_box_when_the_face_is_blanked(detector, flv_frames):
  frames = flv_frames[:30].copy()
  first = track_faces(frames[:5], detector)
  assert (first.source == DETECTED).all()
  x, y, w, h = first.boxes[-1]
  # Paint over a generous region around the face in the second half of the clip.
  x0, y0 = int(max(0, x - 0.4 * w)), int(max(0, y - 0.4 * h))
  x1, y1 = int(x + 1.4 * w), int(y + 1.5 * h)
  frames[15:, y0:y1, x0:x1] = frames[15:, y0:y1, x0:x1].mean(axis=(1, 2), keepdims=True)
  track = track_faces(frames, detector)
  assert (track.source[15:] == LAST_BOX).all()
  assert (track.source[:15] == DETECTED).mean() >= 0.8
  assert track.hit_rate == pytest.approx((track.source == DETECTED).mean())
  # Held boxes stay where the face was last seen.
  np.testing.assert_allclose(track.boxes[15:], np.repeat(track.boxes[14:15], 15, 0))
  assert np.linalg.norm(_centre(track.boxes[20]) - _centre(first.boxes[-1])) < 0.2 * w


def test_track_falls_back_to_centre_crop_without_any_face(detector):
  rng = np.random.default_rng(0)
  frames = np.repeat(rng.integers(90, 110, (1, 120, 200, 3), dtype=np.uint8), 6, axis=0)
  track = track_faces(frames, detector, every=2)
  assert (track.source == CENTRE).all()
  assert track.hit_rate == 0.0 and not track.found
  assert track.boxes.shape == (6, 4) and track.boxes.dtype == np.float32
  x, y, w, h = track.boxes[0]
  assert w == h == 120                           # the largest square that fits
  assert x + w / 2 == 100 and y + h / 2 == 60    # centred
  np.testing.assert_array_equal(track.boxes[0], np.asarray(centre_box(120, 200), np.float32))


def test_smoothing_reduces_jitter_and_rejects_an_outlier():
  rng = np.random.default_rng(0)
  n = 60
  true = np.array([100.0, 50.0, 80.0, 80.0])
  noisy = true + rng.normal(0.0, 3.0, (n, 4))
  noisy[30] = [10.0, 10.0, 30.0, 30.0]           # one false hit in the background
  track = track_from_detections(n, (240, 320), np.arange(n), [tuple(b) for b in noisy])
  assert (track.source == DETECTED).all()
  raw_step = np.abs(np.diff(np.delete(noisy, 30, 0), axis=0)).mean()
  smooth_step = np.abs(np.diff(track.boxes, axis=0)).mean()
  assert smooth_step < 0.6 * raw_step
  assert np.abs(track.boxes[30] - true).max() < 6.0   # the outlier barely moves it
  assert np.abs(track.boxes - true).mean() < np.abs(np.delete(noisy, 30, 0) - true).mean()


def test_sparse_detections_are_interpolated_and_held_at_the_ends():
  n = 12
  indices = np.array([2, 5, 8])
  boxes = [(0.0, 0.0, 20.0, 20.0), None, (30.0, 0.0, 20.0, 20.0)]
  track = track_from_detections(n, (100, 100), indices, boxes, median_window=1,
                                mean_window=1)
  assert track.hit_rate == pytest.approx(2 / 3)
  assert list(np.flatnonzero(track.source == DETECTED)) == [2, 8]
  assert (np.delete(track.source, [2, 8]) == LAST_BOX).all()
  xs = track.boxes[:, 0]
  np.testing.assert_allclose(xs[:3], 0.0)          # held before the first detection
  np.testing.assert_allclose(xs[8:], 30.0)         # held after the last
  np.testing.assert_allclose(xs[2:9], np.linspace(0.0, 30.0, 7), atol=1e-4)  # linear between


@needs_fixtures
def test_every_n_detects_on_a_subset_including_the_last_frame(detector, flv_frames):
  track = track_faces(flv_frames[:10], detector, every=4)
  # The face is visible throughout, so exactly the attempted frames are DETECTED.
  assert list(np.flatnonzero(track.source == DETECTED)) == [0, 4, 8, 9]
  assert track.hit_rate == 1.0


def _assert_same_track(got, want):
  np.testing.assert_array_equal(got.boxes, want.boxes)
  np.testing.assert_array_equal(got.source, want.source)
  assert got.hit_rate == want.hit_rate


@needs_fixtures
@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_track_equals_sequential_on_real_video(threads):
  """predict's concurrent detections give prepare's sequential track, bit for bit."""
  from input_pipeline.clip import FACE_DETECT_EVERY, VIDEO_MAX_SIDE
  frames, _ = media.read_video(FLVS[-1], max_side=VIDEO_MAX_SIDE)
  want = track_faces(frames, FaceDetector(), every=FACE_DETECT_EVERY)
  assert want.found  # A real face, not the centre-crop fallback.
  detector = FaceDetector()
  for _ in range(2):  # Again with the detector's clones reused.
    got = track_faces(frames, detector, every=FACE_DETECT_EVERY, threads=threads)
    _assert_same_track(got, want)
  assert len(detector._clones) == threads - 1  # pylint: disable=protected-access


def test_threaded_track_equals_sequential_on_a_synthetic_clip():
  from input_pipeline.naming import RavdessName
  from input_pipeline.synth import synth_clip
  frames, _, _, _ = synth_clip(RavdessName(1, 1, 5, 2, 1, 1, 7), 0, 1.0)
  frames = frames[:40]
  want = track_faces(frames, FaceDetector(), every=3)
  assert want.found
  _assert_same_track(track_faces(frames, every=3, threads=4), want)
  # More threads than detections, and one detection only.
  _assert_same_track(track_faces(frames[:4], every=3, threads=8),
                     track_faces(frames[:4], FaceDetector(), every=3))
  _assert_same_track(track_faces(frames[:1], threads=2),
                     track_faces(frames[:1], FaceDetector()))


def test_threads_must_be_positive():
  frames = np.zeros((2, 40, 40, 3), np.uint8)
  with pytest.raises(ValueError, match="threads"):
    track_faces(frames, threads=0)


@needs_fixtures
def test_detector_with_clones_survives_pickling(flv_frames):
  detector = FaceDetector()
  track_faces(flv_frames[:6], detector, threads=2)
  clone = pickle.loads(pickle.dumps(detector))
  assert clone._clones == [] and clone._cascade is None  # pylint: disable=protected-access
  assert clone.detect(flv_frames[0]) == detector.detect(flv_frames[0])
