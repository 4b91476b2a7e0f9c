"""Evaluation protocols: actor-disjoint folds, leaky refusal, fixed split data."""

import pytest

from input_pipeline import splits

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
