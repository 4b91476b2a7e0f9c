"""face: the shared detectors (BlazeFace, the default, and Haar) on real video,
tracking (held boxes, smoothing, the largest face tracked over time), and a clip
with no face at all as bad input for every path that crops faces."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from input_pipeline import media
from input_pipeline.errors import InputError
from input_pipeline import face as face_lib
from input_pipeline.face import (DETECTED, LAST_BOX, BlazeFaceDetector, Face, FaceDetector,
                                 NoFaceError, track_faces, track_from_detections)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FLVS = sorted((FIXTURES / "crema_d" / "VideoFlash").glob("*.flv"))

needs_fixtures = pytest.mark.skipif(not FLVS, reason="shared CREMA-D fixtures absent")


@pytest.fixture(scope="module", params=["blazeface", "haar"])
def detector(request):
  return face_lib.make_detector(request.param)


@pytest.fixture(scope="module")
def flv_frames() -> np.ndarray:
  frames, _ = media.read_video(FLVS[0], max_frames=45)
  return frames


def _centre(box) -> np.ndarray:
  x, y, w, h = box
  return np.array([x + w / 2, y + h / 2])


@needs_fixtures
@pytest.mark.parametrize("path", FLVS, ids=[p.stem for p in FLVS])
def test_detectors_find_the_face_in_real_crema_d_video(detector, path):
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


def test_a_clip_without_any_face_is_bad_input_naming_the_file(detector):
  """No centre crop of background: the clip is refused, with the frames searched."""
  rng = np.random.default_rng(0)
  frames = np.repeat(rng.integers(90, 110, (1, 120, 200, 3), dtype=np.uint8), 6, axis=0)
  searched = len(range(0, 6, 2)) + 1  # every 2nd frame, and the last
  with pytest.raises(NoFaceError) as e:
    track_faces(frames, detector, every=2, path="clips/x.mp4")
  assert isinstance(e.value, InputError) and e.value.path == "clips/x.mp4"
  assert str(e.value) == f"clips/x.mp4: no face found in any of {searched} frames searched (of 6)"
  with pytest.raises(NoFaceError, match=r"^clips/x.mp4: no face found in any of 6 frames$"):
    track_faces(frames, detector, every=1, path="clips/x.mp4")
  with pytest.raises(NoFaceError, match="no face found in any of 3 frames"):
    track_from_detections(9, np.array([0, 4, 8]), [None, None, None])


def test_smoothing_reduces_jitter_and_rejects_an_outlier():
  rng = np.random.default_rng(0)
  n = 60
  true = np.array([100.0, 50.0, 80.0, 80.0])
  noisy = true + rng.normal(0.0, 3.0, (n, 4))
  noisy[30] = [10.0, 10.0, 30.0, 30.0]           # one false hit in the background
  track = track_from_detections(n, np.arange(n), [tuple(b) for b in noisy])
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
  track = track_from_detections(n, indices, boxes, median_window=1,
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
  assert (want.source == DETECTED).any()  # A real face was found.
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
  want = track_faces(frames, BlazeFaceDetector(), every=3)
  assert (want.source == DETECTED).any()
  _assert_same_track(track_faces(frames, every=3, threads=4), want)  # The default.
  np.testing.assert_array_equal(track_faces(frames, every=3, threads=4).landmarks,
                                want.landmarks)
  # More threads than detections, and one detection only.
  _assert_same_track(track_faces(frames[:4], every=3, threads=8),
                     track_faces(frames[:4], BlazeFaceDetector(), every=3))
  _assert_same_track(track_faces(frames[:1], threads=2),
                     track_faces(frames[:1], BlazeFaceDetector()))


def test_threads_must_be_positive():
  frames = np.zeros((2, 40, 40, 3), np.uint8)
  with pytest.raises(ValueError, match="threads"):
    track_faces(frames, threads=0)


@needs_fixtures
@pytest.mark.parametrize("make", [FaceDetector, BlazeFaceDetector])
def test_detector_with_clones_survives_pickling(flv_frames, make):
  detector = make()
  track_faces(flv_frames[:6], detector, threads=2)
  clone = pickle.loads(pickle.dumps(detector))
  assert clone._clones == [] and clone._model is None  # pylint: disable=protected-access
  assert clone.detect(flv_frames[0]) == detector.detect(flv_frames[0])


def test_prepare_skips_a_take_without_a_face_and_audio_sets_ignore_faces(tmp_path, no_face_mp4):
  """prepare's per-take work: every video set skips the take with the cause (the
  report lists it), and audio-only decoding does not look for faces."""
  from input_pipeline import clip as clip_lib
  from input_pipeline import features
  from input_pipeline.builders.work import Skip, Take, compute_example
  mp4 = no_face_mp4(tmp_path / "01-01-01-01-01-01-01.mp4")
  n = len(media.read_video(mp4, max_side=clip_lib.VIDEO_MAX_SIDE)[0])
  searched = len(set(range(0, n, clip_lib.FACE_DETECT_EVERY)) | {n - 1})
  cause = f"no face found in any of {searched} frames searched (of {n})"
  take = Take("01-01-01-01-01-01", actor=1, label=0, emotion="neutral", audio_file=str(mp4),
              video_file=str(mp4), files=(str(mp4),))
  with pytest.raises(NoFaceError) as e:
    clip_lib.decode(take.take_id, audio_file=str(mp4), video_file=str(mp4), need_audio=True,
                    need_video=True)
  assert str(e.value) == f"{mp4}: {cause}"
  video_sets = [n for n, fs in features.FEATURE_SETS.items() if "video" in fs.modalities]
  assert video_sets
  for name in video_sets:
    _, result = compute_example(take, name)
    assert isinstance(result, Skip), name
    assert (result.reason, result.files, result.take_id) == (cause, take.files, take.take_id)
  # Audio-only sets decode no frame and track no face (their features cost a numba
  # compile, so test_predict runs one on this kind of clip).
  decoded = clip_lib.decode(take.take_id, audio_file=str(mp4), video_file=str(mp4),
                            need_audio=True)
  assert decoded.frames is None and decoded.face_hit_rate == clip_lib.NO_VIDEO
  assert decoded.audio is not None


# ------------------------------------------------------------------ BlazeFace


@needs_fixtures
def test_blazeface_on_opencv_matches_the_tflite_interpreter(flv_frames):
  """cv2.dnn's TFLite import runs the model as TensorFlow Lite's own interpreter
  does (an independent runtime of the same file), on a real frame."""
  tf = pytest.importorskip("tensorflow")
  import cv2
  detector = BlazeFaceDetector()
  frame = flv_frames[20]
  side = max(frame.shape[:2])
  square = np.zeros((side, side, 3), np.uint8)
  oy, ox = (side - frame.shape[0]) // 2, (side - frame.shape[1]) // 2
  square[oy:oy + frame.shape[0], ox:ox + frame.shape[1]] = frame
  image = cv2.resize(square, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
  image = image / 127.5 - 1.0
  got_scores, got_boxes = detector._infer(image)  # pylint: disable=protected-access
  interpreter = tf.lite.Interpreter(model_path=face_lib.blazeface_model_file())
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
  interpreter.invoke()
  want = {d["name"]: interpreter.get_tensor(d["index"])
          for d in interpreter.get_output_details()}
  np.testing.assert_allclose(got_scores.reshape(-1), want["classificators"].reshape(-1),
                             atol=1e-2)
  np.testing.assert_allclose(got_boxes.reshape(-1, 16), want["regressors"].reshape(-1, 16),
                             atol=1e-2)
  assert want["classificators"].max() > 0  # A face is there: the test compares a hit.


REAL_VIDEOS = FLVS + sorted((FIXTURES / "ravdess" / "video_no_audio").glob("*.mp4"))


@needs_fixtures
@pytest.mark.parametrize("path", REAL_VIDEOS, ids=[p.stem for p in REAL_VIDEOS])
def test_blazeface_finds_faces_on_at_least_as_many_frames_as_haar(path):
  """Issue 21's bar, on every real fixture, decoded as prepare decodes them."""
  from input_pipeline.clip import VIDEO_MAX_SIDE
  frames, _ = media.read_video(path, max_side=VIDEO_MAX_SIDE)
  sample = frames[::5]
  blaze = sum(BlazeFaceDetector().detect(f) is not None for f in sample)
  haar = sum(FaceDetector().detect(f) is not None for f in sample)
  assert blaze >= haar and blaze > 0


