"""Grain loaders: determinism, exact resume, sharding, eval coverage, folds over
prepared data, and augmentations."""

import json

import ml_collections
import numpy as np
import pytest

from input_pipeline import loader
from input_pipeline.errors import ConfigError
from input_pipeline.splits import LeakError


def toy_source(n=37, classes=4):
  rng = np.random.default_rng(0)
  return [{"x": rng.normal(size=(6, 5)).astype(np.float32),
           "frames": rng.integers(0, 255, size=(2, 8, 8, 1), dtype=np.uint8),
           "idx": np.int64(i), "label": i % classes, "clip_id": b"c%d" % i}
          for i in range(n)]


def take(it, n):
  return [next(it) for _ in range(n)]


def same(a, b):
  return all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
             for x, y in zip(a, b, strict=True))


def test_train_batches_are_deterministic_per_seed():
  src = toy_source()
  a = take(iter(loader.train_dataset(src, batch_size=4, seed=1, keys=["x", "idx"])), 12)
  b = take(iter(loader.train_dataset(src, batch_size=4, seed=1, keys=["x", "idx"])), 12)
  c = take(iter(loader.train_dataset(src, batch_size=4, seed=2, keys=["x", "idx"])), 12)
  assert same(a, b) and not same(a, c)
  assert set(a[0]) == {"x", "idx", "label"} and a[0]["label"].dtype == np.int32


def test_every_epoch_visits_each_example_once_in_a_new_order():
  src = toy_source(n=16)
  batches = take(iter(loader.train_dataset(src, batch_size=4, seed=0, keys=["idx"])), 8)
  epoch1 = np.concatenate([b["idx"] for b in batches[:4]])
  epoch2 = np.concatenate([b["idx"] for b in batches[4:]])
  assert sorted(epoch1) == sorted(epoch2) == list(range(16))
  assert not np.array_equal(epoch1, epoch2)


def test_resume_from_saved_iterator_state_is_exact():
  src = toy_source()
  spec = dict(batch_size=4, seed=5, keys=["x", "idx"],
              transforms=[loader.SpecAugment("x", time_width=2, freq_width=1)])
  it = iter(loader.train_dataset(src, **spec))
  take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # Must survive a JSON checkpoint.
  expected = take(it, 9)
  resumed = iter(loader.train_dataset(src, **spec))
  resumed.set_state(state)
  assert same(take(resumed, 9), expected)


def test_process_shards_are_disjoint_and_cover_the_data():
  src = toy_source(n=40)
  seen = []
  for shard in range(4):
    ds = loader.train_dataset(src, batch_size=5, seed=0, shard_index=shard, shard_count=4,
                              keys=["idx"], num_epochs=1)
    seen.append(np.concatenate([b["idx"] for b in ds]))
  flat = np.concatenate(seen)
  assert sorted(flat) == list(range(40))


@pytest.mark.parametrize("n, shards, batch", [(37, 1, 8), (37, 3, 4), (5, 4, 4), (8, 2, 4)])
def test_eval_batches_cover_each_example_exactly_once(n, shards, batch):
  src = toy_source(n=n)
  per_shard = [list(loader.eval_batches(src, batch_size=batch, shard_index=s,
                                        shard_count=shards, keys=["idx"]))
               for s in range(shards)]
  assert len({len(b) for b in per_shard}) == 1  # Same number of steps everywhere.
  real = np.concatenate([b["idx"][b["valid"]] for bs in per_shard for b in bs])
  assert sorted(real) == list(range(n))
  assert all(b["idx"].shape == (batch,) for bs in per_shard for b in bs)


def test_augmentations_keep_shapes_and_actually_change_inputs():
  src = toy_source()
  augment = ml_collections.ConfigDict({
      "spec_augment": {"key": "x", "time_masks": 1, "time_width": 3, "freq_masks": 1,
                       "freq_width": 2},
      "frames": {"key": "frames", "max_shift": 2},
      "mixup": {"keys": ["x"], "alpha": 0.4}})
  per_example, mixup = loader.augmentations_from_config(augment.to_dict())
  plain = take(iter(loader.train_dataset(src, batch_size=8, seed=0, keys=["x", "frames"])), 3)
  aug = take(iter(loader.train_dataset(src, batch_size=8, seed=0, keys=["x", "frames"],
                                       transforms=per_example, batch_transforms=[mixup])), 3)
  for p, a in zip(plain, aug):
    assert p["x"].shape == a["x"].shape and p["frames"].shape == a["frames"].shape
    assert not np.allclose(p["x"], a["x"])
    assert ((a["mixup_lambda"] >= 0.5) & (a["mixup_lambda"] <= 1)).all()
    assert a["mixup_label"].shape == a["label"].shape
  with pytest.raises(ConfigError, match="unknown augmentation"):
    loader.augmentations_from_config({"warp": {}})


