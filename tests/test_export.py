"""`avjax export`: both artefacts reproduce the trained model's logits.

A smoke config of S1's audio net is trained for a few steps on the synthetic
corpus; its best checkpoint is restored independently (the trainer's own build
and restore, as `evaluate` does) and its logits on real prepared examples are the
reference for the jax.export artefact and for the TF SavedModel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "sultana2024.py") + ":audio,smoke"
ATOL = 1e-5


def _smoke_config(data_dir):
  from avjax.configs import load_config
  config = load_config(CONFIG)
  config.data.data_dir = str(data_dir)
  config.data.protocol = "actor_kfold"
  config.data.k = 4
  return config


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
  """(workdir, config) of a smoke run of the S1 audio net."""
  from avjax.train.trainer import train_and_evaluate
  config = _smoke_config(prepared("mfcc"))
  workdir = tmp_path_factory.mktemp("export_run") / "run"
  train_and_evaluate(config, str(workdir))
  return workdir, config


@pytest.fixture(scope="module")
def reference(trained):
  """Real examples and the restored model's logits on them, computed without
  the export code."""
  import jax
  from avjax.train import checkpoint as ckpt_lib
  from avjax.train import runtime
  workdir, config = trained
  datasets = runtime.create_datasets(config, runtime.make_mesh(config))
  setup = runtime.build(config, datasets.info, runtime.make_mesh(config))
  checkpointer = ckpt_lib.Checkpointer(str(workdir), best_metric=config.train.best_metric,
                                       best_mode=config.train.best_mode, read_only=True)
  step = checkpointer.best_step()
  state = runtime.restore_state(setup, checkpointer, step)
  checkpointer.close()
  batch = next(iter(datasets.evals["test"]()))
  inputs = {k: np.asarray(batch[k]) for k in config.model.inputs}
  variables = jax.device_get({"params": state.params, **state.model_state})
  logits = np.asarray(setup.model.apply(variables, inputs, train=False)["logits"])
  return {"inputs": inputs, "logits": logits, "step": int(step),
          "class_names": list(datasets.info.class_names)}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  from avjax.serving.export import export_workdir
  workdir, _ = trained
  out = tmp_path_factory.mktemp("export_out") / "model"
  report = export_workdir(str(workdir), str(out))
  return out, report


def test_export_writes_both_artefacts_from_the_best_checkpoint(exported, reference):
  out, report = exported
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["checkpoint_step"] == reference["step"]
  assert meta["class_names"] == reference["class_names"]
  assert meta["model"] == "sultana_audio"
  assert meta["feature_sets"] == ["mfcc"] and meta["modalities"] == ["audio"]
  assert meta["inputs"]["mfcc"] == {"shape": [180, 20], "dtype": "float32",
                                    "feature_set": "mfcc"}
  assert meta["inputs"]["mfcc_mask"]["dtype"] == "bool"
  assert (out / "model.jax_exported").stat().st_size > 0
  assert (out / "savedmodel" / "1" / "saved_model.pb").is_file()
  assert all(os.path.exists(f) for f in report.files)


@pytest.mark.parametrize("portable", [True, False], ids=["portable", "cpu_only"])
def test_jax_export_reproduces_logits_with_any_batch(exported, reference, portable):
  from avjax.serving import artifact
  out, _ = exported
  model = artifact.load(str(out), portable=portable)
  assert model.function_file == ("model.jax_exported" if portable else
                                 "model.cpu.jax_exported")
  got = model(reference["inputs"])
  np.testing.assert_allclose(got["logits"], reference["logits"], atol=ATOL, rtol=0)
  np.testing.assert_allclose(got["probabilities"].sum(-1), 1.0, atol=1e-5)
  # The batch dimension is symbolic: one example and an odd batch work too.
  one = model({k: v[:1] for k, v in reference["inputs"].items()})
  np.testing.assert_allclose(one["logits"], reference["logits"][:1], atol=ATOL, rtol=0)
  three = model.predict(reference["inputs"], batch_size=3)
  np.testing.assert_allclose(three["logits"], reference["logits"], atol=ATOL, rtol=0)


def test_cpu_functions_run_on_the_host_cpu_of_an_accelerator_machine(
    trained, exported, reference, tmp_path, monkeypatch):
  """On a GPU host, an export made for "cpu" alone, and the CPU-only function
  asked for with `portable=False`, run on the host's CPU device instead of being
  refused or swapped for the portable function. The GPU is simulated by the
  backend name `load` reads; the arrays really are placed on the CPU device."""
  import jax
  from avjax.serving import artifact
  from avjax.serving.export import export_workdir
  workdir, _ = trained
  cpu_only = tmp_path / "cpu_model"
  export_workdir(str(workdir), str(cpu_only), platforms=("cpu",), savedmodel=False)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  for directory, portable, function_file in (
      (cpu_only, None, "model.jax_exported"),
      (exported[0], False, "model.cpu.jax_exported")):
    model = artifact.load(str(directory), portable=portable)
    assert model.function_file == function_file
    assert model.device == jax.devices("cpu")[0]
    assert {d for leaf in jax.tree.leaves(model.variables) for d in leaf.devices()} == {
        model.device}
    got = model(reference["inputs"])
    np.testing.assert_allclose(got["logits"], reference["logits"], atol=ATOL, rtol=0)
  # The portable function (exported for cuda too) is left on the default device.
  assert artifact.load(str(exported[0])).device is None


def test_jax_export_loads_without_model_or_training_code(exported, reference, tmp_path):
  """A fresh interpreter with avjax's model and training packages blocked."""
  out, _ = exported
  np.savez(tmp_path / "inputs.npz", **reference["inputs"])
  script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('tensorflow', 'flax', 'orbax', 'optax', 'input_pipeline') or \\
        name.startswith(('avjax.models', 'avjax.train', 'avjax.layers')):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from avjax.serving import artifact
