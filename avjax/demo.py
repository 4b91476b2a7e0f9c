"""`avjax demo`: the whole path on the embedded synthetic corpus, end to end.

synth -> prepare -> train -> evaluate -> export -> predict, each step timed and
reported honestly: a step that fails says so, and the steps after it are skipped.
The default size finishes within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The demo trains S1's audio branch (Sultana et al. 2024): the system whose CPU
# cost fits the 10-minute budget; the config lives with the other experiments.
DEMO_CONFIG = "experiments/sultana2024.py:audio,demo"
DEMO_FEATURE_SETS = ("mfcc",)
DEMO_PROTOCOL_K = 4  # actor_kfold over the demo's actors: 1/4 test, 1/4 val, 1/2 train.


@dataclasses.dataclass
class StepResult:
  name: str
  status: str = "pending"      # ran | failed | skipped
  seconds: float = 0.0
  detail: str = ""
  outputs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DemoSummary:
  workdir: str
  steps: list[StepResult]

  @property
  def ok(self) -> bool:
    return not any(s.status == "failed" for s in self.steps)

  def table(self) -> str:
    width = max(len(s.name) for s in self.steps)
    lines = [f"{'step':<{width}}  {'status':<14} {'time':>7}  detail"]
    for s in self.steps:
      t = f"{s.seconds:6.1f}s" if s.status in ("ran", "failed") else "      -"
      lines.append(f"{s.name:<{width}}  {s.status:<14} {t}  {s.detail}")
    ran = sum(s.status == "ran" for s in self.steps)
    lines.append(f"{ran}/{len(self.steps)} steps ran; "
                 f"{sum(s.status == 'failed' for s in self.steps)} failed.")
    outputs = [o for s in self.steps for o in s.outputs]
    if outputs:
      lines.append("outputs:")
      lines += [f"  {o}" for o in outputs]
    return "\n".join(lines)


def _run_step(result: StepResult, fn: Callable[[], tuple[str, list[str]]],
              verbose: bool) -> None:
  print(f"== {result.name}", flush=True)
  start = time.time()
  try:
    result.detail, result.outputs = fn()
    result.status = "ran"
  except Exception as e:  # noqa: BLE001 - the summary must report every step.
    result.status = "failed"
    result.detail = f"{type(e).__name__}: {' '.join(str(e).split())}"
    if verbose:
      traceback.print_exc()
  result.seconds = time.time() - start


def run_demo(workdir: str, *, actors: int = 8, clips_per_emotion: int = 4, seed: int = 0,
             verbose: bool = False) -> DemoSummary:
  workdir = os.path.abspath(workdir)
  corpus = os.path.join(workdir, "corpus")
  data_dir = os.path.join(workdir, "data")
  train_dir = os.path.join(workdir, "train")
  export_dir = os.path.join(workdir, "export")
  predict_dir = os.path.join(workdir, "predict")
  steps = {name: StepResult(name) for name in
           ("synth", "prepare", "train", "evaluate", "export", "predict")}

  def synth():
    from input_pipeline.synth import generate_corpus
    report = generate_corpus(corpus, actors=actors, clips_per_emotion=clips_per_emotion,
                             seed=seed)
    return f"{report.n_clips} clips, {actors} actors -> {corpus}", []

  def prepare():
    from input_pipeline.prepare import prepare as prepare_fn
    parts, outputs = [], []
    for feature_set in DEMO_FEATURE_SETS:
      report = prepare_fn("ravdess", corpus, data_dir, feature_set)
      parts.append(f"{feature_set}: {report.prepared}/{report.found} prepared, "
                   f"{len(report.skipped)} skipped")
      outputs.append(os.path.join(report.data_path, "prepare_report.json"))
    return "; ".join(parts), outputs

  def train():
    from avjax.configs import load_config
    from avjax.train import train_and_evaluate
    config = load_config(str(REPO_ROOT / DEMO_CONFIG.split(":")[0]) + ":" +
                         DEMO_CONFIG.split(":", 1)[1],
                         [f"data.data_dir={data_dir}", "data.protocol=actor_kfold",
                          f"data.k={DEMO_PROTOCOL_K}", "data.fold=0"])
    metrics = train_and_evaluate(config, train_dir)
    best = metrics.get("report/checkpoint_step")
    return f"S1 audio net ({DEMO_CONFIG}); best checkpoint at step {best}", [train_dir]

  def evaluate():
    from avjax.train.evaluate import evaluate_workdir
    report = evaluate_workdir(train_dir)
    chance = 1.0 / len(report["class_names"])
    return (f"{report['primary_split']} on unseen actors {report['split_actors']['test']}: "
            f"WA {report['accuracy']:.3f} UAR {report['uar']:.3f} macro-F1 "
            f"{report['macro_f1']:.3f} (chance {chance:.3f}; best checkpoint by "
            f"{report['best_metric']}, step {report['checkpoint_step']})",
            list(report.get("files", [])))

  def export():
    from avjax.serving.export import export_workdir
    if os.path.isdir(export_dir):  # A re-run exports the newly trained model afresh.
      shutil.rmtree(export_dir)
    report = export_workdir(train_dir, export_dir)
    return (f"step {report.metadata['checkpoint_step']} -> jax.export + TF SavedModel "
            f"(serving_default) in {export_dir}", list(report.files))

  def predict():
    from avjax.serving.predict import predict_file
    clip, actor = _unseen_clip(corpus, train_dir)
    stem = os.path.splitext(os.path.basename(clip))[0]
    result = predict_file(clip, export_dir,
                          json_path=os.path.join(predict_dir, f"{stem}.json"),
                          plot_path=os.path.join(predict_dir, f"{stem}_timeline.png"))
    truth = _RAVDESS_EMOTIONS.get(int(stem.split("-")[2]), "?")
    return (f"{os.path.basename(clip)} (actor {actor}, unseen in training; true "
            f"{truth}): predicted {result.label} over {len(result.starts)} window(s), "
            f"{result.timings['total']:.1f} s", list(result.files))

  order = [("synth", synth), ("prepare", prepare), ("train", train),
           ("evaluate", evaluate), ("export", export), ("predict", predict)]
  for name, fn in order:
    depends_failed = any(s.status in ("failed", "skipped") for s in steps.values()
                         if s.name in _DEPENDS[name])
    if depends_failed:
      steps[name].status, steps[name].detail = "skipped", "an earlier step failed"
      continue
    _run_step(steps[name], fn, verbose)
  summary = DemoSummary(workdir, list(steps.values()))
  print(summary.table(), flush=True)
  figures = [o for s in summary.steps for o in s.outputs if o.endswith(".png")]
  if figures:
    print("figures:\n" + "\n".join(f"  {f}" for f in figures), flush=True)
  return summary


_RAVDESS_EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry",
                     6: "fearful", 7: "disgust", 8: "surprised"}


def _unseen_clip(corpus: str, train_dir: str) -> tuple[str, int]:
  """An audio-video clip of the first test actor (unseen in training), else of
  any actor: predict is shown on data the model did not learn from."""
  import json  # pylint: disable=g-import-not-at-top
  actors: list[int] = []
  report = os.path.join(train_dir, "report.json")
  if os.path.exists(report):
    with open(report, encoding="utf-8") as f:
      actors = list(json.load(f).get("split_actors", {}).get("test", []))
  folders = sorted(d for d in os.listdir(corpus) if d.startswith("Actor_"))
  ordered = [f"Actor_{a:02d}" for a in actors] + folders
  for folder in ordered:
    clips = sorted(f for f in os.listdir(os.path.join(corpus, folder)) if f.startswith("01-")
                   and f.endswith(".mp4")) if os.path.isdir(os.path.join(corpus, folder)) else []
    if clips:
      return os.path.join(corpus, folder, clips[0]), int(folder.split("_")[1])
  raise FileNotFoundError(f"{corpus}: no audio-video clip (01-*.mp4) to predict on")


_DEPENDS = {"synth": (), "prepare": ("synth",), "train": ("prepare",),
            "evaluate": ("train",), "export": ("train",), "predict": ("export",)}
