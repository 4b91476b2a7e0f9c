"""S5, Aktürk & Keçeli 2024: a two-branch operational (Self-ONN) network.

One branch reads the selected key frame (96x96 RGB), the other the mel spectrogram
drawn as a 128x128 image; each is a stack of 2D operational convolutions of Taylor
order Q (`avjax.layers.OperationalConv`) with max-pools, globally pooled to one
vector. The two vectors are concatenated and a Dense classifier follows. The
single-input ablations of the paper are the same module with one branch
(`branches=("keyframe",)` or `("mel",)`), so the two differ only in what they see.

The review fixes the layer type, the two inputs and the late concatenation; the
depths, widths, Q, pooling and head are ours (listed in experiments/akturk2024.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avjax import layers
from avjax import models as models_lib
from avjax.layers.operational import operational_init
from avjax.models import max_pool, register_model

Array = Any

BRANCHES = ("keyframe", "mel")
GLOBAL_POOLS = ("avg", "max", "flatten")


def flat_operational_init(q_order: int):
  """`operational_init(q_order)`, with each power block drawn as one column.

  Why: XLA:CPU compiles a threefry normal draw of a 4-D shape several times slower
  than a flat one (about 2 s against 0.6 s of CPU per kernel here), which is most
  of this model's init on a CPU. Asking the layer's init for a (Q*n, 1) kernel
  keeps its per-block variance: with fan_in' = n = prod(k)*C*O, scale O gives
  O / (Q * n * m) = 1 / (Q * prod(k)*C * m). The same key and element count give
  the same values in the same order, so the kernel is the one the layer would draw.
  """
  def init(key, shape, dtype=jnp.float32):
    *ksize, qc, out = shape
    c = qc // q_order
    n = math.prod(ksize) * c * out
    flat = operational_init(q_order, scale=float(out))(key, (q_order * n, 1), dtype)
    blocks = jnp.split(flat[:, 0], q_order)
    return jnp.concatenate([b.reshape(*ksize, c, out) for b in blocks], axis=-2)
  return init


class ONNBranch(nn.Module):
  """Operational conv + max-pool blocks, then tanh and a global pool.

  No activation sits between blocks: each OperationalConv squashes its own input
  with tanh, which is the Self-ONN nonlinearity. Max-pooling before that tanh is
  the same as after it (tanh is increasing). The last block's output goes through
  the same tanh so the branch vector is bounded like every operational input.
  """
  features: Sequence[int]
  q_order: int
  kernel_size: int
  pool_size: int
  global_pool: str
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:  # (B, H, W, C) in [-1, 1].
    k, p = self.kernel_size, self.pool_size
    for width in self.features:
      # Read at call time, as `models.conv` does: the trainer sets it from
      # config.model.conv_impl before building the model.
      x = layers.OperationalConv(width, (k, k), q_order=self.q_order, padding="SAME",
                                 dtype=self.dtype, impl=models_lib._CONV_IMPL,  # pylint: disable=protected-access
                                 kernel_init=flat_operational_init(self.q_order))(x)
      if p > 1:
        x = max_pool(x, (p, p), strides=(p, p))
    x = jnp.tanh(x)
    if self.global_pool == "avg":
      return jnp.mean(x, axis=(1, 2))
    if self.global_pool == "max":
      return jnp.max(x, axis=(1, 2))
    return x.reshape((x.shape[0], -1))


@register_model("akturk_onn")
class DualBranchONN(nn.Module):
  """Key-frame and mel-image Self-ONN branches, concatenated, Dense classifier.

  `embedding` is the last hidden Dense layer (the concatenated branch vector when
  `hidden` is empty), the fused representation a later system can reuse.
  """
  num_classes: int = 8
  branches: Sequence[str] = BRANCHES
  q_order: int = 3
  keyframe_features: Sequence[int] = (16, 32, 64)
  mel_features: Sequence[int] = (16, 32, 64)
  kernel_size: int = 3
  pool_size: int = 2
  global_pool: str = "avg"
  hidden: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  keyframe_key: str = "keyframe"
  mel_key: str = "mel_image"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    branches = tuple(self.branches)
    unknown = [b for b in branches if b not in BRANCHES]
    if not branches or unknown or len(set(branches)) != len(branches):
      raise ValueError(f"branches must be distinct names from {BRANCHES}, got {branches}")
    if self.global_pool not in GLOBAL_POOLS:
      raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")

    vectors = []
    for name in branches:  # Fixed order, so parameter names do not depend on it.
      if name == "keyframe":
        # uint8 on the wire; Self-ONN inputs live in [-1, 1].
        x = jnp.asarray(inputs[self.keyframe_key], jnp.float32) / 127.5 - 1.0
        features = self.keyframe_features
      else:
        x = jnp.asarray(inputs[self.mel_key], jnp.float32)[..., None] * 2.0 - 1.0
        features = self.mel_features
      branch = ONNBranch(tuple(features), self.q_order, self.kernel_size,
                         self.pool_size, self.global_pool, self.dtype, name=name)
      vectors.append(branch(x.astype(self.dtype)))
    x = jnp.concatenate(vectors, axis=-1) if len(vectors) > 1 else vectors[0]

    embedding = x
    for width in self.hidden:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      embedding = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return {"logits": logits.astype(jnp.float32),
            "embedding": embedding.astype(jnp.float32)}
