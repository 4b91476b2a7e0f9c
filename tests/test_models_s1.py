"""S1 networks: output shapes, embedding width, parameter counts from layer shapes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax import models
from avjax.errors import UserError

def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

def _abstract_params(model, inputs):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))["params"]

def test_audio_param_count_at_paper_shapes():
  model = models.get_model("sultana_audio")  # Defaults: (180, 20) MFCC frames, 8 classes.
  inputs = {"mfcc": jnp.zeros((1, 180, 20)), "mfcc_mask": jnp.ones((1, 180))}
  expected, t, c_in = 0, 180, 20
  for width in model.features:  # SAME conv keeps t; pool halves it (floor).
    expected += model.kernel_size * c_in * width + width
    t, c_in = t // model.pool_size, width
  d = t * c_in
  for width in (*model.hidden, model.num_classes):
    expected += d * width + width
    d = width
  assert _count(_abstract_params(model, inputs)) == expected

def test_video_param_count_at_paper_shapes():
  model = models.get_model("sultana_video")
  shape = (30, 80, 70, 1)
  inputs = {"frames3d": jnp.zeros((1, *shape), jnp.uint8)}
  expected, dims, c_in = 0, list(shape[:3]), 1
  for i, width in enumerate(model.features):
    expected += math.prod(model.kernel_size) * c_in * width + width
    c_in = width
    if i in model.pool_after:
      dims = [d // p for d, p in zip(dims, model.pool_size)]
  d = math.prod(dims) * c_in
  for width in (*model.hidden, model.num_classes):
    expected += d * width + width
    d = width
  assert _count(_abstract_params(model, inputs)) == expected
  assert len(model.features) == 4 and len(model.pool_after) == 2

@pytest.mark.parametrize("name,inputs", [
    ("sultana_audio", {"mfcc": np.random.default_rng(0).normal(size=(3, 24, 20)).astype(np.float32),
                       "mfcc_mask": np.ones((3, 24), np.float32)}),
    ("sultana_video", {"frames3d": np.random.default_rng(0).integers(
        0, 256, (3, 8, 12, 10, 1), dtype=np.uint8)}),
])
def test_outputs_embedding_and_bf16(name, inputs):
  for dtype in (jnp.float32, jnp.bfloat16):
    model = models.get_model(name, num_classes=6, dtype=dtype)
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(inputs)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))  # f32 params.
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, inputs)
    assert out["logits"].shape == (3, 6) and out["embedding"].shape == (3, 64)
    assert out["logits"].dtype == jnp.float32
    assert np.isfinite(np.asarray(out["logits"])).all()
    assert (np.asarray(out["embedding"]) >= 0).all()  # A ReLU layer.

def test_audio_mask_hides_padded_frames():
  model = models.get_model("sultana_audio", features=(4,), hidden=(8, 64))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 20, 20)).astype(np.float32)
  mask = np.ones((1, 20), np.float32)
  mask[:, 12:] = 0.0
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
      {"mfcc": x, "mfcc_mask": mask})
  noisy = x.copy()
  noisy[:, 12:] = 1e3  # Garbage in the padding must not change the output.
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
  a = apply(variables, {"mfcc": x, "mfcc_mask": mask})
  b = apply(variables, {"mfcc": noisy, "mfcc_mask": mask})
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

def test_conv_factory_is_used_by_every_model():
  built = []

  def counting_conv(**kwargs):
    built.append(len(kwargs["kernel_size"]))
    return nn.Conv(**kwargs)

  previous = models.set_conv_factory(counting_conv)
  try:
    audio = models.get_model("sultana_audio")
    jax.eval_shape(lambda: audio.init(jax.random.PRNGKey(0), {"mfcc": jnp.zeros((1, 40, 20))},
                                      train=False))
    video = models.get_model("sultana_video")
    jax.eval_shape(lambda: video.init(
        jax.random.PRNGKey(0), {"frames3d": jnp.zeros((1, 8, 8, 8, 1), jnp.uint8)}, train=False))
  finally:
    models.set_conv_factory(previous)
  assert built == [1] * len(audio.features) + [3] * len(video.features)

def test_unknown_model_is_a_user_error():
  with pytest.raises(UserError, match="sultana_audio"):
    models.get_model("no_such_model")

def test_conv_kernel_init_matches_lecun_normal_statistics():
  shape = (3, 3, 3, 16, 64)
  ours = np.asarray(models.conv_kernel_init(jax.random.PRNGKey(0), shape))
  # Flax's default on a 2-D kernel with the same fan_in (fast to compile on CPU).
  flax_default = np.asarray(nn.initializers.lecun_normal()(jax.random.PRNGKey(1),
                                                           (3 * 3 * 3 * 16, 64)))
  assert ours.shape == shape
  # Both: truncated at 2 std, std 1/sqrt(fan_in), fan_in = 3*3*3*16.
  bound = 2.0 / 0.87962566103423978 / math.sqrt(3 * 3 * 3 * 16)
  assert np.abs(ours).max() <= bound + 1e-6
  assert ours.std() == pytest.approx(flax_default.std(), rel=0.03)
  assert ours.std() == pytest.approx(1 / math.sqrt(3 * 3 * 3 * 16), rel=0.03)

def test_audio_cmvn_makes_the_output_scale_invariant_per_coefficient():
  model = models.get_model("sultana_audio", features=(4,), hidden=(8, 64))
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 16, 20)).astype(np.float32)
  mask = np.ones((2, 16), bool)
  mask[1, 10:] = False
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
      {"mfcc": x, "mfcc_mask": mask})
  # An affine change of each coefficient (as between recording gains) is undone.
  shifted = x * rng.uniform(0.5, 3.0, (1, 1, 20)).astype(np.float32) - 300.0
  a = apply(variables, {"mfcc": x, "mfcc_mask": mask})
  b = apply(variables, {"mfcc": shifted, "mfcc_mask": mask})
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-3)
