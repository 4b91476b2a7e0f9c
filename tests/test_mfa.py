"""Marginal Fisher Analysis: graphs, discrimination on toy data, train-only fitting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax import models
from avjax.errors import UserError
from avjax.models import mfa


def _toy(n_per_class=40, classes=3, nuisance=4, seed=0):
  """Classes separated along 2 dims; `nuisance` dims of pure, much larger noise."""
  rng = np.random.default_rng(seed)
  centres = 3.0 * rng.normal(size=(classes, 2))
  y = np.repeat(np.arange(classes), n_per_class)
  signal = centres[y] + 0.5 * rng.normal(size=(len(y), 2))
  noise = 20.0 * rng.normal(size=(len(y), nuisance))
  x = np.concatenate([noise[:, :1], signal, noise[:, 1:]], axis=1)  # Signal not first.
  perm = rng.permutation(len(y))
  return x[perm], y[perm]


def _trace_ratio(x, y):
  """tr(S_between) / tr(S_within), LDA's scatter matrices."""
  mu = x.mean(0)
  between = within = 0.0
  for c in np.unique(y):
    xc = x[y == c]
    between += len(xc) * np.sum((xc.mean(0) - mu) ** 2)
    within += np.sum((xc - xc.mean(0)) ** 2)
  return between / within


def _project(fit, x):
  return ((x - fit["mean"]) / fit["std"]) @ fit["projection"] + fit["bias"]


@pytest.mark.parametrize("penalty", mfa.PENALTIES)
def test_projection_increases_trace_ratio(penalty):
  x, y = _toy()
  fit = mfa.fit_mfa(x, y, 2, k1=5, k2=30, penalty=penalty)
  z = _project(fit, x)
  standardised = (x - x.mean(0)) / x.std(0)
  assert _trace_ratio(z, y) > 3 * _trace_ratio(x, y)
  assert _trace_ratio(z, y) > 3 * _trace_ratio(standardised, y)
  # The kept directions live on the signal dims (1, 2), not on the noise.
  w = fit["projection"] * fit["std"][:, None] ** -1  # Weights on the raw scale.
  signal = np.abs(w[[1, 2]]).sum()
  assert signal > 5 * np.abs(np.delete(w, [1, 2], axis=0)).sum()
  assert np.all(np.diff(fit["eigenvalues"]) >= 0)  # Smallest ratio first.


def test_projected_training_data_is_standardised():
  x, y = _toy(seed=1)
  fit = mfa.fit_mfa(x, y, 4, k1=3, k2=20)
  z = _project(fit, x)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)
  assert fit["projection"].shape == (x.shape[1], 4) and fit["bias"].shape == (4,)
  assert all(v.dtype == np.float32 for v in fit.values())


def test_graphs_follow_the_definition():
  x, y = _toy(n_per_class=10, seed=2)
  s, sp = mfa.mfa_graphs(x, y, k1=2, k2=5, penalty="per_class")
  s, sp = s.toarray(), sp.toarray()
  same = y[:, None] == y[None, :]
  np.testing.assert_array_equal(s, s.T)
  np.testing.assert_array_equal(sp, sp.T)
  assert not np.any(s[~same]) and not np.any(sp[same])  # Within / between only.
  assert not np.any(np.diag(s))
  # Each sample reaches at least its own k1 nearest same-class neighbours.
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  for i in range(len(y)):
    others = np.flatnonzero(same[i] & (np.arange(len(y)) != i))
    nearest = others[np.argsort(d[i, others])[:2]]
    assert s[i, nearest].all()
  # Per class, the k2 closest between-class pairs (at most 5 * classes edges).
  assert 0 < np.triu(sp).sum() <= 5 * len(np.unique(y))
  c0 = np.flatnonzero(y == 0)
  rest = np.flatnonzero(y != 0)
  sub = d[np.ix_(c0, rest)]
  i, j = np.unravel_index(np.argmin(sub), sub.shape)
  assert sp[c0[i], rest[j]] == 1


def test_fit_uses_only_its_data_and_is_deterministic():
  x, y = _toy(seed=3)
  train, held_out = x[:90], x[90:]
  fit_a = mfa.fit_mfa(train, y[:90], 2, k1=5, k2=20)
  fit_b = mfa.fit_mfa(train.copy(), y[:90].copy(), 2, k1=5, k2=20)
  for k in fit_a:
    np.testing.assert_array_equal(fit_a[k], fit_b[k])
  # Held-out rows are mapped one by one by the train-fitted map: no batch
  # statistics, so a row's projection does not depend on what else is projected.
  module = mfa.FittedProjection(2)
  variables = {models.FITTED: mfa.fitted_variables(fit_a, project=True)}
  project = jax.jit(lambda v: module.apply(variables, v))
  held_out = jnp.asarray(held_out, jnp.float32)
  alone = np.concatenate([project(held_out[i:i + 1]) for i in range(len(held_out))])
  mixed = np.asarray(project(jnp.concatenate([held_out, 1e3 * held_out])))[:len(held_out)]
  np.testing.assert_allclose(alone, mixed, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(alone, _project(fit_a, np.asarray(held_out)), rtol=1e-4, atol=1e-4)
  # A different training set does give a different map.
  fit_c = mfa.fit_mfa(x[30:], y[30:], 2, k1=5, k2=20)
  assert not np.allclose(fit_c["mean"], fit_a["mean"])


def test_module_applies_fitted_arrays():
  x, y = _toy(seed=4)
  fit = mfa.fit_mfa(x, y, 3, k1=5, k2=20)
  module = mfa.FittedProjection(3)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, x.shape[1])))
  assert set(variables) == {models.FITTED}
  init = variables[models.FITTED]
  np.testing.assert_array_equal(init["projection"], np.eye(x.shape[1], 3))  # Identity.
  fitted = {models.FITTED: mfa.fitted_variables(fit, project=True)}
  out = module.apply(fitted, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(out), _project(fit, x), rtol=1e-4, atol=1e-4)
  standardise = mfa.FittedProjection(None)
  v = {models.FITTED: mfa.fitted_variables(fit, project=False)}
  out = standardise.apply(v, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(out), (x - fit["mean"]) / fit["std"], rtol=1e-4,
                             atol=1e-4)


