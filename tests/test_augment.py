"""Training-split augmentations (input_pipeline/augment.py): what each transform
does to a log-mel, determinism under a seed, mixup's targets, and that the
evaluation splits are never transformed."""

from __future__ import annotations

import librosa
import ml_collections
import numpy as np
import pytest

from input_pipeline import augment, loader
from input_pipeline.errors import ConfigError


def _logmel(t=120, f=64, real=None, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(t, f)).astype(np.float32)
  mask = np.ones((t,), bool)
  if real is not None:
    mask[real:] = False
    x[real:] = np.log(1e-6)
  return {"logmel": x, "logmel_mask": mask, "label": np.int32(3)}


def _tone_logmel(hz, t=20, n_mels=64):
  """A log-mel whose energy sits at the band whose centre is nearest `hz`."""
  centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=8000.0)[1:-1]
  x = np.full((t, n_mels), -10.0, np.float32)
  x[:, int(np.argmin(np.abs(centres - hz)))] = 0.0
  return x, centres


@pytest.mark.parametrize("factor", [0.85, 1.12, 1.25])
def test_frequency_warp_moves_a_tone_to_factor_times_its_frequency(factor):
  x, centres = _tone_logmel(1500.0)
  source = centres[int(np.argmax(x[0]))]
  warped = augment.warp_frequency(x, factor)
  assert warped.shape == x.shape
  got = centres[int(np.argmax(warped[0]))]
  # Within one band of the exact target (bands are ~5 % apart at 1.5 kHz).
  target = int(np.argmin(np.abs(centres - source * factor)))
  assert abs(int(np.argmax(warped[0])) - target) <= 1, (source, got, source * factor)
  assert augment.warp_frequency(x, 1.0) is x


def test_speed_perturb_changes_length_and_pitch_together():
  x, centres = _tone_logmel(1000.0, t=100)
  el = {"logmel": x, "logmel_mask": np.ones((100,), bool), "label": np.int32(0)}
  t = augment.SpeedPerturb("logmel", "logmel_mask", min_rate=1.2, max_rate=1.2)
  out = t.random_map(el, np.random.default_rng(0))
  assert out["logmel"].shape == (round(100 / 1.2), 64)
  assert out["logmel_mask"].shape == (round(100 / 1.2),)
  band = int(np.argmax(out["logmel"][0]))
  assert centres[band] > 1100.0  # Faster playback raises the pitch.
  slow = augment.SpeedPerturb("logmel", "logmel_mask", min_rate=0.9, max_rate=0.9)
  assert slow.random_map(el, np.random.default_rng(0))["logmel"].shape[0] == round(100 / 0.9)
  assert el["logmel"] is x  # The input example is not modified in place.


def test_pitch_shift_keeps_the_time_axis_and_zero_shift_is_identity():
  el = _logmel()
  out = augment.PitchShift("logmel", semitones=3.0).random_map(el, np.random.default_rng(1))
  assert out["logmel"].shape == el["logmel"].shape
  assert not np.allclose(out["logmel"], el["logmel"])
  same = augment.PitchShift("logmel", semitones=0.0).random_map(el, np.random.default_rng(1))
  np.testing.assert_array_equal(same["logmel"], el["logmel"])


def test_time_crop_stays_inside_the_real_frames():
  el = _logmel(t=400, real=300)
  crop = augment.RandomTimeCrop("logmel", "logmel_mask", length=200)
  starts = set()
  for seed in range(30):
    out = crop.random_map(el, np.random.default_rng(seed))
    assert out["logmel"].shape == (200, 64) and out["logmel_mask"].all()
    start = int(np.flatnonzero((el["logmel"] == out["logmel"][0]).all(axis=1))[0])
    assert 0 <= start <= 100
    np.testing.assert_array_equal(out["logmel"], el["logmel"][start:start + 200])
    starts.add(start)
  assert len(starts) > 5


def test_time_crop_of_a_short_clip_keeps_its_padding_masked():
  el = _logmel(t=150, real=120)
  out = augment.RandomTimeCrop("logmel", "logmel_mask", length=200).random_map(
      el, np.random.default_rng(0))
  assert out["logmel"].shape == (200, 64)
  assert out["logmel_mask"].sum() == 120 and out["logmel_mask"][:120].all()
  np.testing.assert_array_equal(out["logmel"][:150], el["logmel"])


