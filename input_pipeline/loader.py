"""Grain loaders: prepared examples -> per-process host batches.

A *source* is any random-access sequence of examples (`dict[str, np.ndarray]` with
a scalar `label`): a `tfds.data_source` over prepared ArrayRecord files, or a plain
list in tests. Training batches come from a seeded, per-process-sharded
`grain.MapDataset` whose iterator state is a small JSON-able dict, so the trainer
saves it in its Orbax checkpoint and a resumed run continues at the exact example.
Evaluation visits every example exactly once, padding the last batch and marking
padding with a `valid` mask, so that all processes step through the same number
of batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from input_pipeline import augment as augment_lib
from input_pipeline.errors import ConfigError

Example = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the trainer and the reports need to know about the data of one run."""
  num_classes: int
  class_names: tuple[str, ...]
  element_spec: Mapping[str, tuple[tuple[int, ...], Any]]
  protocol: str
  leaky: bool
  fold: int
  split_actors: Mapping[str, tuple[int, ...]]
  num_examples: Mapping[str, int]
  dataset: str = ""
  feature_set: str = ""


@dataclasses.dataclass(frozen=True)
class Datasets:
  train: grain.IterDataset
  evals: Mapping[str, Callable[[], Iterator[dict[str, np.ndarray]]]]
  info: DataInfo
  # One pass over the whole training split (every process sees all of it, no
  # augmentation), for statistics fitted before training (S2's MFA).
  fit_batches: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None


class SelectKeys(grain.transforms.Map):
  """Keeps the model's inputs and the label; strings and metadata stay behind."""

  def __init__(self, keys: Sequence[str] | None):
    self._keys = None if keys is None else tuple(dict.fromkeys([*keys, "label"]))

  def map(self, element: Example) -> dict[str, np.ndarray]:
    keys = self._keys if self._keys is not None else tuple(element)
    out = {}
    for k in keys:
      if k not in element:
        raise KeyError(f"example has no feature {k!r} (has: {', '.join(sorted(element))})")
      out[k] = np.asarray(element[k])
    out["label"] = out["label"].astype(np.int32)
    return out


def _shard(ds: grain.MapDataset, shard_index: int, shard_count: int) -> grain.MapDataset:
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  return ds[shard_index::shard_count] if shard_count > 1 else ds


def train_dataset(source: Sequence[Example], *, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1,
                  keys: Sequence[str] | None = None, num_epochs: int | None = None,
                  transforms: Sequence[grain.transforms.Map | grain.transforms.RandomMap] = (),
                  batch_transforms: Sequence[grain.transforms.RandomMap] = (),
                  worker_count: int = 0, worker_buffer_size: int = 2) -> grain.IterDataset:
  """Shuffled, repeated, per-process batches of `batch_size` (the per-process
  batch). Deterministic for a given seed; each epoch has its own permutation."""
  if len(source) == 0:
    raise ValueError("training source is empty")
  ds = _shard(grain.MapDataset.source(source), shard_index, shard_count)
  if len(ds) < batch_size:
    raise ConfigError(f"shard {shard_index} has {len(ds)} examples, fewer than the "
                      f"per-process batch size {batch_size}")
  ds = ds.seed(seed).shuffle().repeat(num_epochs)
  ds = ds.map(SelectKeys(keys))
  for t in transforms:
    ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
  ds = ds.batch(batch_size, drop_remainder=True)
  for t in batch_transforms:
    ds = ds.random_map(t)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if worker_count > 0:
    _mark_absl_flags_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter_ds


def _mark_absl_flags_parsed() -> None:
  """Grain's workers read absl flags; outside an absl app (our CLI, pytest, a
  notebook) nobody parsed them, and the workers would die on first access."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def eval_batches(source: Sequence[Example], *, batch_size: int, shard_index: int = 0,
                 shard_count: int = 1, keys: Sequence[str] | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every example of this process's shard once, in order, in padded batches.

  All processes yield the same number of batches (the largest shard decides), so a
  multi-host eval step never waits on a process that has run out of data.
  """
  n = len(source)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  per_shard = math.ceil(n / shard_count) if n else 0
  indices = list(range(shard_index, n, shard_count))
  num_batches = math.ceil(per_shard / batch_size) if per_shard else 0
  select = SelectKeys(keys)
  template = None
  for b in range(num_batches):
    chunk = indices[b * batch_size:(b + 1) * batch_size]
    rows = [select.map(source[i]) for i in chunk]
    if template is None and rows:
      template = rows[0]
    if template is None:  # This shard is empty but others are not: all padding.
      template = select.map(source[0])
    valid = np.zeros((batch_size,), bool)
    valid[:len(rows)] = True
    pad = [{k: np.zeros_like(v) for k, v in template.items()}] * (batch_size - len(rows))
    batch = {k: np.stack([r[k] for r in rows + pad]) for k in template}
    batch["valid"] = valid
    yield batch


