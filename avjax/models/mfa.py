"""Marginal Fisher Analysis (Yan et al. 2007), S2's feature-level fusion.

MFA is fitted once on the training split (NumPy/SciPy), not learnt by gradient, so
its arrays live in the non-trainable "fitted" variable collection and travel with
every checkpoint. Fitting sees only what it is given: evaluation data cannot leak
into the projection.

Graphs on the (standardised) training vectors:
  * intrinsic: i ~ j when j is one of i's k1 nearest same-class neighbours (or
    the other way round), S symmetric, weight 1;
  * penalty: per class c, the k2 nearest pairs (i, j) with i in c and j outside c
    (Yan et al.'s P_k2(c), the paper's eq. 20-22), pooled over classes. `penalty=
    "per_sample"` instead links each sample to its k2 nearest other-class
    samples, which gives a better-conditioned penalty scatter on few classes.
Both Laplacians are L = D - S. The projection minimises
w' X L X' w / w' X Lp X' w: the generalised symmetric eigenproblem
X L X' w = lambda (X Lp X' + ridge I) w, smallest lambdas first. The ridge is
`reg` times the mean diagonal of X Lp X' (scale-free): Lp's rank is at most its
number of edges, and directions the penalty graph never sees get a huge ratio
and sort last instead of dividing by zero.

A PCA step comes first, as in Yan et al.: the problem is solved in the span of
the training data, at most n - C dimensions (n samples, C classes), or, with
`pca_energy`, the fewest leading directions that hold that fraction of the
training variance (Yan et al.'s other option). Without it, a
training set smaller than the input width (324 fused values, a few hundred clips)
leaves directions where every training sample is equal: both scatters vanish
there, so they score lambda = 0 and win, and rescaling them to unit variance
amplifies rounding noise. When fewer directions exist than `dim`, the extra
outputs are zero (FERCNN still gets its fixed input width).

Each kept direction is rescaled to unit variance on the training data (the raw
eigenvectors are B-normalised, so their scale follows the edge count) and
centred; sign fixed so the largest-magnitude weight is positive (deterministic).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse

from avjax.errors import UserError
from avjax.models import FITTED

Array = Any
PENALTIES = ("per_class", "per_sample")
MIN_STD = 1e-6


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def _smallest(d: np.ndarray, k: int, axis: int | None) -> np.ndarray:
  """Indices of the k smallest entries (along `axis`, or of the flattened array),
  nearest first; argpartition keeps it linear in the matrix size."""
  if axis is None:
    flat = d.reshape(-1)
    idx = np.argpartition(flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    return idx[np.argsort(flat[idx], kind="stable")]
  idx = np.argpartition(d, k - 1, axis=axis)[:, :k] if k < d.shape[1] else \
      np.tile(np.arange(d.shape[1]), (d.shape[0], 1))
  return np.take_along_axis(idx, np.argsort(np.take_along_axis(d, idx, axis=1), axis=1,
                                            kind="stable"), axis=1)


def _symmetric(rows, cols, n: int) -> scipy.sparse.csr_matrix:
  rows = np.asarray(rows, np.int64)
  cols = np.asarray(cols, np.int64)
  s = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
  s = s.maximum(s.T)  # Undirected, weight 1 even where an edge is found twice.
  s.data[:] = 1.0
  return s


def mfa_graphs(x: np.ndarray, labels: np.ndarray, k1: int, k2: int,
               penalty: str = "per_class"
               ) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]:
  """(intrinsic S, penalty Sp) adjacency matrices, symmetric 0/1, (n, n)."""
  if penalty not in PENALTIES:
    raise UserError(f"mfa penalty must be one of {PENALTIES}, got {penalty!r}")
  if k1 < 1 or k2 < 1:
    raise UserError(f"MFA needs k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}")
  x = np.asarray(x, np.float64)
  labels = np.asarray(labels).reshape(-1)
  n = x.shape[0]
  classes = np.unique(labels)
  if len(classes) < 2:
    raise UserError(f"MFA needs at least two classes in the training data, got {len(classes)}")
  rows, cols, prow, pcol = [], [], [], []
  for c in classes:
    inside = np.flatnonzero(labels == c)
    outside = np.flatnonzero(labels != c)
    k = min(k1, len(inside) - 1)
    if k >= 1:  # A class of one sample has no same-class neighbour.
      d = _sq_dists(x[inside], x[inside])
      np.fill_diagonal(d, np.inf)
      nearest = _smallest(d, k, axis=1)
      rows.extend(np.repeat(inside, k))
      cols.extend(inside[nearest.reshape(-1)])
    d = _sq_dists(x[inside], x[outside])
    if penalty == "per_class":
      k = min(k2, d.size)
      flat = _smallest(d, k, axis=None)
      i, j = np.unravel_index(flat, d.shape)
      prow.extend(inside[i])
      pcol.extend(outside[j])
    else:
      k = min(k2, len(outside))
      nearest = _smallest(d, k, axis=1)
      prow.extend(np.repeat(inside, k))
      pcol.extend(outside[nearest.reshape(-1)])
  return _symmetric(rows, cols, n), _symmetric(prow, pcol, n)


def _laplacian_scatter(x: np.ndarray, s: scipy.sparse.csr_matrix) -> np.ndarray:
  """X' (D - S) X for row-sample X, without forming dense n x n matrices."""
  degree = np.asarray(s.sum(axis=1)).reshape(-1)
  m = x.T @ (degree[:, None] * x) - x.T @ (s @ x)
  return 0.5 * (m + m.T)