def test_time_crop_with_active_db_stays_inside_the_loud_span():
  el = _logmel(t=400)
  el["logmel"][:120] = -12.0   # Quiet lead-in and tail, ~50 dB below the speech.
  el["logmel"][330:] = -12.0
  crop = augment.RandomTimeCrop("logmel", "logmel_mask", length=100, active_db=30.0)
  for seed in range(20):
    out = crop.random_map(el, np.random.default_rng(seed))
    assert out["logmel"].shape == (100, 64)
    assert (out["logmel"] > -12.0).any(axis=1).all()  # Never a silent frame.
  # A loud span shorter than the window is centred in it.
  long = augment.RandomTimeCrop("logmel", "logmel_mask", length=300, active_db=30.0)
  out = long.random_map(el, np.random.default_rng(0))
  start = 120 + (210 - 300) // 2
  np.testing.assert_array_equal(out["logmel"], el["logmel"][start:start + 300])


def test_mixup_targets_sum_to_one_and_the_loss_is_the_mixed_target_loss():
  import jax.numpy as jnp
  from avjax import losses
  rng = np.random.default_rng(0)
  batch = {"logmel": rng.normal(size=(16, 10, 4)).astype(np.float32),
           "label": rng.integers(0, 8, 16).astype(np.int32)}
  mixed = augment.Mixup(["logmel"], alpha=0.4).random_map(batch, np.random.default_rng(2))
  lam = mixed["mixup_lambda"]
  assert ((lam >= 0.5) & (lam <= 1.0)).all() and not np.all(lam == 1.0)
  target = (lam[:, None] * np.eye(8)[mixed["label"]]
            + (1 - lam[:, None]) * np.eye(8)[mixed["mixup_label"]])
  np.testing.assert_allclose(target.sum(axis=1), 1.0, rtol=1e-6)
  logits = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  got = np.asarray(losses.cross_entropy({"logits": logits}, mixed, num_classes=8))
  logp = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(1, keepdims=True))
  np.testing.assert_allclose(got, -(target * logp).sum(axis=1), rtol=1e-5)


def _source(n=24):
  return [dict(_logmel(t=80, real=80 - (i % 3) * 10, seed=i), label=np.int32(i % 4))
          for i in range(n)]


def _augment_config():
  return ml_collections.ConfigDict({
      "spec_augment": {"key": "logmel", "time_masks": 2, "time_width": 10,
                       "freq_masks": 2, "freq_width": 8},
      "time_crop": {"key": "logmel", "mask_key": "logmel_mask", "length": 50},
      "speed_perturb": {"key": "logmel", "mask_key": "logmel_mask"},
      "mixup": {"keys": ["logmel"], "alpha": 0.2}}).to_dict()


def test_transforms_run_in_a_fixed_order_and_are_deterministic_under_a_seed():
  per_example, mixup = loader.augmentations_from_config(_augment_config())
  assert [type(t) for t in per_example] == [augment.SpeedPerturb, augment.RandomTimeCrop,
                                            augment.SpecAugment]
  keys = ["logmel", "logmel_mask"]

  def batches(seed):
    it = iter(loader.train_dataset(_source(), batch_size=8, seed=seed, keys=keys,
                                   transforms=per_example, batch_transforms=[mixup]))
    return [next(it) for _ in range(4)]
  a, b, c = batches(0), batches(0), batches(1)
  for x, y in zip(a, b):
    assert x["logmel"].shape == (8, 50, 64)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not all(np.array_equal(x["logmel"], y["logmel"]) for x, y in zip(a, c))


def test_unknown_augmentation_and_bad_parameters_are_config_errors():
  with pytest.raises(ConfigError, match="unknown augmentation 'warp'"):
    loader.augmentations_from_config({"warp": {}})
  with pytest.raises(ConfigError, match="time_crop"):
    loader.augmentations_from_config({"time_crop": {"key": "logmel", "lenght": 3}})
  per_example, mixup = loader.augmentations_from_config(
      {"spec_augment": {"key": "x", "enabled": False}})
  assert per_example == [] and mixup is None


def test_only_the_training_split_is_augmented(prepared):
  """create_datasets on a prepared corpus: evaluation batches are the stored
  features exactly; training batches with SpecAugment are not."""
  data_dir = prepared("logmel")
  cfg = ml_collections.ConfigDict(dict(
      dataset="ravdess", data_dir=str(data_dir), feature_set="logmel",
      protocol="actor_kfold", k=4, fold=0, keys=("logmel", "logmel_mask"),
      augment={"spec_augment": {"key": "logmel", "time_masks": 2, "time_width": 40,
                                "freq_masks": 2, "freq_width": 16}}))
  plain_cfg = ml_collections.ConfigDict(cfg.to_dict())
  plain_cfg.augment = {}
  aug = loader.create_datasets(cfg, global_batch_size=4, seed=0)
  plain = loader.create_datasets(plain_cfg, global_batch_size=4, seed=0)
  for split in aug.evals:
    for x, y in zip(aug.evals[split](), plain.evals[split](), strict=True):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
  xa, xp = next(iter(aug.train)), next(iter(plain.train))
  np.testing.assert_array_equal(xa["label"], xp["label"])
  assert not np.array_equal(xa["logmel"], xp["logmel"])
