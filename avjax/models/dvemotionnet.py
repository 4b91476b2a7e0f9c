"""S2, DV EmotionNet (Dommeti et al. 2024): fitted standardise + Marginal Fisher
Analysis on feature vectors, then the paper's Conv1D "FERCNN".

FERCNN follows the Keras summary in the paper layer by layer: input (162, 1);
Conv1D 256/128/64/64/32, kernel 3, 'valid'; max-pool 3 after the first three
(the last two pools print an unchanged length, i.e. pool size 1: a no-op here);
dropout 0.2 after the 2nd and 3rd pool and after Dense 256; 152,614 parameters for
6 classes. Convolution activations are not printed; ReLU (Keras-era default
choice) is ours. The 256-wide Dense (after ReLU, before dropout) is `embedding`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from avjax.errors import UserError
from avjax.models import conv, max_pool, register_fit, register_model
from avjax.models import mfa as mfa_lib

Array = Any


def min_input_length(kernel_size: int, pools: Sequence[int]) -> int:
  """Shortest input for which every 'valid' conv (and pool) leaves length >= 1."""
  length = 1
  for pool in reversed(tuple(pools)):
    length = length * pool + kernel_size - 1
  return length


@register_model("fercnn")
class FERCNN(nn.Module):
  """Conv1D/max-pool stack over a (length, 1) vector, Dense 256, Dense classes.

  Takes a mapping (`inputs[input_key]`, (B, L) or (B, L, 1)) like every model, or
  the array itself when used inside DVEmotionNet. Stage outputs are sown into
  "intermediates" (conv1, pool1, ...) so the per-layer shapes can be checked.
  """
  num_classes: int = 6
  features: Sequence[int] = (256, 128, 64, 64, 32)
  kernel_size: int = 3
  pools: Sequence[int] = (3, 3, 3, 1, 1)  # Pool size after each conv, 1: none.
  dropout_after: Sequence[int] = (1, 2)  # Indices of the pools followed by dropout.
  hidden: int = 256
  dropout_rate: float = 0.2
  input_key: str = "handcrafted162"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array] | Array, *, train: bool) -> dict:
    x = inputs[self.input_key] if isinstance(inputs, Mapping) else inputs
    x = jnp.asarray(x)
    if x.ndim == 2:
      x = x[..., None]
    if len(self.pools) != len(self.features):
      raise UserError(f"fercnn: {len(self.features)} conv widths but "
                      f"{len(self.pools)} pool sizes")
    needed = min_input_length(self.kernel_size, self.pools)
    if x.shape[1] < needed:
      raise UserError(f"fercnn needs inputs of length >= {needed}, got {x.shape[1]}")
    x = x.astype(self.dtype)
    for i, (width, pool) in enumerate(zip(self.features, self.pools)):
      x = nn.relu(conv(width, (self.kernel_size,), padding="VALID", dtype=self.dtype)(x))
      self.sow("intermediates", f"conv{i + 1}", x)
      if pool > 1:
        x = max_pool(x, (pool,), strides=(pool,))
      self.sow("intermediates", f"pool{i + 1}", x)
      if i in self.dropout_after:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    self.sow("intermediates", "flatten", x)
    embedding = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(embedding)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return {"logits": logits.astype(jnp.float32),
            "embedding": embedding.astype(jnp.float32)}


@register_model("dvemotionnet")
class DVEmotionNet(nn.Module):
  """Concatenated feature vectors -> fitted standardise (+ MFA) -> FERCNN.

  The standardiser and the MFA projection are in the "fitted" collection, filled
  by `fit_dvemotionnet` on the training split; with `mfa=False` it standardises
  only and FERCNN sees the concatenation itself.
  """
  num_classes: int = 6
  input_keys: Sequence[str] = ("handcrafted162",)
  mfa: bool = True
  mfa_dim: int = 162
  mfa_k1: int = 5
  mfa_k2: int = 100
  mfa_reg: float = 1e-3
  mfa_penalty: str = "per_class"
  mfa_pca_energy: float | None = None
  features: Sequence[int] = (256, 128, 64, 64, 32)
  kernel_size: int = 3
  pools: Sequence[int] = (3, 3, 3, 1, 1)
  dropout_after: Sequence[int] = (1, 2)
  hidden: int = 256
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  def concat(self, inputs: Mapping[str, Array]) -> Array:
    missing = [k for k in self.input_keys if k not in inputs]
    if missing:
      raise UserError(f"dvemotionnet: inputs lack {missing} (has {sorted(inputs)})")
    parts = [jnp.asarray(inputs[k], jnp.float32) for k in self.input_keys]
    return jnp.concatenate([p.reshape((p.shape[0], -1)) for p in parts], axis=-1)

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    x = self.concat(inputs)
    x = mfa_lib.FittedProjection(self.mfa_dim if self.mfa else None,
                                 name="preprocess")(x)
    return FERCNN(num_classes=self.num_classes, features=tuple(self.features),
                  kernel_size=self.kernel_size, pools=tuple(self.pools),
                  dropout_after=tuple(self.dropout_after), hidden=self.hidden,
                  dropout_rate=self.dropout_rate, dtype=self.dtype,
                  name="fercnn")(x, train=train)


@register_fit("dvemotionnet")
def fit_dvemotionnet(model: DVEmotionNet, variables: Mapping[str, Any],
                     inputs: Mapping[str, np.ndarray], labels: np.ndarray) -> dict:
  """Fits the standardiser (and MFA) on the training split's vectors.

  Uses only `inputs`/`labels` (the training split); returns {"fitted": ...} with
  the same tree and shapes as the initialised collection.
  """
  missing = [k for k in model.input_keys if k not in inputs]
  if missing:
    raise UserError(f"dvemotionnet fit: training inputs lack {missing} (has {sorted(inputs)})")
  x = np.concatenate([np.asarray(inputs[k], np.float64).reshape(len(inputs[k]), -1)
                      for k in model.input_keys], axis=-1)
  labels = np.asarray(labels).reshape(-1)
  if model.mfa:
    fit = mfa_lib.fit_mfa(x, labels, model.mfa_dim, k1=model.mfa_k1, k2=model.mfa_k2,
                          reg=model.mfa_reg, penalty=model.mfa_penalty,
                          pca_energy=model.mfa_pca_energy)
  else:
    mean, std = mfa_lib.standardizer(x)
    fit = {"mean": mean, "std": std}
  fitted = mfa_lib.fitted_variables(fit, project=model.mfa)
  initial = variables.get(mfa_lib.FITTED, {}).get("preprocess")
  if initial is not None:  # Same tree and shapes as init, or the trainer's swap breaks.
    for k, v in initial.items():
      if k not in fitted or tuple(fitted[k].shape) != tuple(v.shape):
        raise UserError(f"dvemotionnet fit: fitted {k!r} has shape "
                        f"{getattr(fitted.get(k), 'shape', None)}, model expects {v.shape}")
  return {mfa_lib.FITTED: {"preprocess": fitted}}
