"""Checkpointer: last N plus the best by metric, Grain iterator round trip, and
restoring onto a different device count."""

from __future__ import annotations

import json

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avjax.train import checkpoint as ckpt_lib
from input_pipeline import loader

def _source(n=24):
  return [{"x": np.full((3,), i, np.float32), "label": np.int32(i % 3)} for i in range(n)]

def _state(scale: float):
  return {"w": jnp.full((8, 4), scale, jnp.float32), "step": jnp.asarray(int(scale), jnp.int32)}

def test_keeps_last_n_and_best(tmp_path):
  uar = [0.1, 0.9, 0.2, 0.3, 0.4, 0.35]
  keep = 2
  c = ckpt_lib.Checkpointer(str(tmp_path), keep=keep, best_metric="val/uar", async_save=True)
  it = iter(loader.train_dataset(_source(), batch_size=4, seed=0))
  for step, value in enumerate(uar, start=1):
    next(it)
    c.save(step, _state(step), it, {"seed": 0}, metrics={"val/uar": value, "val/loss": 1.0})
  c.close()
  steps = list(range(1, len(uar) + 1))
  best = steps[int(np.argmax(uar))]
  assert sorted(c.all_steps()) == sorted({best, *steps[-keep:]})
  reopened = ckpt_lib.Checkpointer(str(tmp_path), keep=keep, best_metric="val/uar",
                                   read_only=True)
  assert reopened.best_step() == best
  assert reopened.latest_step() == steps[-1]
  assert reopened.restore_config(steps[-1]) == {"seed": 0}

def test_min_mode_best(tmp_path):
  losses = [0.5, 0.2, 0.7]
  c = ckpt_lib.Checkpointer(str(tmp_path), keep=1, best_metric="val/loss", best_mode="min",
                            async_save=False)
  for step, value in enumerate(losses, start=1):
    c.save(step, _state(step), None, {}, metrics={"val/loss": value})
  c.close()
  assert sorted(c.all_steps()) == [int(np.argmin(losses)) + 1, len(losses)]

def test_data_iterator_resumes_at_the_same_example(tmp_path):
  dataset = loader.train_dataset(_source(), batch_size=4, seed=3)
  it = iter(dataset)
  for _ in range(5):  # Past the first epoch (6 batches each) boundary is fine too.
    next(it)
  c = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  c.save(5, _state(5), it, {})
  expected = [next(it)["x"] for _ in range(3)]
  fresh = iter(dataset)
  assert c.restore_data_iter(5, fresh)
  got = [next(fresh)["x"] for _ in range(3)]
  c.close()
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)

@pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
def test_restore_onto_fewer_devices(tmp_path):
  devices = np.array(jax.devices())
  big = Mesh(devices.reshape(-1, 2), ("data", "model"))
  state = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(big, P(None, "model"))),
           "b": jax.device_put(jnp.arange(4.0), NamedSharding(big, P()))}
  c = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  c.save(1, state, None, {})
  c.close()

  small = Mesh(devices[:1].reshape(1, 1), ("data", "model"))
  shardings = jax.tree.map(lambda _: NamedSharding(small, P()), state)
  abstract = ckpt_lib.abstract_with_shardings(jax.eval_shape(lambda: state), shardings)
  restored = ckpt_lib.Checkpointer(str(tmp_path), read_only=True).restore_state(1, abstract)
  for k in state:
    assert restored[k].sharding == shardings[k]
    assert len(restored[k].sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k]))


def test_read_only_open_logs_no_read_only_warning_but_keeps_other_warnings(tmp_path, caplog):
  c = ckpt_lib.Checkpointer(str(tmp_path), keep=1, async_save=False)
  c.save(1, _state(1), None, {})
  c.close()
  caplog.clear()
  with caplog.at_level("WARNING"):
    reopened = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
    logging.getLogger("absl").warning("another warning")
  assert reopened.latest_step() == 1
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "read only" in m], messages
  assert "another warning" in messages  # the filter is gone once the manager is open


def test_resume_conflicts_name_what_changes_the_run_and_allow_length_paths_hardware():
  import os
  from avjax.configs import load_config
  spec = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments",
                      "sultana2024.py") + ":fusion,smoke"
  base = ckpt_lib.config_to_json(load_config(spec))

  def conflicts(*overrides):
    return ckpt_lib.resume_conflicts(
        base, ckpt_lib.config_to_json(load_config(spec, list(overrides))))

  assert conflicts() == []
  harmless = ("train.num_epochs=99", "train.log_every_steps=7", "data.data_dir=/x",
              "mesh.data=2", "pretrained.audio.workdir=/runs/a",
              "pretrained.audio.config.data.data_dir=/y",
              "pretrained.video.config.train.num_epochs=3", "model.conv_impl=xla")
  for override in harmless:
    assert conflicts(override) == [], override
  # A run saved before train.ema_decay existed is the same run at its old value
  # (0, off), for the run and for its branches; another value is another run.
  old = json.loads(json.dumps(base))
  del old["train"]["ema_decay"]
  for branch in old["pretrained"].values():
    del branch["config"]["train"]["ema_decay"]
  assert ckpt_lib.resume_conflicts(old, base) == []
  found = ckpt_lib.resume_conflicts(old, ckpt_lib.config_to_json(
      load_config(spec, ["train.ema_decay=0.99"])))
  assert len(found) == 1 and found[0].startswith("train.ema_decay="), found
  for override in ("data.fold=1", "data.k=3", "seed=5", "optimizer.learning_rate=0.5",
                   "pretrained.audio.config.optimizer.learning_rate=0.5"):
    found = conflicts(override)
    field = override.split("=")[0]
    assert len(found) == 1 and found[0].startswith(field + "="), (override, found)
