"""Evaluation protocols: which actors (or clips) train, validate and test.

Actor-independent protocols are the default. The fixed ones are data in the repo
(`splits/*.json`); `actor_kfold` deals whatever actors a corpus has into k folds
(the synthetic corpus, a folder of clips). `random_clip` is the leaky protocol most
papers used: it exists to reproduce their numbers and is labelled LEAKY wherever it
is reported. Every example is one take, so the `01-`, `02-` and `03-` files of a
take can never land on different sides of a split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from input_pipeline.errors import ConfigError

_SPLITS_DIR = os.path.join(os.path.dirname(__file__), "splits")
FIXED_PROTOCOLS = ("ravdess_6fold", "chumachenko_5fold", "crema_5fold")
LEAKY_PROTOCOLS = ("random_clip",)
PROTOCOLS = FIXED_PROTOCOLS + ("actor_kfold",) + LEAKY_PROTOCOLS


class LeakError(ConfigError):
  """A split would put one actor on both sides of train/test."""


@dataclasses.dataclass(frozen=True)
class Split:
  """The actors of one fold. For the leaky protocol the actor lists overlap and
  `clip_fractions` gives the seeded random clip-level cut instead."""
  protocol: str
  fold: int
  num_folds: int
  leaky: bool
  train: tuple[int, ...]
  val: tuple[int, ...]
  test: tuple[int, ...]
  clip_fractions: tuple[float, float, float] | None = None  # leaky only
  seed: int = 0

  def actors(self, split: str) -> tuple[int, ...]:
    return {"train": self.train, "val": self.val, "test": self.test}[split]

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["label"] = protocol_label(self.protocol)
    return d


def protocol_label(protocol: str) -> str:
  """The name to print in tables and reports; leaky protocols say so."""
  return f"{protocol} (LEAKY: same actors in train and test)" if protocol in LEAKY_PROTOCOLS \
      else f"{protocol} (actor-independent)"


def load_fixed_protocol(name: str) -> dict:
  if name not in FIXED_PROTOCOLS:
    raise ConfigError(f"unknown fixed protocol {name!r} (known: {', '.join(FIXED_PROTOCOLS)})")
  with open(os.path.join(_SPLITS_DIR, f"{name}.json")) as f:
    return json.load(f)


def num_folds(protocol: str, actors: Sequence[int] = (), k: int = 5) -> int:
  if protocol in FIXED_PROTOCOLS:
    return len(load_fixed_protocol(protocol)["folds"])
  if protocol == "actor_kfold":
    return k
  if protocol == "random_clip":
    return 1
  raise ConfigError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")


def make_split(protocol: str, fold: int, actors: Sequence[int], *, k: int = 5,
               seed: int = 0, allow_leaky: bool = False,
               clip_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Split:
  """The split of `fold` restricted to the `actors` present in the prepared data.

  Raises LeakError for a leaky protocol unless `allow_leaky` (it must be asked for
  by name), and ConfigError (a ValueError) for a protocol, fold or k that does not
  fit the actors present, e.g. a fold with no training or test actors here.
  """
  present = sorted(set(int(a) for a in actors))
  if not present:
    raise ConfigError("no actors in the prepared data")
  if protocol in LEAKY_PROTOCOLS:
    if not allow_leaky:
      raise LeakError(f"protocol {protocol!r} puts the same actors in train and test; "
                      "set data.allow_leaky=True (--config.data.allow_leaky=True) to run it on "
                      "purpose")
    if fold != 0:
      raise ConfigError(f"protocol {protocol!r} has a single fold (0), not {fold}")
    everyone = tuple(present)
    split = Split(protocol, 0, 1, True, everyone, everyone, everyone,
                  tuple(float(x) for x in clip_fractions), seed)
    return split
  n = num_folds(protocol, present, k)
  if not 0 <= fold < n:
    raise ConfigError(f"fold {fold} out of range: {protocol} has {n} folds (0-{n - 1})")
  if protocol in FIXED_PROTOCOLS:
    spec = load_fixed_protocol(protocol)["folds"][fold]
    keep = set(present)
    train, val, test = ([a for a in spec[s] if a in keep] for s in ("train", "val", "test"))
    missing = keep - set(spec["train"]) - set(spec["val"]) - set(spec["test"])
    if missing:
      raise ConfigError(f"actors {sorted(missing)} are not in protocol {protocol}; "
                        "is this the right dataset?")
  else:  # actor_kfold
    if k < 2 or k > len(present):
      raise ConfigError(f"actor_kfold needs 2 <= k <= number of actors ({len(present)}), "
                        f"got k={k}{_kfold_hint(len(present))}")
    groups = [present[i::k] for i in range(k)]
    test = groups[fold]
    # With k=2 the next group is all the training actors: no validation split then
    # (kept for benchmarks/loader_throughput.py; create_datasets warns about it).
    val = groups[(fold + 1) % k] if k > 2 else []
    train = [a for a in present if a not in test and a not in val]
  split = Split(protocol, fold, n, False, tuple(train), tuple(val), tuple(test), None, seed)
  if not split.train:
    raise ConfigError(f"fold {fold} of {protocol} has no training actors among the "
                      f"{len(present)} present ({present}){_kfold_hint(len(present))}")
  if not split.test:
    raise ConfigError(f"fold {fold} of {protocol} has no test actors among the "
                      f"{len(present)} present ({present}){_kfold_hint(len(present))}")
  check_actor_independent(split)
  return split


def suggested_k(num_actors: int) -> int | None:
  """The `actor_kfold` k to suggest for a corpus: 5 (the default) when there are
  enough actors, else one actor per fold; k >= 3 keeps a validation fold, so 2
  actors (k=2) train and test without one, and 1 actor cannot split at all."""
  if num_actors < 2:
    return None
  return min(5, num_actors)


def _kfold_hint(num_actors: int) -> str:
  k = suggested_k(num_actors)
  if k is None:
    return ("; an actor-independent split needs at least 2 actors (the leaky "
            "--config.data.protocol=random_clip --config.data.allow_leaky=True runs on one)")
  return (f"; deal the actors present into folds instead: "
          f"--config.data.protocol=actor_kfold --config.data.k={k}")


def check_actor_independent(split: Split) -> None:
  """Refuses a non-leaky split whose train set shares an actor with val or test."""
  if split.leaky:
    return
  shared = set(split.train) & (set(split.test) | set(split.val))
  if shared:
    raise LeakError(f"{split.protocol} fold {split.fold}: actors {sorted(shared)} are in "
                    "training and in evaluation; refusing to run a leaky split")


def random_clip_indices(num_examples: int, split: Split) -> dict[str, np.ndarray]:
  """Seeded clip-level cut for the leaky protocol: indices into the concatenation
  of every actor's examples."""
  assert split.clip_fractions is not None
  order = np.random.default_rng(split.seed).permutation(num_examples)
  n_train = int(round(split.clip_fractions[0] * num_examples))
  n_val = int(round(split.clip_fractions[1] * num_examples))
  return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
          "test": np.sort(order[n_train + n_val:])}
