"""`avjax predict`: emotion probabilities over time in one clip.

The file is decoded once and its face tracked once over every frame (the same
`input_pipeline.clip` path as `prepare`); sliding windows are then cut from the
decoded clip, each window's feature sets computed exactly as for a training
clip, and the exported model run on them in fixed-size batches. The clip's
label is the class of the mean probability over its windows.

Windows start every `hop` seconds from 0; when the hop leaves the clip's tail
uncovered, one more window ends at the clip's end, so every second of the clip
is in some window (4.1 s with the 3.6 s window and 1 s hop: starts 0 and 0.5 s).
A clip shorter than the window is one window, padded by the feature sets. A
video in which no face is found on any searched frame is refused (InputError):
every video feature set crops faces.

One clip is served at a time, so its work uses every core: audio and video are
decoded at once and the face detections run in a thread per core. Both give
exactly what `prepare`'s sequential path gives (same samples, frames, boxes).
The CLI keeps XLA's compiled model in a persistent cache (`enable_compilation_cache`)
so a one-shot call does not compile it again.

Needs an export directory (no training code); a training workdir is exported on
the fly into a temporary directory first, which does import the run's build
(`avjax.train.runtime`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from avjax.errors import UserError
from avjax.serving import artifact

SUPPORTED_EXTENSIONS = (".mp4", ".flv", ".avi", ".mov", ".wav")
DEFAULT_HOP = 1.0
DEFAULT_BATCH = 16


@dataclasses.dataclass
class Prediction:
  """Per-window and clip-level results, plus where the time went."""
  file: str
  model: str                  # the model directory the user gave (absolute)
  model_name: str             # the registered model it holds
  class_names: list[str]
  duration: float
  window: float
  hop: float
  starts: np.ndarray          # (N,) seconds
  probabilities: np.ndarray   # (N, C)
  timings: dict[str, float]   # wall s of decode, faces, features, model, total; CPU s
                              # of each stage as `<stage>_cpu`
  face_hit_rate: float | None = None
  files: list[str] = dataclasses.field(default_factory=list)

  @property
  def ends(self) -> np.ndarray:
    """A window ends at the clip's end at the latest (a short clip is padded)."""
    return np.minimum(self.starts + self.window, max(self.duration, 1e-9))

  @property
  def clip_probabilities(self) -> np.ndarray:
    return self.probabilities.mean(axis=0)

  @property
  def label(self) -> str:
    return self.class_names[int(np.argmax(self.clip_probabilities))]

  def to_json(self) -> dict:
    return {
        "file": self.file, "model": self.model, "model_name": self.model_name,
        "class_names": self.class_names,
        "duration_s": self.duration, "window_s": self.window, "hop_s": self.hop,
        "label": self.label,
        "clip_probabilities": dict(zip(self.class_names,
                                       map(float, self.clip_probabilities))),
        "face_hit_rate": self.face_hit_rate,
        "windows": [{"start_s": float(s), "end_s": float(e),
                     "label": self.class_names[int(np.argmax(p))],
                     "probabilities": dict(zip(self.class_names, map(float, p)))}
                    for s, e, p in zip(self.starts, self.ends, self.probabilities)],
        "timings_s": self.timings,
    }


def cpu_count() -> int:
  """The cores this process may run on (its affinity mask where the OS has one)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except (AttributeError, OSError):
    return max(1, os.cpu_count() or 1)


def default_compilation_cache_dir() -> str | None:
  """Where `avjax predict` keeps XLA's compiled model between runs: $AVJAX_JAX_CACHE
  (empty: no cache), else $XDG_CACHE_HOME/avjax/jax or ~/.cache/avjax/jax."""
  if "AVJAX_JAX_CACHE" in os.environ:
    return os.environ["AVJAX_JAX_CACHE"] or None
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "avjax", "jax")


def enable_compilation_cache(directory: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache, so a one-shot `avjax predict`
  loads the model's compiled code instead of compiling it again (seconds on CPU).
  A cache directory already configured (JAX_COMPILATION_CACHE_DIR) is kept.
  Returns the directory in use, None when there is none."""
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  directory = directory or default_compilation_cache_dir()
  if not directory:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return None  # A read-only home: run uncached rather than fail.
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def load_model(model_dir: str) -> artifact.ExportedModel:
  """An export directory; a training workdir is exported (jax only) to a temp dir.
  Turns on the persistent compilation cache (`enable_compilation_cache`)."""
  model_dir = os.path.abspath(model_dir)
  enable_compilation_cache()
  if not os.path.isdir(model_dir):
    raise UserError(f"{model_dir}: model directory does not exist")
  if artifact.is_export_dir(model_dir):
    return artifact.load(model_dir)
  if os.path.isfile(os.path.join(model_dir, "config.json")) or os.path.isdir(
      os.path.join(model_dir, "checkpoints")):
    from avjax.serving import export  # pylint: disable=g-import-not-at-top
    # artifact.load reads every file into memory, so the export can go at once.
    with tempfile.TemporaryDirectory(prefix="avjax-predict-") as tmp:
      out = os.path.join(tmp, "export")
      export.export_workdir(model_dir, out, savedmodel=False)
      return artifact.load(out)
  raise UserError(f"{model_dir}: neither an export directory (metadata.json) nor a "
                  "training workdir (config.json, checkpoints/)")