def fit_mfa(x: np.ndarray, labels: np.ndarray, dim: int, *, k1: int = 5, k2: int = 100,
            reg: float = 1e-3, penalty: str = "per_class",
            pca_energy: float | None = None,
            standardize: bool = True) -> dict[str, np.ndarray]:
  """Fits standardise + MFA on (n, D) training vectors.

  Returns float32 arrays `mean` (D,), `std` (D,), `projection` (D, dim), `bias`
  (dim,) such that `((x - mean) / std) @ projection + bias` is the projected
  feature (zero mean, unit variance on the training data), and `eigenvalues`
  (dim,), ascending (smaller = more discriminative).
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise UserError(f"MFA fits (samples, features) arrays, got shape {x.shape}")
  labels = np.asarray(labels).reshape(-1)
  if labels.shape[0] != x.shape[0]:
    raise UserError(f"MFA: {x.shape[0]} samples but {labels.shape[0]} labels")
  n, d_in = x.shape
  if not 1 <= dim <= d_in:
    raise UserError(f"mfa_dim must be in [1, {d_in}] (the input width), got {dim}")
  if reg <= 0:
    raise UserError(f"mfa_reg must be > 0 (the ridge keeps the eigenproblem solvable), got {reg}")
  if pca_energy is not None and not 0.0 < pca_energy <= 1.0:
    raise UserError(f"mfa_pca_energy must be in (0, 1] or None, got {pca_energy}")
  if standardize:
    mean, std = standardizer(x)
  else:
    mean, std = np.zeros(d_in), np.ones(d_in)
  z = (x - mean) / std
  s, sp = mfa_graphs(z, labels, k1, k2, penalty)
  pca = _pca_basis(z, max_dims=n - len(np.unique(labels)), energy=pca_energy)  # (D, r)
  zp = z @ pca
  r = pca.shape[1]
  a = _laplacian_scatter(zp, s)
  b = _laplacian_scatter(zp, sp)
  ridge = reg * max(float(np.trace(b)) / r, 1e-12)
  b = b + ridge * np.eye(r)
  kept = min(dim, r)
  values, w = scipy.linalg.eigh(a, b, subset_by_index=[0, kept - 1])
  order = np.argsort(values, kind="stable")
  values, w = values[order], pca @ w[:, order]                  # back to (D, kept)
  # Sign convention: the largest-magnitude weight of each direction is positive.
  pivot = np.abs(w).argmax(axis=0)
  w = w * np.where(w[pivot, np.arange(kept)] < 0, -1.0, 1.0)
  y = z @ w
  scale = np.maximum(y.std(axis=0), MIN_STD)
  w = w / scale
  bias = -(y.mean(axis=0) / scale)
  if kept < dim:  # Fewer directions than outputs: the rest are constant zero.
    w = np.concatenate([w, np.zeros((d_in, dim - kept))], axis=1)
    bias = np.concatenate([bias, np.zeros(dim - kept)])
    values = np.concatenate([values, np.full(dim - kept, np.inf)])
  return {"mean": mean.astype(np.float32), "std": std.astype(np.float32),
          "projection": w.astype(np.float32), "bias": bias.astype(np.float32),
          "eigenvalues": values.astype(np.float32)}


def _pca_basis(z: np.ndarray, max_dims: int, rel_tol: float = 1e-8,
               energy: float | None = None) -> np.ndarray:
  """Orthonormal (D, r) basis of the centred data's principal directions with
  non-negligible variance, r <= max_dims; with `energy`, also no more than the
  fewest leading directions whose variance reaches that fraction of the total."""
  zc = z - z.mean(axis=0)
  _, sing, vt = np.linalg.svd(zc, full_matrices=False)
  keep = sing > rel_tol * max(float(sing[0]) if sing.size else 0.0, 1e-300)
  r = min(int(np.sum(keep)), max(int(max_dims), 1))
  if energy is not None and sing.size:
    share = np.cumsum(sing ** 2) / max(float(np.sum(sing ** 2)), 1e-300)
    r = min(r, int(np.searchsorted(share, energy * (1.0 - 1e-12))) + 1)
  return vt[:max(1, r)].T


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature mean and std (floored: a constant feature maps to 0, not inf)."""
  x = np.asarray(x, np.float64)
  return x.mean(axis=0), np.maximum(x.std(axis=0), MIN_STD)


class FittedProjection(nn.Module):
  """Standardise with a fitted mean/std, then apply a fitted linear map.

  Every array is in the "fitted" collection (never trained). Before a fit the
  values are the identity: mean 0, std 1 and the first `features` coordinates,
  so an unfitted model still runs. `features=None` standardises only.
  """
  features: int | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    d = x.shape[-1]
    mean = self.variable(FITTED, "mean", lambda: jnp.zeros((d,), jnp.float32))
    std = self.variable(FITTED, "std", lambda: jnp.ones((d,), jnp.float32))
    x = (x - mean.value) / std.value
    if self.features is None:
      return x
    if self.features > d:
      raise UserError(f"projection to {self.features} dims needs at least that many "
                      f"inputs, got {d}")
    projection = self.variable(FITTED, "projection",
                               lambda: jnp.eye(d, self.features, dtype=jnp.float32))
    bias = self.variable(FITTED, "bias", lambda: jnp.zeros((self.features,), jnp.float32))
    return x @ projection.value + bias.value


def fitted_variables(fit: dict[str, np.ndarray], project: bool) -> dict[str, np.ndarray]:
  """The arrays of `fit_mfa` (or a standardiser) as FittedProjection's variables."""
  keys = ("mean", "std", "projection", "bias") if project else ("mean", "std")
  return {k: jnp.asarray(fit[k], jnp.float32) for k in keys}
