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
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

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
    raise ValueError(f"shard {shard_index} has {len(ds)} examples, fewer than the "
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
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter_ds


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


class SpecAugment(grain.transforms.RandomMap):
  """Time and frequency masks on (time, freq) features, SpecAugment-style. Masked
  cells get the feature's mean, so masking does not shift the input distribution."""

  def __init__(self, key: str, time_masks: int = 2, time_width: int = 20,
               freq_masks: int = 2, freq_width: int = 4):
    self.key, self.time_masks, self.time_width = key, time_masks, time_width
    self.freq_masks, self.freq_width = freq_masks, freq_width

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    x = np.array(element[self.key], copy=True)
    t, f = x.shape[-2], x.shape[-1]
    fill = x.mean()
    for _ in range(self.time_masks):
      w = int(rng.integers(0, self.time_width + 1))
      s = int(rng.integers(0, max(t - w, 0) + 1))
      x[..., s:s + w, :] = fill
    for _ in range(self.freq_masks):
      w = int(rng.integers(0, self.freq_width + 1))
      s = int(rng.integers(0, max(f - w, 0) + 1))
      x[..., :, s:s + w] = fill
    element = dict(element)
    element[self.key] = x
    return element


class RandomFrameCropFlip(grain.transforms.RandomMap):
  """Random spatial crop (then zero-pad back to size) and horizontal flip of a
  frames tensor (..., H, W, C). Faces are left-right symmetric enough that the
  flip keeps the label."""

  def __init__(self, key: str, max_shift: int = 4, flip: bool = True):
    self.key, self.max_shift, self.flip = key, max_shift, flip

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    x = np.asarray(element[self.key])
    h, w = x.shape[-3], x.shape[-2]
    dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
    out = np.zeros_like(x)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd, :] = x[..., ys, xs, :]
    if self.flip and rng.random() < 0.5:
      out = out[..., :, ::-1, :]
    element = dict(element)
    element[self.key] = np.ascontiguousarray(out)
    return element


class Mixup(grain.transforms.RandomMap):
  """Batch-level mixup: mixes each example with another of the same batch. Adds
  `mixup_label` (the partner's label) and `mixup_lambda` (the weight of `label`);
  the loss mixes the two cross-entropies with that weight."""

  def __init__(self, keys: Sequence[str], alpha: float = 0.2):
    self.keys, self.alpha = tuple(keys), alpha

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    n = batch["label"].shape[0]
    perm = rng.permutation(n)
    lam = rng.beta(self.alpha, self.alpha, size=(n,)).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)  # The original example always dominates.
    batch = dict(batch)
    for k in self.keys:
      x = batch[k].astype(np.float32)
      shape = (n,) + (1,) * (x.ndim - 1)
      batch[k] = lam.reshape(shape) * x + (1.0 - lam.reshape(shape)) * x[perm]
    batch["mixup_label"] = batch["label"][perm]
    batch["mixup_lambda"] = lam
    return batch


def augmentations_from_config(augment: Mapping[str, Any] | None
                              ) -> tuple[list[grain.transforms.RandomMap], Mixup | None]:
  """Builds per-example transforms and an optional batch-level Mixup from a config
  section like {'spec_augment': {'key': 'mfcc', ...}, 'frames': {...}, 'mixup': {...}}."""
  per_example: list[grain.transforms.RandomMap] = []
  mixup = None
  for name, params in (augment or {}).items():
    params = dict(params or {})
    if not params.pop("enabled", True):
      continue
    if name == "spec_augment":
      per_example.append(SpecAugment(**params))
    elif name == "frames":
      per_example.append(RandomFrameCropFlip(**params))
    elif name == "mixup":
      mixup = Mixup(**params)
    else:
      raise ValueError(f"unknown augmentation {name!r} (known: spec_augment, frames, mixup)")
  return per_example, mixup