# --- Augmentations (train only, from config) -----------------------------------

# The transforms live in input_pipeline/augment.py; these names stay importable here.
SpecAugment, RandomFrameCropFlip, Mixup = (
    augment_lib.SpecAugment, augment_lib.RandomFrameCropFlip, augment_lib.Mixup)


def augmentations_from_config(augment: Mapping[str, Any] | None
                              ) -> tuple[list[grain.transforms.RandomMap], Mixup | None]:
  """Builds per-example transforms and an optional batch-level Mixup from a config
  section like {'time_crop': {'key': 'logmel', 'length': 300}, 'spec_augment':
  {'key': 'logmel', ...}, 'mixup': {...}}. Per-example transforms run in
  augment.PER_EXAMPLE's order (speed, pitch, crop, masks, frames), whatever the
  section's order; `enabled: False` turns one off."""
  chosen: dict[str, dict] = {}
  mixup = None
  known = (*augment_lib.PER_EXAMPLE, *augment_lib.BATCH)
  for name, params in (augment or {}).items():
    params = dict(params or {})
    if name not in known:
      raise ConfigError(f"unknown augmentation {name!r} (known: {', '.join(known)})")
    if not params.pop("enabled", True):
      continue
    try:
      if name in augment_lib.BATCH:
        mixup = augment_lib.BATCH[name](**params)
      else:
        chosen[name] = augment_lib.PER_EXAMPLE[name](**params)
    except TypeError as e:
      raise ConfigError(f"config.data.augment.{name}: {e}") from e
  per_example = [chosen[n] for n in augment_lib.PER_EXAMPLE if n in chosen]
  return per_example, mixup


# --- Prepared TFDS data -> Datasets for one fold ---------------------------------


class IndexedSource:
  """A view of a random-access source restricted to `indices` (leaky clip split)."""

  def __init__(self, source: Sequence[Example], indices: Sequence[int]):
    self._source, self._indices = source, np.asarray(indices, dtype=np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> Example:
    return self._source[int(self._indices[i])]


class JoinedSource:
  """Examples of several feature sets of the same takes, merged by `take_id`.

  Different feature sets may have skipped different takes (e.g. a video set skips
  a take whose mp4 is broken); only takes present in all of them are kept, and how
  many were dropped is recorded in `dropped`.
  """

  def __init__(self, sources: Sequence[Sequence[Example]]):
    self._sources = list(sources)
    positions = []
    for src in self._sources:
      positions.append({_text(src[i]["take_id"]): i for i in range(len(src))})
    common = [t for t in positions[0] if all(t in p for p in positions[1:])]
    self._rows = [tuple(p[t] for p in positions) for t in common]
    self.dropped = sum(len(p) for p in positions) - len(common) * len(positions)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, i: int) -> Example:
    merged: dict[str, Any] = {}
    for src, j in zip(self._sources, self._rows[i]):
      merged.update(src[j])
    return merged


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _feature_sets(data_config) -> tuple[str, ...]:
  names = data_config.get("feature_sets") or ()
  if isinstance(names, str):
    names = (names,)
  single = data_config.get("feature_set")
  if single and single not in names:
    names = (single, *names)
  if not names:
    raise ConfigError("config.data needs feature_set (or feature_sets)")
  return tuple(names)


def open_prepared(data_dir: str, dataset: str, feature_set: str):
  """The TFDS builder of a prepared dataset, read from its directory (no builder
  code, no TensorFlow needed)."""
  import tensorflow_datasets as tfds

  from input_pipeline.prepare import prepared_path
  return tfds.builder_from_directory(prepared_path(data_dir, dataset, feature_set))


def _actor_splits(builder) -> dict[int, str]:
  from input_pipeline.builders.base import actor_of_split
  return {actor_of_split(name): name for name, info in builder.info.splits.items()
          if info.num_examples > 0}


def _source_for(builders, split_names: Sequence[str]):
  if not split_names:
    return []
  spec = "+".join(split_names)
  sources = [b.as_data_source(split=spec) for b in builders]
  return sources[0] if len(sources) == 1 else JoinedSource(sources)


