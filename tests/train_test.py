"""End-to-end tests of the trainer on 8 simulated CPU devices.

Tiny class-separable MFCC-like data goes through the real Grain loader, the real
trainer, Orbax and the report writer. Runs that must be killed or must see a
different device count run this file as a script in a subprocess (`_main`).
"""

from __future__ import annotations

import os
import sys

_DEVICES = int(os.environ.get("AVJAX_TEST_DEVICES", "8"))
if "jax" not in sys.modules:  # The flag only works before jax is imported.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_DEVICES}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import grain  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from avjax.configs import load_config  # noqa: E402
from avjax.errors import UserError  # noqa: E402
from avjax.train import checkpoint as ckpt_lib  # noqa: E402
from avjax.train import cross_validation, evaluate, runtime, trainer, writers  # noqa: E402
from input_pipeline import loader  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "sultana2024.py") + ":audio,smoke"
T, F, C = 16, 8, 4
# 16 steps, checkpoints every 4: long enough that a kill lands mid-run.
OVERRIDES = ("train.num_train_steps=16", "train.eval_every_steps=4",
             "train.checkpoint_every_steps=4", "train.log_every_steps=4",
             "train.keep_checkpoints=2", "optimizer.learning_rate=0.01",
             "model.dropout_rate=0.1", "train.async_checkpointing=True")


