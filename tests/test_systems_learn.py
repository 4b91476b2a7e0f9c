"""Every system learns: its `small` variant (the CPU-sized networks of the README
results table), trained on a synthetic corpus of 16 actors x 2 clips per emotion
(256 clips, the size of `make demo`'s corpus but with twice the actors), is judged
on the mean test accuracy (WA) over all 4 folds of a 4-fold actor split (8 train,
4 validation, 4 test actors per fold): the results table's protocol, so every one
of the 256 clips is a test clip once.

Why every fold: one fold's 64 test clips are too coarse to judge a system (a net
whose true accuracy is 25 % scores 18.8 % or less there about one time in six).
The bars were set before any run under this rule:
  * a config that uses audio (unimodal or fused): >= 2 x chance (25 % of 8 classes);
  * a video-only net: >= 1.6 x chance (20 %). The synthetic corpus's faces carry
    less emotion per actor than its voices (linear probes: 25-31 % on the face
    sets against 42 % on the audio vector; README, Results), and the bar says so.

`small`, not `demo`: `demo` is the papers' full networks (S4's trunks alone are
44M parameters), which a CPU cannot train in a test. 16 actors, not the demo's 8:
with 4 training actors the video nets cannot separate emotion from who is
acting (a linear probe on the mean face crop reaches 20 % on 8 actors and 30 %
on 16, same clip count); RAVDESS's own folds train on 16 actors. Slow (builds
every feature set of 256 clips and trains 14 systems on 4 folds each, many hours
on 2 cores): `make test-slow`. Each config's folds go to
`$AVJAX_SLOW_WORKDIR/<config>` when that is set, and finished folds are read back
(`cross_validate` resumes), so an interrupted run continues where it stopped.
The per-fold numbers are printed (`make test-slow` shows them with -rA).
"""

from __future__ import annotations

import json
import os

import pytest

from avjax.configs import load_config
from avjax.train import cross_validation

from tests.test_systems import SPECS

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTORS, CLIPS_PER_EMOTION = 16, 2   # the README results table's corpus
K = 4                               # the results table's folds
# Bars as multiples of chance, fixed before any run (issue 19).
AUDIO_FACTOR, VIDEO_ONLY_FACTOR = 2.0, 1.6
# Configs whose model reads no audio input (S5's key-frame net reads only the
# key frame of the keyframe_mel set).
VIDEO_ONLY = frozenset({"sultana2024.py:video", "dvemotionnet2024.py:video",
                        "satvik2025.py:video", "akturk2024.py:keyframe"})


def bar(spec: str) -> float:
  """The fold-mean WA a config must reach, as a multiple of chance."""
  return VIDEO_ONLY_FACTOR if spec in VIDEO_ONLY else AUDIO_FACTOR


def test_video_only_configs_read_no_audio():
  """The lower bar applies only where the model's inputs are all from video."""
  from input_pipeline.features import get_feature_set
  for spec in VIDEO_ONLY:
    assert spec in SPECS, spec
    config = load_config(os.path.join(REPO, "experiments", spec) + ",small")
    names = (config.data.feature_set, *tuple(config.data.get("feature_sets", ()) or ()))
    assert all("video" in get_feature_set(n).modalities for n in names), spec
    assert not any(k.startswith(("mfcc", "logmel", "mel", "audio", "spectrogram", "handcrafted"))
                   for k in config.model.inputs), (spec, config.model.inputs)


@pytest.fixture(scope="module")
def table_corpus(tmp_path_factory):
  from input_pipeline.synth import generate_corpus
  path = tmp_path_factory.mktemp("table_corpus")
  generate_corpus(path, actors=ACTORS, clips_per_emotion=CLIPS_PER_EMOTION, seed=0,
                  progress=False)
  return path


@pytest.fixture(scope="module")
def table_data(tmp_path_factory, table_corpus):
  from input_pipeline.prepare import prepare
  data_dir = tmp_path_factory.mktemp("table_data")
  done = set()

  def get(feature_set: str) -> str:
    if feature_set not in done:
      prepare("ravdess", str(table_corpus), str(data_dir), feature_set, progress=False)
      done.add(feature_set)
    return str(data_dir)
  return get


@pytest.mark.parametrize("spec", SPECS)
def test_small_variant_fold_mean_beats_its_bar_on_held_out_actors(spec, table_data, tmp_path):
  config = load_config(os.path.join(REPO, "experiments", spec) + ",small")
  for name in (config.data.feature_set, *tuple(config.data.get("feature_sets", ()) or ())):
    data_dir = table_data(name)
  root = os.environ.get("AVJAX_SLOW_WORKDIR") or str(tmp_path)
  workdir = os.path.join(root, spec.replace(".py:", "-").replace(",", "-"))
  config = load_config(os.path.join(REPO, "experiments", spec) + ",small", [
      f"data.data_dir={data_dir}", "data.protocol=actor_kfold", f"data.k={K}",
      f"branch_cache={os.path.join(root, 'branches')}"])
  summary = cross_validation.cross_validate(config, workdir)
  assert summary["folds"] == list(range(K))
  reports = []
  for fold in range(K):
    with open(os.path.join(workdir, f"fold_{fold}", "report.json"), encoding="utf-8") as f:
      reports.append(json.load(f))
  test_actors = set()
  for report in reports:
    assert not report["leaky"]
    assert set(report["split_actors"]["test"]).isdisjoint(report["split_actors"]["train"])
    test_actors |= set(report["split_actors"]["test"])
  assert len(test_actors) == ACTORS  # Every actor is a test actor exactly once.
  per_fold = [r["splits"]["test"]["accuracy"] for r in reports]
  clips = sum(r["splits"]["test"]["num_examples"] for r in reports)
  mean = sum(per_fold) / K
  chance = 1.0 / len(reports[0]["class_names"])
  line = (f"{spec}: test WA per fold " + ", ".join(f"{100 * a:.1f}" for a in per_fold)
          + f"; mean {100 * mean:.1f} % over {clips} clips; bar {bar(spec)} x chance = "
          f"{100 * bar(spec) * chance:.1f} %")
  print(line)
  assert mean >= bar(spec) * chance, line