model = artifact.load({str(out)!r})
inputs = dict(np.load({str(tmp_path / 'inputs.npz')!r}))
np.save({str(tmp_path / 'logits.npy')!r}, model(inputs)['logits'])
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), reference["logits"],
                             atol=ATOL, rtol=0)


def test_savedmodel_serving_default_reproduces_logits(exported, reference):
  import tensorflow as tf
  out, _ = exported
  loaded = tf.saved_model.load(str(out / "savedmodel" / "1"))
  serve = loaded.signatures["serving_default"]
  assert set(serve.structured_input_signature[1]) == {"mfcc", "mfcc_mask"}
  got = serve(**{k: tf.constant(v) for k, v in reference["inputs"].items()})
  np.testing.assert_allclose(got["logits"].numpy(), reference["logits"], atol=ATOL, rtol=0)
  np.testing.assert_allclose(got["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
  # Batch None: a single example is served by the same signature.
  one = serve(**{k: tf.constant(v[:1]) for k, v in reference["inputs"].items()})
  np.testing.assert_allclose(one["logits"].numpy(), reference["logits"][:1], atol=ATOL,
                             rtol=0)


def test_export_refuses_a_non_empty_out_and_a_non_workdir(trained, tmp_path, capsys):
  from avjax import cli
  workdir, _ = trained
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  rc = cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "full"),
                 "--no-savedmodel"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and "not empty" in err
  rc = cli.main(["export", "--workdir", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "o")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and "does not exist" in err
  assert not (tmp_path / "o").exists()


def test_predict_accepts_a_training_workdir(trained, reference, fixtures_dir, tmp_path,
                                           monkeypatch):
  """--model may be a workdir: it is exported (jax only) on the fly, into a
  temporary directory that is gone afterwards, and predicts with the best
  checkpoint's class names."""
  import tempfile
  from avjax.serving.predict import predict_file
  workdir, _ = trained
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  wav = sorted((fixtures_dir / "crema_d" / "AudioWAV").glob("*.wav"))[0]
  result = predict_file(str(wav), str(workdir))
  assert not [p.name for p in scratch.iterdir() if p.name.startswith("avjax-predict-")]
  assert result.class_names == reference["class_names"]
  np.testing.assert_allclose(result.probabilities.sum(-1), 1.0, atol=1e-5)