def _source(n: int, seed: int, poison_after: int | None = None) -> list[dict]:
  """Class y: columns 2y, 2y+1 step from +1.5 to -1.5 halfway through the clip.
  A temporal pattern, so the model's per-clip normalisation keeps it."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    y = i % C
    x = rng.normal(0.0, 1.0, (T, F)).astype(np.float32)
    x[:T // 2, 2 * y:2 * y + 2] += 1.5
    x[T // 2:, 2 * y:2 * y + 2] -= 1.5
    out.append({"mfcc": x, "mfcc_mask": np.ones((T,), np.float32), "label": np.int32(y)})
  return out


class _PoisonedSource:
  """A source whose reads turn to inf after `after` reads: a record going bad
  mid-run. Grain reads on demand here (no threads, no prefetch)."""

  def __init__(self, examples, after: int):
    self._examples, self._after, self.reads = examples, after, 0

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, i):
    self.reads += 1
    ex = dict(self._examples[i])
    if self.reads > self._after:
      ex["mfcc"] = np.full_like(ex["mfcc"], np.inf)
    return ex


class _SlowMap(grain.transforms.Map):
  """Slows a run down so that a kill can land between two checkpoints."""

  def __init__(self, seconds: float):
    self.seconds = seconds

  def map(self, element):
    time.sleep(self.seconds)
    return element


def make_datasets(config, *, train_source=None, slow: float = 0.0) -> loader.Datasets:
  keys = tuple(config.model.inputs)
  fold = int(config.data.fold)
  train = train_source if train_source is not None else _source(64, fold)
  val, test = _source(16, 1), _source(12, 2)  # 12: the last test batch is padded.
  transforms = (_SlowMap(slow),) if slow else ()
  return loader.Datasets(
      train=loader.train_dataset(train, batch_size=config.train.global_batch_size,
                                 seed=config.seed, keys=keys, transforms=transforms),
      evals={"val": lambda: loader.eval_batches(val, batch_size=8, keys=keys),
             "test": lambda: loader.eval_batches(test, batch_size=8, keys=keys)},
      info=loader.DataInfo(
          num_classes=C, class_names=tuple("wxyz"),
          element_spec={"mfcc": ((T, F), np.float32), "mfcc_mask": ((T,), np.float32)},
          protocol="synthetic_actors", leaky=False, fold=fold,
          split_actors={"train": (1, 2, 3, 4), "val": (5,), "test": (6,)},
          num_examples={"train": len(train), "val": 16, "test": 12}))


def make_config(*extra: str):
  return load_config(CONFIG, [*OVERRIDES, *extra])


def final_params(workdir: str, config, step: int | None = None) -> dict[str, np.ndarray]:
  """The params of a workdir's latest (or given) checkpoint, on this process's mesh."""
  mesh = runtime.make_mesh(config)
  setup = runtime.build(config, make_datasets(config).info, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    state = runtime.restore_state(setup, checkpointer, step or checkpointer.latest_step())
  finally:
    checkpointer.close()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _assert_bitwise_equal(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def _run_script(mode: str, workdir: str, devices: int = 8, **popen) -> subprocess.Popen:
  env = dict(os.environ, AVJAX_TEST_DEVICES=str(devices), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, workdir],
                          env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def _needs_8_devices():
  if jax.device_count() != 8:  # Another module imported jax first.
    pytest.fail(f"expected 8 simulated devices, have {jax.device_count()}: run this "
                "file first or alone (XLA_FLAGS must be set before jax is imported)")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """One uninterrupted run on 8 devices, shared by the tests below."""
  _needs_8_devices()
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = make_config()
  final = trainer.train_and_evaluate(config, workdir, datasets=make_datasets(config))
  return workdir, config, final


def test_end_to_end_loss_falls_and_outputs_exist(reference_run):
  workdir, config, final = reference_run
  series = writers.read_metrics(workdir)
  train_loss = [v for _, v in series["train/loss"]]
  val_loss = [v for _, v in series["val/loss"]]
  assert len(train_loss) == len(val_loss) == 16 // 4
  assert train_loss[-1] < train_loss[0]
  assert val_loss[-1] < val_loss[0]
  # The data is separable: a few steps must beat chance (1/C) clearly.
  assert final["val/accuracy"] > 1.5 / C

  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                 if s.isdigit())
  assert steps[-2:] == [12, 16]  # keep_checkpoints=2 ...
  report = json.load(open(os.path.join(workdir, "report.json")))
  # ... plus the best by val/uar, which the report is made from.
  # Orbax breaks ties by keeping the later step.
  best_step = max((v, s) for s, v in series["val/uar"])[1]
  assert report["checkpoint_step"] == best_step and best_step in steps
  assert report["splits"]["test"]["num_examples"] == 12  # Padding is not counted.
  assert report["protocol"] == "synthetic_actors" and report["leaky"] is False
  assert report["split_actors"]["test"] == [6]
  for name in ("confusion_matrix.png", "curves.png", "config.json", "metrics.jsonl"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


def test_test_split_is_scored_only_for_the_reported_checkpoint(reference_run):
  """The report uses the best validation checkpoint, so a test curve over steps
  would only invite picking a step by test accuracy: none is logged. The test
  numbers exist once, for the reported step, in report.json and the returned
  metrics (with report/checkpoint_step beside them)."""
  workdir, _, final = reference_run
  series = writers.read_metrics(workdir)
  assert "val/uar" in series and "train/loss" in series
  assert not [k for k in series if k.startswith("test/")], sorted(series)
  report = json.load(open(os.path.join(workdir, "report.json")))
  assert final["report/checkpoint_step"] == report["checkpoint_step"]
  for metric in ("accuracy", "uar", "macro_f1", "loss"):
    assert final[f"test/{metric}"] == pytest.approx(report["splits"]["test"][metric])


def test_sigkill_and_resume_is_bitwise_identical(reference_run, tmp_path):
  ref_dir, config, reference_final = reference_run
  workdir = str(tmp_path / "killed")
  proc = _run_script("train_slow", workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 120
  killed_at = None
  while time.time() < deadline and proc.poll() is None:
    done = [int(s) for s in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else [])
            if s.isdigit() and os.path.exists(os.path.join(ckpt_dir, s, "commit_success.txt"))]
    if done and max(done) >= 4:
      proc.send_signal(signal.SIGKILL)
      killed_at = max(done)
      break
    time.sleep(0.05)
  out = proc.communicate()[0]
  assert killed_at is not None, f"no checkpoint before the run ended:\n{out[-3000:]}"
  assert proc.returncode == -signal.SIGKILL
  latest = ckpt_lib.Checkpointer(workdir, read_only=True).latest_step()
  assert latest is not None and latest < 16, "the kill must land mid-training"

  resumed = trainer.train_and_evaluate(config, workdir, datasets=make_datasets(config))
  _assert_bitwise_equal(final_params(ref_dir, config, 16), final_params(workdir, config, 16))
  # Same config and seed, another process, a kill in between: identical metrics
  # (train metrics too: logs and checkpoints fall on the same steps).
  assert resumed == reference_final


def test_restore_on_one_device_from_eight(reference_run, tmp_path):
  ref_dir, config, _ = reference_run
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  proc = _run_script("dump_params_1dev", workdir, devices=1)
  out = proc.communicate(timeout=180)[0]
  assert proc.returncode == 0, out[-3000:]
  with np.load(os.path.join(workdir, "params_1dev.npz")) as z:
    one = {k: z[k] for k in z.files}
  _assert_bitwise_equal(final_params(ref_dir, config, 16), one)
  report = json.load(open(os.path.join(workdir, "report.json")))  # Rewritten on 1 device.
  ref_report = json.load(open(os.path.join(ref_dir, "report.json")))
  for split, ref in ref_report["splits"].items():  # Counts exactly; the loss is a
    got = report["splits"][split]                   # sum in another order.
    assert got["confusion_matrix"] == ref["confusion_matrix"]
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_workdir_of_another_run_is_refused_and_a_finished_one_only_reevaluated(
    reference_run, tmp_path, caplog):
  ref_dir, config, reference_final = reference_run
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  events = sorted(f for f in os.listdir(workdir) if f.startswith("events.out"))
  # Another fold (other test actors) or seed: resuming would report the copied
  # run under this config. Refused before anything in the workdir is touched.
  config_before = open(os.path.join(workdir, "config.json")).read()
  for field, value in (("data.fold", int(config.data.fold) + 1),
                       ("seed", int(config.seed) + 1)):
    other = make_config(f"{field}={value}")
    with pytest.raises(UserError) as info:
      trainer.train_and_evaluate(other, workdir, datasets=make_datasets(other))
    assert f"{field}=" in str(info.value) and workdir in str(info.value)
    assert open(os.path.join(workdir, "config.json")).read() == config_before
  # The same run again: nothing to train; it says so and re-makes the report.
  with caplog.at_level("WARNING"):
    final = trainer.train_and_evaluate(config, workdir, datasets=make_datasets(config))
  assert "already trained" in caplog.text
  assert final["report/checkpoint_step"] == reference_final["report/checkpoint_step"]
  assert sorted(f for f in os.listdir(workdir) if f.startswith("events.out")) == events
  # Fields a resume may change (length, logging, paths) are accepted: 4 more steps.
  longer = make_config(f"train.num_train_steps={int(config.train.num_train_steps) + 4}",
                       "data.data_dir=/elsewhere", "train.log_every_steps=2")
  trainer.train_and_evaluate(longer, workdir, datasets=make_datasets(longer))
  assert ckpt_lib.Checkpointer(workdir, read_only=True).latest_step() == \
      int(config.train.num_train_steps) + 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  _needs_8_devices()
  config = make_config("train.checkpoint_every_steps=2", "train.log_every_steps=2",
                       "train.eval_every_steps=2")
  batch, bad_step = config.train.global_batch_size, 3
  source = _PoisonedSource(_source(64, 0), after=bad_step * batch)
  with pytest.raises(trainer.NonFiniteLossError) as info:
    trainer.train_and_evaluate(config, str(tmp_path),
                               datasets=make_datasets(config, train_source=source))
  assert isinstance(info.value, FloatingPointError)
  message = str(info.value)
  last_good = (bad_step // 2) * 2  # The last checkpoint boundary before the bad step.
  assert f"at step {bad_step}" in message and f"step {last_good})" in message
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert checkpointer.latest_step() == last_good
  params = final_params(str(tmp_path), config, last_good)
  assert all(np.isfinite(v).all() for v in params.values())


def test_cross_validate_writes_mean_and_std(tmp_path):
  _needs_8_devices()
  config = make_config("train.num_train_steps=2", "train.eval_every_steps=2",
                       "train.checkpoint_every_steps=2", "train.log_every_steps=2")
  folds = [0, 1]
  summary = cross_validation.cross_validate(config, str(tmp_path), folds, datasets_fn=lambda k: (
      make_datasets(_with_fold(config, k))))
  reports = [json.load(open(tmp_path / f"fold_{k}" / "report.json")) for k in folds]
  assert [r["fold"] for r in reports] == folds
  on_disk = json.load(open(tmp_path / "cv_report.json"))
  assert summary.pop("markdown") == (tmp_path / "cv_report.md").read_text()
  assert on_disk == summary and summary["folds"] == folds
  for split in ("val", "test"):
    for metric in ("accuracy", "uar", "macro_f1"):
      values = [r["splits"][split][metric] for r in reports]
      row = summary["splits"][split][metric]
      assert row["per_fold"] == values
      assert row["mean"] == pytest.approx(sum(values) / 2)
      assert row["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
  table = (tmp_path / "cv_report.md").read_text()
  mean = 100 * summary["splits"]["test"]["uar"]["mean"]
  assert f"{mean:.2f} ±" in table and "| test |" in table


def _host_tree(tree) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(k): np.array(v) for k, v in flat}


def test_parameter_average_follows_its_formula_and_is_what_gets_evaluated(tmp_path):
  """train.ema_decay: each step's average is decay * average + (1 - decay) *
  params with the warmed-up decay min(d, (1 + t) / (10 + t)); restore_best (and
  so evaluate, export and grafting) hands out the average, not the raw params."""
  _needs_8_devices()
  decay = 0.5
  config = make_config(f"train.ema_decay={decay}", "train.num_train_steps=8")
  datasets = make_datasets(config)
  mesh = runtime.make_mesh(config)
  setup = runtime.build(config, datasets.info, mesh)
  state = runtime.init_state(setup, 0)
  average = _host_tree(state.ema_params)
  assert average.keys() == _host_tree(state.params).keys()
  batches = iter(datasets.train)
  for t in range(3):
    state, _ = setup.train_step(state, runtime.device_batch(mesh, next(batches),
                                                            setup.input_keys))
    params, d = _host_tree(state.params), min(decay, (1 + t) / (10 + t))
    average = {k: d * average[k] + (1 - d) * params[k] for k in params}
    got = _host_tree(state.ema_params)
    for k in params:
      np.testing.assert_allclose(got[k], average[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert any(not np.allclose(got[k], params[k]) for k in params)

  workdir = str(tmp_path / "ema")
  trainer.train_and_evaluate(config, workdir, datasets=datasets)
  best, step = runtime.restore_best(setup, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    raw = runtime.restore_state(setup, checkpointer, step)
  finally:
    checkpointer.close()
  _assert_bitwise_equal(_host_tree(best.params), _host_tree(raw.ema_params))
  assert _host_tree(best.params).keys() == _host_tree(raw.params).keys()
  assert any(not np.array_equal(a, b) for a, b in zip(
      _host_tree(best.params).values(), _host_tree(raw.params).values()))
  # The validation numbers the checkpoint was chosen by are the average's.
  logged = dict(writers.read_metrics(workdir)["val/accuracy"])[step]
  scored = runtime.eval_scalars(runtime.run_evals(setup, best, {"val": datasets.evals["val"]}))
  assert scored["val/accuracy"] == pytest.approx(logged)

  with pytest.raises(UserError, match="ema_decay"):
    runtime.build(make_config("train.ema_decay=1.0"), datasets.info, mesh)


def test_checkpoints_from_before_the_parameter_average_still_restore(tmp_path):
  """A run without train.ema_decay checkpoints the same tree as before the
  field existed: a state saved as the old five-field dataclass restores."""
  _needs_8_devices()
  import flax  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldTrainState:  # TrainState as it was, without ema_params.
    step: object
    params: object
    model_state: object
    opt_state: object
    rng: object

  config = make_config()
  datasets = make_datasets(config)
  setup = runtime.build(config, datasets.info, runtime.make_mesh(config))
  state = runtime.init_state(setup, 0)
  old = OldTrainState(step=state.step, params=state.params, model_state=state.model_state,
                      opt_state=state.opt_state, rng=state.rng)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  try:
    checkpointer.save(3, old, None, ckpt_lib.config_to_json(config), force=True)
    checkpointer.wait()
    restored = runtime.restore_state(setup, checkpointer, 3)
  finally:
    checkpointer.close()
  assert restored.ema_params is None
  _assert_bitwise_equal(_host_tree(restored.params), _host_tree(state.params))
  _assert_bitwise_equal(_host_tree(restored.opt_state), _host_tree(state.opt_state))


def _with_fold(config, fold):
  config = config.copy_and_resolve_references()
  config.data.fold = fold
  return config


def _main(mode: str, workdir: str) -> None:
  config = make_config()
  if mode == "train_slow":
    trainer.train_and_evaluate(config, workdir, datasets=make_datasets(config, slow=0.02))
  elif mode == "dump_params_1dev":
    assert jax.device_count() == 1, jax.device_count()
    # The config comes from the workdir's config.json, as `avjax evaluate` does it.
    evaluate.evaluate_workdir(workdir, datasets=make_datasets(config))
    np.savez(os.path.join(workdir, "params_1dev.npz"), **final_params(workdir, config, 16))
  else:
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
  _main(sys.argv[1], sys.argv[2])