def test_constant_feature_is_harmless():
  x, y = _toy(seed=5)
  x[:, 0] = 7.0
  fit = mfa.fit_mfa(x, y, 2, k1=5, k2=20)
  assert all(np.isfinite(v).all() for v in fit.values())


@pytest.mark.parametrize("kwargs", [dict(dim=0), dict(dim=99), dict(reg=0.0),
                                    dict(penalty="nope"), dict(k1=0)])
def test_bad_arguments_are_user_errors(kwargs):
  x, y = _toy(n_per_class=5)
  args = dict(dim=2, k1=2, k2=5, reg=1e-3, penalty="per_class") | kwargs
  dim = args.pop("dim")
  with pytest.raises(UserError):
    mfa.fit_mfa(x, y, dim, **args)


def test_one_class_is_a_user_error():
  x, _ = _toy(n_per_class=5)
  with pytest.raises(UserError):
    mfa.fit_mfa(x, np.zeros(len(x), int), 2)


def test_fewer_samples_than_dims_projects_held_out_data_without_blowing_up():
  """n < D: without the PCA step, directions where all training samples agree
  score lambda = 0 and, rescaled to unit variance, turn rounding noise into huge
  values on new data."""
  rng = np.random.default_rng(3)
  classes, d, n = 4, 324, 48
  centres = rng.normal(size=(classes, d)) * 2.0

  def draw(m):
    y = np.arange(m) % classes
    return centres[y] + rng.normal(size=(m, d)), y
  x, y = draw(n)
  fit = mfa.fit_mfa(x, y, dim=162, k1=3, k2=10)
  x_new, y_new = draw(200)
  z_new = ((x_new - fit["mean"]) / fit["std"]) @ fit["projection"] + fit["bias"]
  kept = n - classes
  assert np.all(fit["projection"][:, kept:] == 0.0)
  # Unit variance on the training data; new data from the same distribution stays
  # on that scale (the null-space directions would give std >> 1).
  assert np.max(np.std(z_new[:, :kept], axis=0)) < 5.0
  # And the leading directions still separate the classes on new data.
  means = np.stack([z_new[y_new == c, :3].mean(0) for c in range(classes)])
  within = np.mean([z_new[y_new == c, :3].var(0).sum() for c in range(classes)])
  assert np.sum(np.var(means, axis=0)) > within


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
def test_pca_energy_keeps_the_fewest_directions_holding_that_variance(energy):
  """Yan et al.'s other PCA option: the kept width follows the training
  variance. Expected width from the data's own spectrum (standardised, as the fit
  sees it), counted independently of the fit."""
  rng = np.random.default_rng(7)
  classes, d, n = 3, 12, 90
  y = np.arange(n) % classes
  # Correlated features, so the spectrum after standardising is uneven.
  x = rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) * 3.0 + rng.normal(size=(n, d))
  x[:, 0] += 2.0 * y
  z = (x - x.mean(0)) / x.std(0)
  var = np.sort(np.linalg.eigvalsh(np.cov(z.T)))[::-1]
  expected = next(i + 1 for i in range(d) if var[:i + 1].sum() >= energy * var.sum())
  assert expected < d - 1  # The option must actually cut something here.
  fit = mfa.fit_mfa(x, y, dim=d, k1=3, k2=10, pca_energy=energy)
  nonzero = np.flatnonzero(np.any(fit["projection"] != 0.0, axis=0))
  np.testing.assert_array_equal(nonzero, np.arange(expected))
  assert np.all(np.isinf(fit["eigenvalues"][expected:]))
  # Still standardised on its training data.
  z_fit = _project(fit, x)[:, :expected]
  np.testing.assert_allclose(z_fit.std(0), 1.0, rtol=1e-4)


def test_pca_energy_one_matches_the_default_width():
  x, y = _toy()
  full = mfa.fit_mfa(x, y, 4, k1=3, k2=10)
  all_energy = mfa.fit_mfa(x, y, 4, k1=3, k2=10, pca_energy=1.0)
  np.testing.assert_allclose(all_energy["projection"], full["projection"], atol=1e-5)


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.5])
def test_bad_pca_energy_is_a_user_error(energy):
  x, y = _toy(n_per_class=5)
  with pytest.raises(UserError, match="mfa_pca_energy"):
    mfa.fit_mfa(x, y, 2, k1=2, k2=5, pca_energy=energy)
