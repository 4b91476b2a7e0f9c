"""Evaluation protocols: actor-disjoint folds, leaky refusal, fixed split data."""

import pytest

from input_pipeline import splits
from input_pipeline.errors import ConfigError

RAVDESS_ACTORS = list(range(1, 25))
CREMA_ACTORS = list(range(1001, 1092))


@pytest.mark.parametrize("protocol, actors", [
    ("ravdess_6fold", RAVDESS_ACTORS), ("chumachenko_5fold", RAVDESS_ACTORS),
    ("crema_5fold", CREMA_ACTORS), ("actor_kfold", list(range(1, 9)))])
def test_every_fold_is_actor_disjoint_and_complete(protocol, actors):
  n = splits.num_folds(protocol, actors, k=4)
  tested = []
  for fold in range(n):
    s = splits.make_split(protocol, fold, actors, k=4)
    assert not s.leaky
    sets = [set(s.train), set(s.val), set(s.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(actors)
    tested += s.test
  # Each actor is tested at most once across folds.
  assert len(tested) == len(set(tested))


def test_ravdess_6fold_tests_every_actor_once_with_balanced_sex():
  folds = [splits.make_split("ravdess_6fold", f, RAVDESS_ACTORS) for f in range(6)]
  assert sorted(a for s in folds for a in s.test) == RAVDESS_ACTORS
  for s in folds:
    assert len(s.test) == 4 and len(s.val) == 4 and len(s.train) == 16
    assert sum(a % 2 for a in s.test) == 2  # Odd actors are male.


def test_chumachenko_scheme_sizes():
  assert splits.num_folds("chumachenko_5fold") == 5
  for f in range(5):
    s = splits.make_split("chumachenko_5fold", f, RAVDESS_ACTORS)
    assert (len(s.test), len(s.val), len(s.train)) == (4, 4, 16)


def test_leaky_protocol_only_by_name():
  with pytest.raises(splits.LeakError, match="allow_leaky"):
    splits.make_split("random_clip", 0, RAVDESS_ACTORS)
  s = splits.make_split("random_clip", 0, RAVDESS_ACTORS, allow_leaky=True)
  assert s.leaky and "LEAKY" in splits.protocol_label(s.protocol)
  assert "LEAKY" not in splits.protocol_label("ravdess_6fold")


def test_random_clip_cut_is_a_seeded_partition():
  s = splits.make_split("random_clip", 0, RAVDESS_ACTORS, allow_leaky=True, seed=3)
  cut = splits.random_clip_indices(100, s)
  joined = sorted(i for part in cut.values() for i in part)
  assert joined == list(range(100))
  again = splits.random_clip_indices(100, s)
  assert all((cut[k] == again[k]).all() for k in cut)


def test_refuses_a_split_that_shares_actors():
  bad = splits.Split("ravdess_6fold", 0, 6, False, (1, 2, 3), (4,), (3, 5))
  with pytest.raises(splits.LeakError, match=r"\[3\]"):
    splits.check_actor_independent(bad)


def test_small_corpus_errors_are_clear():
  with pytest.raises(ValueError, match="no training actors"):
    splits.make_split("ravdess_6fold", 0, [1, 2])
  with pytest.raises(ValueError, match="not in protocol"):
    splits.make_split("ravdess_6fold", 0, [1, 2, 99])
  with pytest.raises(ValueError, match="out of range"):
    splits.make_split("ravdess_6fold", 6, RAVDESS_ACTORS)


@pytest.mark.parametrize("call", [
    lambda: splits.make_split("actor_fold", 0, RAVDESS_ACTORS),
    lambda: splits.num_folds("actor_fold"),
    lambda: splits.make_split("actor_kfold", 0, [1, 2, 3, 4], k=5),
    lambda: splits.make_split("actor_kfold", 7, [1, 2, 3, 4], k=4),
    lambda: splits.make_split("random_clip", 0, RAVDESS_ACTORS),
    lambda: splits.make_split("random_clip", 1, RAVDESS_ACTORS, allow_leaky=True),
    lambda: splits.make_split("ravdess_6fold", 0, [1, 2, 3, 4]),
])
def test_data_config_mistakes_are_config_errors(call):
  """The CLI reports ConfigError as a user error (exit 2); it stays a ValueError."""
  with pytest.raises(ConfigError) as raised:
    call()
  assert isinstance(raised.value, ValueError)
  assert "\n" not in str(raised.value)


def test_leak_error_is_a_config_error():
  assert issubclass(splits.LeakError, ConfigError)


@pytest.mark.parametrize("actors", [[1, 2, 3, 4], [2, 3, 4], list(range(1, 9))])
def test_missing_protocol_actors_suggest_a_kfold_that_fits(actors):
  fold0 = splits.load_fixed_protocol("ravdess_6fold")["folds"][0]
  assert not set(fold0["train"]) & set(actors)  # Fold 0 trains on none of them.
  with pytest.raises(ConfigError, match="no training actors") as raised:
    splits.make_split("ravdess_6fold", 0, actors)
  k = min(5, len(actors))
  assert f"--config.data.protocol=actor_kfold --config.data.k={k}" in str(raised.value)
  # The suggestion works: every fold of it has train, val and test actors.
  for fold in range(k):
    s = splits.make_split("actor_kfold", fold, actors, k=k)
    assert s.train and s.val and s.test


def test_too_large_k_suggests_one_that_fits():
  actors = [1, 2, 3, 4]
  with pytest.raises(ConfigError, match=f"--config.data.k={len(actors)}"):
    splits.make_split("actor_kfold", 0, actors, k=len(actors) + 1)


def test_two_fold_kfold_has_no_validation_actors():
  """k=2 stays allowed (benchmarks/loader_throughput.py uses it); the loader warns."""
  actors = [1, 2, 3, 4]
  for fold in range(2):
    s = splits.make_split("actor_kfold", fold, actors, k=2)
    assert s.val == () and set(s.train) | set(s.test) == set(actors)