@dataclasses.dataclass(frozen=True)
class ModelNeeds:
  """What a model reads from a file, known without loading (or exporting) it."""
  modalities: tuple[str, ...]
  feature_sets: tuple[str, ...]
  window_seconds: float | None

  @classmethod
  def from_metadata(cls, meta) -> "ModelNeeds":
    """From an export's metadata.json."""
    return cls(tuple(meta["modalities"]), tuple(meta["feature_sets"]),
               meta.get("window_seconds"))


def model_needs(model_dir: str) -> ModelNeeds | None:
  """From an export's metadata.json or a training workdir's config.json; None when
  neither says (the model must be loaded to know)."""
  from input_pipeline import clip as clip_lib  # pylint: disable=g-import-not-at-top
  model_dir = os.path.abspath(model_dir)
  if artifact.is_export_dir(model_dir):
    return ModelNeeds.from_metadata(artifact.read_metadata(model_dir))
  config_path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(config_path):
    return None
  try:
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
    inputs = tuple(config["model"]["inputs"])
    data = config["data"]
  except (OSError, ValueError, KeyError, TypeError):
    return None  # Not a readable run config: loading the model says what is wrong.
  from avjax.serving import export  # pylint: disable=g-import-not-at-top
  feature_sets = export.feature_sets_of(data)
  spec = export.input_spec(inputs, feature_sets)
  # The sets that make an input: what export writes as the model's feature_sets.
  used = tuple(s for s in feature_sets if any(v["feature_set"] == s for v in spec.values()))
  return ModelNeeds(tuple(clip_lib.modalities_of(used)), used, None)