def _data_config(data_dir, **kw):
  base = dict(dataset="ravdess", data_dir=str(data_dir), feature_set="mfcc",
              protocol="actor_kfold", k=4, fold=1, keys=("mfcc",), allow_leaky=False)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_create_datasets_cuts_actor_folds(prepared):
  data_dir = prepared("mfcc")
  ds = loader.create_datasets(_data_config(data_dir), global_batch_size=4, seed=0)
  info = ds.info
  assert not info.leaky and info.num_classes == 8
  assert info.split_actors == {"train": (1, 4), "val": (3,), "test": (2,)}
  assert info.element_spec == {"mfcc": ((180, 20), np.float32)}
  test_labels = np.concatenate([b["label"][b["valid"]] for b in ds.evals["test"]()])
  assert len(test_labels) == info.num_examples["test"] == 8
  assert sorted(test_labels) == list(range(8))
  batch = next(iter(ds.train))
  assert batch["mfcc"].shape == (4, 180, 20)


def test_leaky_protocol_is_refused_unless_asked(prepared):
  data_dir = prepared("mfcc")
  with pytest.raises(LeakError):
    loader.create_datasets(_data_config(data_dir, protocol="random_clip", fold=0),
                           global_batch_size=4, seed=0)
  ds = loader.create_datasets(_data_config(data_dir, protocol="random_clip", fold=0,
                                           allow_leaky=True), global_batch_size=4, seed=0)
  assert ds.info.leaky and sum(ds.info.num_examples.values()) == 32


def test_feature_sets_are_joined_by_take(prepared):
  prepared("mfcc")
  data_dir = prepared("frames3d_gray_80x70x30")
  cfg = _data_config(data_dir, feature_set=None,
                     feature_sets=("mfcc", "frames3d_gray_80x70x30"),
                     keys=("mfcc", "frames3d", "take_id"))
  ds = loader.create_datasets(cfg, global_batch_size=4, seed=0)
  for batch in ds.evals["test"]():
    assert batch["frames3d"].shape == (4, 30, 80, 70, 1) and batch["mfcc"].shape[1:] == (180, 20)
  mfcc_only = loader.open_prepared(str(data_dir), "ravdess", "mfcc").as_data_source(
      split="actor_02")
  by_take = {mfcc_only[i]["take_id"]: mfcc_only[i]["mfcc"] for i in range(len(mfcc_only))}
  for batch in ds.evals["test"]():
    for take_id, mfcc in zip(batch["take_id"], batch["mfcc"]):
      np.testing.assert_array_equal(by_take[take_id], mfcc)


def test_multiprocess_workers_match_in_process_order_and_resume():
  src = toy_source(n=40)
  spec = dict(batch_size=4, seed=3, keys=["idx"])
  serial = take(iter(loader.train_dataset(src, **spec)), 8)
  it = iter(loader.train_dataset(src, worker_count=2, **spec))
  parallel = take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  parallel += take(it, 3)
  assert same(serial, parallel)
  resumed = iter(loader.train_dataset(src, worker_count=2, **spec))
  resumed.set_state(state)
  assert same(take(resumed, 3), serial[5:])


def test_train_shard_smaller_than_a_batch_is_a_config_error():
  src = toy_source(n=10)
  with pytest.raises(ConfigError, match="fewer than the per-process batch size 11"):
    loader.train_dataset(src, batch_size=len(src) + 1, seed=0)


@pytest.mark.parametrize("processes", [1, 2])
def test_global_batch_too_large_for_the_fold_names_one_that_fits(prepared, processes):
  data_dir = prepared("mfcc")
  n_train = loader.create_datasets(_data_config(data_dir), global_batch_size=4,
                                   seed=0).info.num_examples["train"]
  fits = (n_train // processes) * processes  # Every process needs a full batch.
  too_big = fits + processes
  with pytest.raises(ConfigError) as raised:
    loader.create_datasets(_data_config(data_dir), global_batch_size=too_big, seed=0,
                           process_index=0, process_count=processes)
  assert f"global_batch_size to at most {fits}" in str(raised.value)
  loader.create_datasets(_data_config(data_dir), global_batch_size=fits, seed=0,
                         process_index=processes - 1, process_count=processes)


def test_mistakes_in_the_data_config_are_config_errors(prepared):
  data_dir = prepared("mfcc")
  for bad in (dict(protocol="actor_fold"), dict(k=99), dict(fold=99),
              dict(protocol="random_clip", fold=0), dict(keys=("nope",))):
    with pytest.raises(ConfigError):
      loader.create_datasets(_data_config(data_dir, **bad), global_batch_size=4, seed=0)
  with pytest.raises(ConfigError, match="not divisible"):
    loader.create_datasets(_data_config(data_dir), global_batch_size=5, seed=0,
                           process_count=2)


def test_two_fold_kfold_warns_once_that_there_is_no_validation(prepared, caplog):
  data_dir = prepared("mfcc")
  with caplog.at_level("WARNING", logger="input_pipeline.loader"):
    ds = loader.create_datasets(_data_config(data_dir, k=2, fold=0), global_batch_size=4,
                                seed=0)
  assert ds.info.split_actors["val"] == () and "val" not in ds.evals
  warned = [r for r in caplog.records if "no validation actors" in r.getMessage()]
  assert len(warned) == 1 and "k=2" in warned[0].getMessage()
  caplog.clear()
  with caplog.at_level("WARNING", logger="input_pipeline.loader"):
    loader.create_datasets(_data_config(data_dir, k=2, fold=0, eval_splits=("test",)),
                           global_batch_size=4, seed=0)
    loader.create_datasets(_data_config(data_dir), global_batch_size=4, seed=0)
  assert not [r for r in caplog.records if "no validation actors" in r.getMessage()]
