"""Precompute throughput: `avjax prepare` against a serial librosa/OpenCV script
and against the ffmpeg decode-only floor, on the same synthetic clips.

    python -m benchmarks.precompute [--features mfcc frames3d_gray_80x70x30]
                                    [--actors 4 --clips-per-emotion 2] [--json OUT]

Why three methods: the serial script is what a researcher would otherwise write
(target: avjax >= 1.8x its clips/s on 2 cores); the floor is the cost of merely
decoding the clips with the same parallelism as avjax, so `avjax_time /
floor_time` says how much work avjax adds on top of decoding (target: <= 2).
For video sets a second floor, ffmpeg decode plus the same face detections
avjax runs (same frames, same parallelism, the set's detector), says how much
avjax adds on top of the work no face-cropping pipeline can skip; the
decode-only ratio stays printed. Video sets also time every registered version's
per-clip work side by side (`--versions`; 1.0.0: Haar box crops, 2.0.0:
BlazeFace, eye-aligned): the same worker pool decoding, tracking and computing
each take, which is prepare's per-take work without the TFDS write, and print
the newest version's clips/s over the oldest's (issue 21: frames3d >= 2x).

What is timed: avjax's whole `prepare` (worker pool start-up, decoding, face
tracking, features, TFDS ArrayRecord write, report) into a fresh data dir; the
serial script including its `np.save` writes; the floor's ffmpeg processes.
Corpus generation is not timed. Methods are interleaved per round so that load
changes on a shared machine hit all of them alike.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from benchmarks import common

# Feature set -> the modality it decodes. Only these have a serial baseline.
FEATURE_SETS = {"mfcc": "audio", "frames3d_gray_80x70x30": "video"}
DATASET = "ravdess"
DETECT_FLOOR = "decode + face detection floor"


# ------------------------------------------------------------------- the corpus


def bench_corpus(corpus: str, out: str, max_clips: int | None) -> list:
  """Symlinks the first `max_clips` takes of `corpus` into `out` (RAVDESS layout)
  and returns those takes, as the ravdess builder finds them there."""
  from input_pipeline.prepare import make_builder

  def takes_of(root):
    builder = make_builder(DATASET, tempfile.gettempdir(), "mfcc", progress=False)
    found = builder.discover(root)
    return sorted(found.takes, key=lambda t: (t.actor, t.take_id))

  takes = takes_of(corpus)
  if max_clips is not None:
    takes = takes[:max_clips]
  for take in takes:
    for f in take.files:
      dst = os.path.join(out, os.path.basename(os.path.dirname(f)), os.path.basename(f))
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      if not os.path.exists(dst):
        os.symlink(os.path.abspath(f), dst)
  return takes_of(out)


# ----------------------------------------------------------- the serial baseline
# Written the way a typical per-file research script is: librosa.load, one
# cv2.VideoCapture loop with a Haar detection on every frame, np.save per clip.
# The Haar cascade and its parameters are avjax's, so the comparison measures the
# pipeline, not detector settings.


def baseline_mfcc(wav_path: str) -> np.ndarray:
  import librosa
  y, sr = librosa.load(wav_path, sr=16000)
  mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=512, win_length=400,
                              hop_length=320, n_mels=64).T
  out = np.zeros((180, 20), np.float32)
  if len(mfcc) >= 180:
    start = (len(mfcc) - 180) // 2
    out[:] = mfcc[start:start + 180]
  else:
    out[:len(mfcc)] = mfcc
  return out


_CASCADE = None


def _cascade():
  global _CASCADE
  if _CASCADE is None:
    import cv2
    _CASCADE = cv2.CascadeClassifier(
        os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
  return _CASCADE


def baseline_frames3d(video_path: str) -> np.ndarray:
  import cv2
  cascade = _cascade()
  cap = cv2.VideoCapture(video_path)
  fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
  crops, box = [], None
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    min_side = max(20, int(0.12 * min(h, w)))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                     minSize=(min_side, min_side))
    if len(faces):
      box = max(faces, key=lambda f: f[2] * f[3])
    x, y, bw, bh = box if box is not None else ((w - min(h, w)) // 2, (h - min(h, w)) // 2,
                                                 min(h, w), min(h, w))
    mx, my = int(0.15 * bw), int(0.15 * bh)
    face = gray[max(0, y - my):y + bh + my, max(0, x - mx):x + bw + mx]
    crops.append(cv2.resize(face, (70, 80), interpolation=cv2.INTER_AREA))
  cap.release()
  window = int(round(3 * fps))
  start = max(0, (len(crops) - window) // 2)
  idx = np.minimum(start + (np.arange(30) * window // 30), len(crops) - 1)
  return np.stack([crops[i] for i in idx])[..., None]


def run_baseline(takes: Sequence, feature_set: str, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  for take in takes:
    if FEATURE_SETS[feature_set] == "audio":
      value = baseline_mfcc(take.audio_file)
    else:
      value = baseline_frames3d(take.video_file)
    np.save(os.path.join(out_dir, f"{take.take_id}.npy"), value)


# --------------------------------------------------------------------- the floor


def floor_command(path: str, modality: str) -> list[str]:
  """Decodes to the raw format avjax asks ffmpeg for, written to /dev/null."""
  from input_pipeline import media
  if modality == "audio":
    fmt = ["-map", "0:a:0", "-vn", "-ac", "1", "-f", "f32le"]
  else:
    fmt = ["-map", "0:v:0", "-an", "-f", "rawvideo", "-pix_fmt", "rgb24"]
  return [media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
          "-i", path, *fmt, os.devnull]


def run_floor(takes: Sequence, feature_set: str, workers: int) -> None:
  modality = FEATURE_SETS[feature_set]
  paths = [t.audio_file if modality == "audio" else t.video_file for t in takes]

  def decode(path):
    subprocess.run(floor_command(path, modality), check=True, capture_output=True)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    list(pool.map(decode, paths))


def run_detect_floor(takes: Sequence, workers: int, detector: str = "blazeface") -> None:
  """Decode + the same face detections: what no video pipeline with face crops
  can go below. Each clip is decoded by ffmpeg exactly as avjax decodes it
  (`media.read_video`, rgb24, at most VIDEO_MAX_SIDE px) and avjax's `detector`
  runs on the frames avjax detects on (every FACE_DETECT_EVERY-th and the last),
  with `workers` clips at a time and one OpenCV thread, as in avjax's workers; no
  tracking, crops or writing."""
  import cv2
  from input_pipeline import clip as clip_lib
  from input_pipeline import face as face_lib
  from input_pipeline import media

  def detect(path):
    frames, _ = media.read_video(path, max_side=clip_lib.VIDEO_MAX_SIDE)
    indices = np.arange(0, len(frames), clip_lib.FACE_DETECT_EVERY)
    if indices[-1] != len(frames) - 1:
      indices = np.append(indices, len(frames) - 1)
    det = face_lib.default_detector(detector)  # One per thread, as one per worker.
    for i in indices:
      det.detect_all(frames[i])

  threads = cv2.getNumThreads()
  cv2.setNumThreads(1)
  try:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(detect, [t.video_file for t in takes]))
  finally:
    cv2.setNumThreads(threads)


# ------------------------------------------------- per-version per-clip work


def version_work(task: tuple) -> int:
  """One take's work for one version of a set, in a pool worker: prepare's
  decode + face tracking (the version's detector) + features, no TFDS write."""
  from input_pipeline import clip as clip_lib
  from input_pipeline import features as features_lib
  take, name, version = task
  fs = features_lib.get_feature_set(name, version)
  decoded = clip_lib.decode(take.take_id, audio_file=take.audio_file,
                            video_file=take.video_file,
                            need_audio="audio" in fs.modalities,
                            need_video="video" in fs.modalities,
                            detector=fs.face_detector)
  return len(fs.compute(decoded.media()))


def run_version_work(takes: Sequence, feature_set: str, version: str, workers: int) -> None:
  """`version_work` on every take with prepare's pool (spawned, single-threaded
  workers: input_pipeline.builders.base._pool; as many as prepare would start),
  started afresh each run as prepare starts its own."""
  from input_pipeline.builders import base
  workers = base.worker_count(workers, len(takes), ("video",))  # As prepare decides.
  with base._pool(workers) as pool:  # pylint: disable=protected-access
    tasks = [(t, feature_set, version) for t in takes]
    if pool is None:
      list(map(version_work, tasks))
    else:
      list(pool.imap_unordered(version_work, tasks))


# ---------------------------------------------------------------------- avjax


def run_avjax(manual_dir: str, feature_set: str, data_dir: str, workers: int,
              expected: int) -> None:
  from input_pipeline.prepare import prepare
  with _quiet():
    report = prepare(DATASET, manual_dir, data_dir, feature_set, workers=workers,
                     progress=False)
  if report.prepared != expected or report.skipped:
    raise RuntimeError(f"avjax prepared {report.prepared}/{expected} clips; "
                       f"skipped: {report.skipped}")


@contextlib.contextmanager
def _quiet():
  """TFDS prints a banner per prepare; keep the benchmark's table readable."""
  import absl.logging
  level = absl.logging.get_verbosity()
  absl.logging.set_verbosity(absl.logging.ERROR)
  with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
    try:
      yield
    finally:
      absl.logging.set_verbosity(level)


# ----------------------------------------------------------------------- main


def bench_feature_set(feature_set: str, takes: Sequence, manual_dir: str, warm_dir: str,
                      warm_takes: Sequence, work: str, workers: int, repeat: int,
                      warmup: int, keep_data: str | None) -> dict:
  n = len(takes)
  counter = iter(range(10 ** 6))

  def fresh(prefix):
    return os.path.join(work, f"{prefix}-{feature_set}-{next(counter)}")

  last_avjax = []

  def avjax_fn():
    last_avjax.append(fresh("avjax"))
    run_avjax(manual_dir, feature_set, last_avjax[-1], workers, n)

  methods = {
      "avjax prepare": (avjax_fn, lambda: run_avjax(warm_dir, feature_set, fresh("warm"),
                                                    workers, len(warm_takes)),
                        f"workers={workers}, TFDS write included"),
      "serial librosa/cv2": (lambda: run_baseline(takes, feature_set, fresh("serial")),
                             lambda: run_baseline(warm_takes, feature_set, fresh("warm")),
                             "1 process, np.save included"),
      "ffmpeg decode floor": (lambda: run_floor(takes, feature_set, workers),
                              lambda: run_floor(warm_takes, feature_set, workers),
                              f"{workers} parallel ffmpeg, output discarded"),
  }
  video = FEATURE_SETS[feature_set] == "video"
  from input_pipeline import features as features_lib
  newest = features_lib.get_feature_set(feature_set)
  versions = sorted(features_lib.FEATURE_SET_VERSIONS[feature_set],
                    key=features_lib._version_key) if video else []  # pylint: disable=protected-access
  if video:
    det = newest.face_detector
    methods[DETECT_FLOOR] = (lambda: run_detect_floor(takes, workers, det),
                             lambda: run_detect_floor(warm_takes, workers, det),
                             f"{workers} threads: decode + avjax's {det} detections")
    for v in versions:
      fs_v = features_lib.get_feature_set(feature_set, v)
      methods[f"per-clip work {v}"] = (
          lambda v=v: run_version_work(takes, feature_set, v, workers),
          lambda v=v: run_version_work(warm_takes, feature_set, v, workers),
          f"{workers} workers: decode + {fs_v.face_detector} track + features, no write")
  results: dict[str, common.Measurement] = {}
  one_clip = None  # avjax's warm-up on one clip: its fixed cost (pool start, imports)
  for _ in range(warmup):
    for name, (_, warm_fn, note) in methods.items():
      if name == "avjax prepare":
        m = common.measure("avjax prepare, 1 clip", warm_fn, items=len(warm_takes),
                           unit="clips", note="warm-up run: ~fixed cost per prepare")
        one_clip = m if one_clip is None else one_clip
      else:
        warm_fn()
  for r in range(max(1, repeat)):
    names = list(methods) if r % 2 == 0 else list(reversed(methods))
    for name in names:
      fn, _, note = methods[name]
      m = common.measure(name, fn, items=n, unit="clips", note=note)
      if name in results:
        results[name].extend(m)
      else:
        results[name] = m
  if keep_data:
    from input_pipeline.prepare import prepared_path
    src = prepared_path(last_avjax[-1], DATASET, feature_set)
    dst = os.path.join(keep_data, DATASET, feature_set, os.path.basename(src))
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)

  ms = [results[k] for k in ("avjax prepare", "serial librosa/cv2", "ffmpeg decode floor")]
  avjax, serial, floor = ms
  if video:
    ms.append(results[DETECT_FLOOR])
    ms += [results[f"per-clip work {v}"] for v in versions]
  print(f"\n== {feature_set} ({FEATURE_SETS[feature_set]}): {n} clips ==")
  common.measurement_table(ms)
  ratios = [
      common.ratio_line(avjax.rate / serial.rate,
                        f"avjax / serial baseline, clips/s [{feature_set}]", at_least=1.8),
      common.ratio_line(avjax.median / floor.median,
                        f"avjax_time / floor_time [{feature_set}] (how many times the "
                        "decode-only time avjax takes)", at_most=2.0),
      common.ratio_line(floor.median / avjax.median,
                        f"floor_time / avjax_time [{feature_set}] (1.00 = as fast as "
                        "decoding alone)", at_least=0.5),
  ]
  if video:
    # The second floor: decoding plus the face detections every face-cropped set
    # needs (the decode-only floor above has none; Haar is ~90% of the work).
    detect_floor = results[DETECT_FLOOR]
    ratios.append(common.ratio_line(
        avjax.median / detect_floor.median,
        f"avjax_time / decode+detect_floor_time [{feature_set}] (floor = ffmpeg decode + "
        f"the same {newest.face_detector} detections avjax runs)", at_most=2.0))
    if len(versions) > 1:
      old, new = results[f"per-clip work {versions[0]}"], results[f"per-clip work {versions[-1]}"]
      ratios.append(common.ratio_line(
          new.rate / old.rate,
          f"{versions[-1]} / {versions[0]} clips/s [{feature_set}] (per-clip work: "
          f"{newest.face_detector} vs "
          f"{features_lib.get_feature_set(feature_set, versions[0]).face_detector})",
          at_least=2.0))
      print(f"info:  {old.cpu_median / max(new.cpu_median, 1e-9):.2f}  {versions[0]} CPU s / "
            f"{versions[-1]} CPU s [{feature_set}] (load-independent; not the target)")
  extra = {"serial_cpu_over_avjax_cpu": serial.cpu_median / avjax.cpu_median}
  # Not a target: CPU seconds barely depend on the machine's load, so this says
  # how much less work avjax does per clip, whatever the parallelism bought.
  print(f"info:  {serial.cpu_median / avjax.cpu_median:.2f}  serial CPU s / avjax CPU s "
        f"[{feature_set}] (work per clip, load-independent; not the target)")
  if one_clip is not None and n > len(warm_takes) and avjax.median > one_clip.median:
    # Not a target: what avjax sustains once its fixed cost is paid, i.e. roughly
    # its rate on a corpus much larger than this one (RAVDESS has 1440 takes).
    marginal = (n - len(warm_takes)) / (avjax.median - one_clip.median)
    print(f"avjax fixed cost ~{one_clip.median:.1f} s per prepare (1-clip run); marginal "
          f"rate {marginal:.2f} clips/s")
    print(f"info:  {marginal / serial.rate:.2f}  avjax marginal / serial baseline, clips/s "
          f"[{feature_set}] (fixed cost excluded; not the target)")
    extra.update(avjax_one_clip=one_clip.to_json(), avjax_marginal_clips_per_s=marginal,
                 marginal_over_serial=marginal / serial.rate)
  return {"feature_set": feature_set, "clips": n,
          "measurements": [m.to_json() for m in ms], "ratios": ratios, **extra}