def _check_file(path: str) -> str:
  """Checked before the model is loaded (TensorFlow, seconds), so a mistyped
  name fails at once."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in SUPPORTED_EXTENSIONS:
    raise UserError(f"{path}: unsupported file type {ext or '(none)'!r}; expected one of "
                    f"{', '.join(e[1:] for e in SUPPORTED_EXTENSIONS)}")
  from input_pipeline import media  # pylint: disable=g-import-not-at-top
  return media.check_file(path)


def predict_file(path: str, model: artifact.ExportedModel | str, *,
                 window: float | None = None, hop: float = DEFAULT_HOP,
                 batch_size: int = DEFAULT_BATCH, json_path: str | None = None,
                 plot_path: str | None = None) -> Prediction:
  """Probabilities per window of `path` and the clip's label; writes the JSON and
  the timeline PNG when asked. Bad input raises InputError / UserError (one line)."""
  from input_pipeline import clip as clip_lib  # pylint: disable=g-import-not-at-top
  path = _check_file(path)
  if isinstance(model, (str, os.PathLike)):
    # A workdir is exported to a temporary directory: report the user's path.
    model_path, needs = os.path.abspath(model), model_needs(model)
    if needs is None:  # Nothing says it without loading the model: load it now.
      model = load_model(model_path)
  else:
    model_path, needs = model.directory, None
  needs = needs or ModelNeeds.from_metadata(model.metadata)
  window = float(window) if window is not None else float(
      needs.window_seconds or clip_lib.natural_window(needs.feature_sets))
  if not window > 0 or not hop > 0:
    raise UserError(f"--window and --hop must be > 0, got {window} and {hop}")
  if batch_size < 1:
    raise UserError(f"batch size must be >= 1, got {batch_size}")

  clock = _StageClock()
  threads = cpu_count()  # One clip at a time: its work may use every core.
  with clock("decode"):
    decoded = clip_lib.decode_file(path, needs.modalities, faces=False, threads=threads)
  with clock("faces"):
    decoded = clip_lib.track_faces(decoded, threads=threads)  # Once, over the whole clip.
  # A clip the model cannot read (no face, no audio) has failed by now, before a
  # training workdir is exported (seconds) to serve it.
  if isinstance(model, (str, os.PathLike)):
    model = load_model(model_path)
  with clock("features"):
    starts = clip_lib.window_starts(decoded.duration, window, hop)
    spec = model.input_spec
    per_window = [clip_lib.compute_features(decoded.window(s, window), model.feature_sets)
                  for s in starts]
    inputs = {k: np.stack([w[k] for w in per_window]).astype(spec[k][1]) for k in spec}
  with clock("model"):
    probabilities = model.predict(inputs, batch_size=batch_size)["probabilities"]
  timings = {**clock.wall, "total": sum(clock.wall.values()),
             **{f"{k}_cpu": v for k, v in clock.cpu.items()}}

  result = Prediction(
      file=os.path.abspath(path), model=model_path,
      model_name=str(model.metadata.get("model", "")), class_names=model.class_names,
      duration=float(decoded.duration), window=window, hop=float(hop), starts=starts,
      probabilities=np.asarray(probabilities, np.float32), timings=timings,
      face_hit_rate=None if decoded.frames is None else float(decoded.face_hit_rate))
  if json_path:
    _write_json(json_path, result.to_json())
    result.files.append(os.path.abspath(json_path))
  if plot_path:
    timeline_figure(result, plot_path)
    result.files.append(os.path.abspath(plot_path))
  return result


class _StageClock:
  """Wall and CPU seconds per stage; CPU includes reaped children (ffmpeg), so it
  says what a stage costs whatever else the machine is running."""

  def __init__(self):
    self.wall: dict[str, float] = {}
    self.cpu: dict[str, float] = {}

  @staticmethod
  def _cpu() -> float:
    import resource  # pylint: disable=g-import-not-at-top
    return sum(u.ru_utime + u.ru_stime for u in (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN)))

  @contextlib.contextmanager
  def __call__(self, stage: str):
    wall, cpu = time.perf_counter(), self._cpu()
    try:
      yield
    finally:
      self.wall[stage] = time.perf_counter() - wall
      self.cpu[stage] = self._cpu() - cpu


def _write_json(path: str, payload: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)


def timeline_figure(result: Prediction, path: str) -> None:
  """Writes `figure(result)` as a PNG."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig = figure(result)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def figure(result: Prediction):
  """The `--plot` figure. One window (a 3-4 s clip, the usual case) is a bar chart
  of its class probabilities: a timeline of one point per class would stack them
  at one x. Several windows are a timeline, one line per class at each window's
  centre, with a y-range fitted to the data and chance so near-uniform
  probabilities stay apart. Both mark chance (1 / classes)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names, probs = result.class_names, result.probabilities
  chance = 1.0 / len(names)
  colors = plt.get_cmap("tab10")
  model_line = f"model: {result.model_name} ({os.path.basename(result.model)})"
  if len(result.starts) == 1:
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.38 * len(names)))
    p = probs[0]
    best = int(np.argmax(p))
    y = np.arange(len(names))
    ax.barh(y, p, color=["tab:blue" if i == best else "0.7" for i in y], height=0.7)
    top = min(1.0, 1.2 * max(float(p.max()), chance) + 0.02)
    ax.axvline(chance, color="0.3", linestyle="--", linewidth=1, zorder=1)
    for i, v in enumerate(p):
      ax.text(v + 0.01 * top, i, f"{v:.2f}", va="center", fontsize=8, zorder=3,
              fontweight="bold" if i == best else "normal",
              bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_yticks(y, names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # The first class on top.
    ax.set_xlim(0.0, top)
    ax.set_xlabel(f"probability (dashed: chance, 1/{len(names)})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{os.path.basename(result.file)}: {result.label}\n"
                 f"{_one_window_span(result)}\n{model_line}", fontsize=9)
  else:
    fig, ax = plt.subplots(figsize=(9, 4))
    centres = (result.starts + result.ends) / 2.0
    for i, name in enumerate(names):
      ax.plot(centres, probs[:, i], marker=".", color=colors(i % 10),
              label=f"{name} ({result.clip_probabilities[i]:.2f})",
              linewidth=2.5 if name == result.label else 1.0)
    ax.axhline(chance, color="0.3", linestyle="--", linewidth=1,
               label=f"chance (1/{len(names)})")
    lo, hi = min(float(probs.min()), chance), max(float(probs.max()), chance)
    pad = 0.08 * (hi - lo) + 0.02
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.set_xlim(0.0, max(result.duration, float(result.ends[-1])))
    ax.set_xlabel("time (s, window centre)")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="mean over windows", title_fontsize=7)
    tail = ("; the last ends at the clip's end"
            if not np.isclose(result.starts[-1] - result.starts[-2], result.hop) else "")
    ax.set_title(f"{os.path.basename(result.file)}: {result.label} "
                 f"({_windows(len(result.starts))} of {result.window:g} s, hop "
                 f"{result.hop:g} s{tail}; {result.duration:.1f} s clip)\n{model_line}",
                 fontsize=9)
  fig.tight_layout()
  return fig


def _one_window_span(result: Prediction) -> str:
  """What the one window held: a clip shorter than the window is padded."""
  if result.duration < result.window - 0.005:
    return (f"one window: the whole {result.duration:.1f} s clip, padded to the "
            f"{result.window:g} s window")
  return f"one window of {result.window:g} s ({result.duration:.1f} s clip)"


def _windows(n: int) -> str:
  return f"{n} window" if n == 1 else f"{n} windows"


def summary_lines(result: Prediction) -> Sequence[str]:
  """What the CLI prints: the label, the clip's probabilities, the files."""
  probs = ", ".join(f"{n} {p:.2f}" for n, p in
                    sorted(zip(result.class_names, result.clip_probabilities),
                           key=lambda x: -x[1]))
  lines = [f"{os.path.basename(result.file)}: {result.label} "
           f"({_windows(len(result.starts))} over {result.duration:.1f} s; {probs})"]
  lines += result.files
  return lines