def _rotate(frame: np.ndarray, degrees: float) -> np.ndarray:
  import cv2
  h, w = frame.shape[:2]
  m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
  return cv2.warpAffine(frame, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _eye_angle(face: Face) -> float:
  (x0, y0), (x1, y1) = face.landmarks[face_lib.RIGHT_EYE], face.landmarks[face_lib.LEFT_EYE]
  return float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


@needs_fixtures
def test_blazeface_landmarks_follow_a_tilted_head(flv_frames):
  """The eyes sit in the upper half of the box, the subject's right eye on the
  image's left, and tilting the frame turns the eye line by the tilt; Haar, a
  frontal-only cascade, is not relied on for tilted faces."""
  detector = BlazeFaceDetector()
  frame = flv_frames[10]
  upright = max(detector.detect_all(frame), key=lambda f: f.area)
  x, y, w, h = upright.box
  for ex, ey in upright.landmarks[[face_lib.RIGHT_EYE, face_lib.LEFT_EYE]]:
    assert x < ex < x + w and y < ey < y + h / 2
  assert upright.landmarks[face_lib.RIGHT_EYE, 0] < upright.landmarks[face_lib.LEFT_EYE, 0]
  for degrees in (-25.0, 25.0):
    faces = detector.detect_all(_rotate(frame, degrees))
    assert len(faces) == 1
    # getRotationMatrix2D turns counter-clockwise on screen: the eye line's
    # angle (y down) decreases by the rotation.
    assert _eye_angle(faces[0]) - _eye_angle(upright) == pytest.approx(-degrees, abs=5.0)


def _face(x, y, size, score=0.9):
  return Face((float(x), float(y), float(size), float(size)), score)


def test_the_largest_face_tracked_over_time_is_chosen_and_counted():
  """Two people: the larger one is tracked; a large one-frame false hit is not a
  face tracked over time and neither is chosen nor counted."""
  per_frame = []
  for i in range(10):
    faces = [_face(10 + i, 10, 40), _face(200 - i, 20, 60)]
    if i == 4:
      faces.append(_face(100, 100, 150))  # Bigger than both, on one frame only.
    per_frame.append(faces)
  tracks = face_lib.link_faces(per_frame)
  assert sorted(len(t) for t in tracks) == [1, 10, 10]
  chosen, n_faces = face_lib.choose_track(tracks)
  assert n_faces == 2
  assert all(f.box[2] == 60 for f in chosen.values()) and len(chosen) == 10


@needs_fixtures
def test_a_clip_with_two_faces_reports_both_and_tracks_the_larger(flv_frames, caplog):
  """Two real faces side by side (the fixture's head next to a 70 % copy): two
  faces tracked, the warning names the clip, and the track follows the large one."""
  import cv2
  from input_pipeline import clip as clip_lib
  x, y, w, h = (int(v) for v in BlazeFaceDetector().detect(flv_frames[0]))
  frames = np.ascontiguousarray(flv_frames[:12, max(0, y - h // 2):y + 3 * h // 2,
                                           max(0, x - h // 2):x + 3 * h // 2])
  fh, fw = frames.shape[1:3]
  sw, sh = int(0.7 * fw), int(0.7 * fh)
  small = np.stack([cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA) for f in frames])
  pair = np.zeros((len(frames), fh, fw + sw, 3), np.uint8)
  pair[:, :, :fw] = frames
  pair[:, (fh - sh) // 2:(fh - sh) // 2 + sh, fw:] = small
  alone = track_faces(frames, BlazeFaceDetector(), every=3)
  assert alone.n_faces == 1
  track = track_faces(pair, BlazeFaceDetector(), every=3)
  assert track.n_faces == 2
  # The same face (another letterbox scale moves its box by a few pixels).
  assert min(face_lib.box_iou(a, b) for a, b in zip(track.boxes, alone.boxes)) > 0.85
  clip = clip_lib.DecodedClip(clip_id="two.mp4", frames=pair, fps=30.0, video_file="two.mp4")
  with caplog.at_level("WARNING"):
    tracked = clip_lib.track_faces(clip)
  assert tracked.faces_tracked == 2 and tracked.face_detector == "blazeface"
  assert "two.mp4: 2 faces tracked; using the largest" in caplog.text


def test_landmarks_are_smoothed_and_interpolated_with_the_boxes():
  marks = [np.full((6, 2), 10.0), None, np.full((6, 2), 30.0)]
  boxes = [(0.0, 0.0, 20.0, 20.0), None, (30.0, 0.0, 20.0, 20.0)]
  track = track_from_detections(9, np.array([0, 4, 8]), boxes, median_window=1,
                                mean_window=1, landmarks=marks)
  assert track.landmarks.shape == (9, 6, 2)
  np.testing.assert_allclose(track.landmarks[:, 0, 0], np.linspace(10.0, 30.0, 9), atol=1e-4)
  assert track_from_detections(9, np.array([0, 4, 8]), boxes).landmarks is None


def test_unknown_detector_name_is_refused():
  with pytest.raises(ValueError, match="unknown face detector 'yolo'"):
    face_lib.make_detector("yolo")


def test_blazeface_finds_the_synthetic_faces_and_their_eyes():
  """The synthetic corpus (which the suite and the demo prepare video sets from)
  stays usable with the default detector: faces on (nearly) every frame of every
  emotion, each eye landmark in the upper half of the rendered head."""
  from input_pipeline.naming import RavdessName
  from input_pipeline.synth import plan_clip, synth_clip
  detector = BlazeFaceDetector()
  hits, total, worst = 0, 0, 1.0
  for actor in (1, 8, 13, 16, 20):
    for emotion in range(1, 9):
      name = RavdessName(1, 1, emotion, 1 if emotion == 1 else 2, 1 + actor % 2, 1, actor)
      plan = plan_clip(name, 0, 1.0)
      frames, _, _, _ = synth_clip(name, 0, 1.0)
      found = [max(faces, key=lambda f: f.area) if faces else None
               for faces in (detector.detect_all(fr) for fr in frames[::12])]
      hits += sum(f is not None for f in found)
      total += len(found)
      worst = min(worst, np.mean([f is not None for f in found]))
      for f in found:
        if f is None:
          continue
        for ex, ey in f.landmarks[[face_lib.RIGHT_EYE, face_lib.LEFT_EYE]]:
          assert abs(ex - plan.actor.cx) < plan.actor.face_w
          assert plan.actor.cy - plan.actor.face_h < ey < plan.actor.cy + 0.2 * plan.actor.face_h
  assert hits / total >= 0.95
  assert worst >= 0.5


@needs_fixtures
def test_haar_tracks_as_the_1_0_0_sets_were_prepared(flv_frames):
  """Haar keeps 1.0.0's rule, the largest box of each frame, so 1.0.0 data can be
  reproduced; BlazeFace ignores a large face seen on one frame only."""
  import cv2
  x, y, w, h = (int(v) for v in FaceDetector().detect(flv_frames[0]))
  # Room on the right, where frame 6 alone gets a copy of its head, 1.6x larger.
  n, fh, fw = 15, flv_frames.shape[1], flv_frames.shape[2]
  m = w // 3
  region = flv_frames[6, max(0, y - m):y + h + m, max(0, x - m):x + w + m]
  big = cv2.resize(region, None, fx=1.6, fy=1.6)[:fh]
  frames = np.full((n, fh, fw + big.shape[1], 3), 90, np.uint8)
  frames[:, :, :fw] = flv_frames[:n]
  frames[6, :big.shape[0], fw:] = big
  indices = np.array([0, 3, 6, 9, 12, 14])  # Every 3rd, and the last.
  haar = FaceDetector()
  assert len(haar.detect_all(frames[6])) >= 2  # Both faces, on that frame.
  old = track_from_detections(15, indices, [haar.detect(frames[i]) for i in indices])
  got = track_faces(frames, haar, every=3)
  _assert_same_track(got, old)
  assert max(f.area for f in haar.detect_all(frames[6])) > 2 * w * h  # The giant wins there.
  assert old.source[6] == DETECTED
  blaze = track_faces(frames, BlazeFaceDetector(), every=3)
  assert blaze.n_faces == 1
  assert blaze.boxes[6, 0] + blaze.boxes[6, 2] < fw  # The one-frame giant is not the track.