def main(argv: Sequence[str] | None = None) -> dict:
  parser = common.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--features", nargs="+", choices=list(FEATURE_SETS),
                      default=list(FEATURE_SETS))
  parser.add_argument("--corpus", help="an existing RAVDESS-layout corpus (default: "
                                       "generate a synthetic one in a temp dir)")
  parser.add_argument("--actors", type=int, default=None)
  parser.add_argument("--clips-per-emotion", type=int, default=None)
  parser.add_argument("--max-clips", type=int, default=None,
                      help="use only the first N takes")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="avjax pool size and floor parallelism (default: all cores)")
  parser.add_argument("--keep-data", metavar="DIR",
                      help="copy the last avjax-prepared datasets here (for the loader)")
  args = parser.parse_args(argv)
  actors = args.actors or (1 if args.smoke else 4)
  per_emotion = args.clips_per_emotion or (1 if args.smoke else 2)
  max_clips = args.max_clips or (1 if args.smoke else None)
  repeat = args.repeat or 1
  warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 1)

  payload = {"benchmark": "precompute", "smoke": args.smoke, "machine": common.machine(),
             "workers": args.workers, "repeat": repeat, "warmup": warmup, "results": []}
  with tempfile.TemporaryDirectory(prefix="avjax-bench-") as work:
    corpus = args.corpus
    if corpus is None:
      from input_pipeline.synth import generate_corpus
      corpus = os.path.join(work, "corpus")
      generate_corpus(corpus, actors=actors, clips_per_emotion=per_emotion, seed=0,
                      progress=False)
    manual = os.path.join(work, "manual")
    takes = bench_corpus(corpus, manual, max_clips)
    warm_dir = os.path.join(work, "warm")
    warm_takes = bench_corpus(manual, warm_dir, 1)
    payload["corpus"] = {"source": args.corpus or f"synthetic {actors} actors x "
                                                  f"{per_emotion} per emotion",
                         "clips": len(takes)}
    print(f"precompute benchmark: {len(takes)} clips, workers={args.workers}, "
          f"repeat={repeat}, warmup={warmup}, cpus={os.cpu_count()}, "
          f"load={common.load_average():.1f}" + ("  [SMOKE: numbers mean nothing]"
                                                 if args.smoke else ""))
    for feature_set in args.features:
      payload["results"].append(bench_feature_set(
          feature_set, takes, manual, warm_dir, warm_takes, work, args.workers, repeat,
          warmup, args.keep_data))
  payload["machine_end"] = common.machine()
  common.write_json(args.json, payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
