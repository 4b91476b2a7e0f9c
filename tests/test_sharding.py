"""Placement: batches split over 'data'; parameters replicated or split over
'model' as the mesh config and the shape rule say, before and after a step."""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from avjax.configs import load_config
from avjax.errors import UserError
from avjax.train import runtime, sharding
from input_pipeline import loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "sultana2024.py") + ":audio,smoke"
T, F, C = 12, 8, 4
INFO = loader.DataInfo(
    num_classes=C, class_names=tuple("abcd"),
    element_spec={"mfcc": ((T, F), np.float32), "mfcc_mask": ((T,), np.float32)},
    protocol="synthetic", leaky=False, fold=0, split_actors={}, num_examples={"train": 64})

@pytest.fixture(autouse=True)
def _eight_devices():
  if jax.device_count() != 8:
    pytest.fail(f"expected 8 simulated devices, have {jax.device_count()}")

def _batch(n):
  rng = np.random.default_rng(0)
  return {"mfcc": rng.normal(size=(n, T, F)).astype(np.float32),
          "mfcc_mask": np.ones((n, T), np.float32),
          "label": (np.arange(n) % C).astype(np.int32)}

def test_batch_is_split_over_data():
  config = load_config(CONFIG)
  mesh = runtime.make_mesh(config)
  assert dict(mesh.shape) == {"data": 8, "model": 1}
  local = _batch(16)
  batch = sharding.global_batch(mesh, local)
  for k, v in batch.items():
    assert v.shape == local[k].shape and v.sharding.spec == P("data")
    rows = sorted((s.index[0].start, s.index[0].stop) for s in v.addressable_shards)
    assert rows == [(2 * i, 2 * i + 2) for i in range(8)]  # 16 rows / 8 devices.
    np.testing.assert_array_equal(np.asarray(v), local[k])

@pytest.mark.parametrize("model_axis", [1, 2])
def test_params_placed_by_the_rule(model_axis):
  config = load_config(CONFIG, [f"mesh.model={model_axis}"])
  mesh = runtime.make_mesh(config)
  assert dict(mesh.shape) == {"data": 8 // model_axis, "model": model_axis}
  setup = runtime.build(config, INFO, mesh)
  state = runtime.init_state(setup, 0)
  batch = sharding.global_batch(mesh, _batch(8))
  new_state, _ = setup.train_step(state, batch)
  split = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(new_state.params)[0]:
    name = jax.tree_util.keystr(path)
    model_split = model_axis > 1 and leaf.ndim >= 2 and leaf.shape[-1] % model_axis == 0
    expected = P(*([None] * (leaf.ndim - 1)), "model") if model_split else P()
    assert leaf.sharding.spec == expected, name
    shard_shape = leaf.addressable_shards[0].data.shape
    assert shard_shape[-1] == (leaf.shape[-1] // model_axis if model_split else leaf.shape[-1])
    split += model_split
  # The smoke model's kernels have even widths: with 2 model shards some are split.
  assert (split > 0) == (model_axis > 1)
  # Adam's moments follow the params they belong to.
  mu = optax.tree_utils.tree_get(new_state.opt_state, "mu")
  for p, m in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(mu)):
    assert p.sharding.spec == m.sharding.spec

def test_bad_mesh_is_a_user_error():
  with pytest.raises(UserError, match="devices"):
    sharding.make_mesh({"data": 3, "model": 1})
  with pytest.raises(UserError, match="divide"):
    sharding.local_batch_size(12, sharding.make_mesh({"data": 8, "model": 1}))