def _check_train_shards(num_train: int, batch: int, process_count: int, split) -> None:
  """Every process needs a full batch from its shard of the training split; says
  which global batch would fit, before Grain is asked for one."""
  smallest = num_train // process_count  # The last shards are the short ones.
  if smallest >= batch:
    return
  largest_global = smallest * process_count
  if largest_global:
    fix = f"lower --config.train.global_batch_size to at most {largest_global}"
  else:
    fix = ("the training split is empty" if not num_train
           else "the training split has fewer examples than there are processes")
  short = (f"fewer than the batch size {batch}" if process_count == 1 else
           f"and process {process_count - 1} of {process_count} gets {smallest} of them, "
           f"fewer than the per-process batch size {batch}")
  raise ConfigError(f"fold {split.fold} of {split.protocol} has {num_train} training "
                    f"examples, {short}; {fix}")


def _warn_no_validation(split) -> None:
  """Without validation actors no checkpoint is scored on `val`, so the best one
  by a `val/...` metric is just the latest: say so once, not in a report's fine print."""
  why = (" (actor_kfold with k=2 deals the actors into a test and a training half, "
         "leaving none to validate on; k >= 3 keeps a validation fold)"
         if split.protocol == "actor_kfold" and split.num_folds == 2 else "")
  logging.getLogger(__name__).warning(
      "fold %d of %s has no validation actors%s: a val/ best metric (the default "
      "val/uar) cannot choose a checkpoint, so the latest one is evaluated and reported",
      split.fold, split.protocol, why)


def create_datasets(data_config, *, global_batch_size: int, seed: int,
                    process_index: int = 0, process_count: int = 1) -> Datasets:
  """Opens the prepared feature set(s), cuts the fold and builds the loaders."""
  from input_pipeline import splits as splits_lib

  if global_batch_size % process_count:
    raise ConfigError(f"global batch {global_batch_size} is not divisible by "
                      f"{process_count} processes")
  batch = global_batch_size // process_count
  names = _feature_sets(data_config)
  builders = [open_prepared(data_config.data_dir, data_config.dataset, n) for n in names]
  actor_splits = _actor_splits(builders[0])
  split = splits_lib.make_split(
      data_config.protocol, int(data_config.get("fold", 0)), list(actor_splits),
      k=int(data_config.get("k", 5)), seed=seed,
      allow_leaky=bool(data_config.get("allow_leaky", False)))
  if split.leaky:
    everything = _source_for(builders, [actor_splits[a] for a in sorted(actor_splits)])
    cut = splits_lib.random_clip_indices(len(everything), split)
    sources = {name: IndexedSource(everything, idx) for name, idx in cut.items()}
  else:
    sources = {name: _source_for(builders, [actor_splits[a] for a in split.actors(name)])
               for name in ("train", "val", "test")}
  features = {}
  for b in builders:
    features.update(b.info.features)
  keys = tuple(data_config.get("keys") or ()) or None
  wanted = keys or tuple(k for k in features if k != "label")
  spec = {}
  for k in wanted:
    if k not in features:
      raise ConfigError(f"config.data.keys: {k!r} is not a feature of "
                        f"{', '.join(names)} (has: {', '.join(sorted(features))})")
    spec[k] = (tuple(features[k].shape), features[k].np_dtype)
  label = builders[0].info.features["label"]
  _check_train_shards(len(sources["train"]), batch, process_count, split)
  eval_splits = tuple(data_config.get("eval_splits", ("val", "test")))
  if "val" in eval_splits and not split.leaky and not split.val:
    _warn_no_validation(split)
  per_example, mixup = augmentations_from_config(data_config.get("augment"))
  train = train_dataset(
      sources["train"], batch_size=batch, seed=seed, shard_index=process_index,
      shard_count=process_count, keys=keys, transforms=per_example,
      batch_transforms=[mixup] if mixup else [],
      worker_count=int(data_config.get("worker_count", 0)))
  evals = {}
  for name in eval_splits:
    if len(sources[name]):
      evals[name] = (lambda src=sources[name]: eval_batches(
          src, batch_size=batch, shard_index=process_index, shard_count=process_count,
          keys=keys))
  info = DataInfo(
      num_classes=label.num_classes, class_names=tuple(label.names), element_spec=spec,
      protocol=split.protocol, leaky=split.leaky, fold=split.fold,
      split_actors={s: split.actors(s) for s in ("train", "val", "test")},
      num_examples={s: len(src) for s, src in sources.items()},
      dataset=data_config.dataset, feature_set="+".join(names))
  fit_batches = (lambda src=sources["train"]: eval_batches(
      src, batch_size=batch, shard_index=0, shard_count=1, keys=keys))
  return Datasets(train=train, evals=evals, info=info, fit_batches=fit_batches)
