"""What happens to a fresh state before the first step: pretrained branches are
grafted in, and statistics fitted on the training split are filled in.

Two-stage systems (S1's feature fusion, S3's and S6's decision fusion) train their
unimodal nets first. `config.pretrained` names each branch with a finished run's
workdir, or with the branch's own config, in which case the branch is trained here,
on the same data, protocol and fold, into `<workdir>/branch_<name>`. The best
checkpoint of each branch then replaces `params[<name>]` (and its batch
statistics), which is the submodule layout `avjax.models.fusion` gives branches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from avjax import models
from avjax.errors import UserError
from avjax.train import checkpoint, runtime

# Data fields a branch inherits from its fusion run, so that both see the same fold.
_SHARED_DATA_FIELDS = ("dataset", "data_dir", "protocol", "fold", "k", "allow_leaky",
                       "eval_splits", "worker_count")
REPORT = "report.json"


def branch_workdir(workdir: str, name: str, entry: Mapping[str, Any], fold: int,
                   config: ml_collections.ConfigDict | None = None) -> str:
  """The branch's workdir: given (`{fold}` is replaced by the fold); else, with
  `config.branch_cache` set, a cache entry keyed by the branch's whole config (so
  systems sharing a branch, such as S6 and S1, train it once per fold); else our
  own `<workdir>/branch_<name>`."""
  given = str(entry.get("workdir", "") or "")
  if given:
    return os.path.abspath(given.replace("{fold}", str(fold)))
  cache = str(config.get("branch_cache", "") or "") if config is not None else ""
  if cache:
    sub = branch_config(config, name).to_dict()
    sub.pop("config_spec", None)
    key = hashlib.sha1(json.dumps(sub, sort_keys=True, default=str).encode()).hexdigest()
    return os.path.join(os.path.abspath(cache), f"{sub['model']['name']}-{key[:12]}")
  return os.path.join(workdir, f"branch_{name}")


def branch_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The branch's own config with the fusion run's data split, seed (plus the
  entry's `seed_offset`, so an ensemble's members differ) and mesh."""
  entry = config.pretrained[name]
  if "config" not in entry or entry.config is None:
    raise UserError(f"config.pretrained.{name}: no workdir with a finished run and no "
                    "config to train the branch from")
  sub = copy.deepcopy(entry.config)
  if not isinstance(sub, ml_collections.ConfigDict):
    sub = ml_collections.ConfigDict(sub)
  with sub.unlocked():
    for field in _SHARED_DATA_FIELDS:
      if field in config.data:
        sub.data[field] = copy.deepcopy(config.data[field])
    sub.seed = int(config.seed) + int(entry.get("seed_offset", 0) or 0)
    sub.mesh = copy.deepcopy(config.mesh)
    sub.multihost = config.get("multihost", False)
    spec = config.get("config_spec", "")
    sub.config_spec = f"{spec} [branch {name}]" if spec else f"branch {name}"
  return sub


def _check_same_split(name: str, path: str, config) -> None:
  """A given branch run must have used the fusion run's protocol and fold: a branch
  trained on other actors would leak the fusion run's test actors into training."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    return
  with open(cfg_path, encoding="utf-8") as f:
    saved = json.load(f)
  theirs, ours = checkpoint.flat_config(saved), checkpoint.flat_config(
      checkpoint.config_to_json(config))
  fields = ["data.dataset", "data.protocol", "data.fold", "data.k"]
  if ours.get("data.protocol") == "random_clip":  # The seed deals the clips.
    fields.append("seed")
  for field in fields:
    if field in theirs and field in ours and theirs[field] != ours[field]:
      raise UserError(
          f"{path}: pretrained branch {name!r} was trained with {field}="
          f"{theirs[field]!r} but this run uses {ours[field]!r}; use the branch "
          "run of the same split (a `{fold}` in the workdir path is replaced by the fold)")


def _check_finished_branch(name: str, path: str, sub: ml_collections.ConfigDict) -> None:
  """A branch trained here earlier is reused only if it is the run this config
  asks for; a workdir reused with another fold would otherwise graft a branch
  that trained on this fold's test actors."""
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  conflicts = checkpoint.resume_conflicts(saved, checkpoint.config_to_json(sub))
  if conflicts:
    raise UserError(f"{path}: finished branch {name!r} is another run: "
                    f"{'; '.join(conflicts[:3])}; use a new --workdir")


def prepare_branches(config: ml_collections.ConfigDict, workdir: str, *,
                     train_branch: Callable[[ml_collections.ConfigDict, str], Any]
                     ) -> dict[str, str]:
  """Branch name -> workdir of a finished branch run, training missing ones now
  with `train_branch(branch_config, branch_workdir)` (the trainer passes itself,
  so this module never imports the trainer)."""
  pretrained = config.get("pretrained") or {}
  fold = int(config.data.get("fold", 0))
  out = {}
  for name in sorted(pretrained):
    entry = pretrained[name]
    path = branch_workdir(workdir, name, entry, fold, config)
    finished = os.path.exists(os.path.join(path, REPORT))
    if entry.get("workdir"):
      if not os.path.isdir(path):
        raise UserError(f"{path}: pretrained branch {name!r} workdir does not exist")
      _check_same_split(name, path, config)
    elif not finished:
      logging.info("training branch %r into %s", name, path)
      train_branch(branch_config(config, name), path)
    elif os.path.exists(os.path.join(path, "config.json")):
      _check_finished_branch(name, path, branch_config(config, name))
    out[name] = path
  if out and jax.process_index() == 0:  # Where the branches are, for reports.
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "branches.json"), "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)
  return out


def _load_branch_config(path: str, config, name: str) -> ml_collections.ConfigDict:
  cfg_path = os.path.join(path, "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  return branch_config(config, name)


def graft_branches(setup, state, config, branch_dirs: Mapping[str, str], info):
  """Replaces params[<branch>] (and its model-state entries) with the best
  checkpoint of each branch run; returns the new state, sharded like the old."""
  if not branch_dirs:
    return state
  params = flax.core.unfreeze(jax.device_get(state.params))
  model_state = flax.core.unfreeze(jax.device_get(state.model_state))
  for name, path in branch_dirs.items():
    if name not in params:
      raise UserError(f"config.pretrained.{name}: the model has no branch {name!r} "
                      f"(its parameters: {sorted(params)})")
    sub_config = _load_branch_config(path, config, name)
    sub_setup = runtime.build(sub_config, info, setup.mesh)
    sub_state, step = runtime.restore_best(sub_setup, path,
                                           purpose=f"use as pretrained branch {name!r}")
    sub_state = jax.device_get(sub_state)
    want = jax.tree.map(np.shape, params[name])
    got = jax.tree.map(np.shape, flax.core.unfreeze(sub_state.params))
    if want != got:
      raise UserError(f"{path}: branch {name!r} parameters do not match the fusion "
                      "model's branch (different widths in model.branches?)")
    params[name] = flax.core.unfreeze(sub_state.params)
    for collection, tree in flax.core.unfreeze(sub_state.model_state).items():
      if collection in model_state and name in model_state[collection]:
        model_state[collection][name] = tree
    logging.info("branch %r: step %d of %s", name, step, path)
  # Optimizer state is rebuilt for the grafted parameters.
  new = state.replace(params=params, model_state=model_state,
                      opt_state=setup.tx.init(params),
                      ema_params=None if state.ema_params is None else params)
  return jax.device_put(new, setup.state_shardings)


def fit_statistics(setup, state, config, datasets):
  """Runs the model's registered fit (e.g. S2's MFA) on the whole training split."""
  fit = models.get_fit(config.model.name)
  if fit is None:
    return state
  batches = getattr(datasets, "fit_batches", None)
  if batches is None:
    raise UserError(f"model {config.model.name!r} fits statistics on the training "
                    "split, but the data gives no pass over it (Datasets.fit_batches)")
  columns: dict[str, list[np.ndarray]] = {}
  labels = []
  for batch in batches():
    valid = np.asarray(batch.get("valid", np.ones(len(batch["label"]), bool)), bool)
    for key in setup.input_keys:
      columns.setdefault(key, []).append(np.asarray(batch[key])[valid])
    labels.append(np.asarray(batch["label"])[valid])
  if not labels:
    raise UserError("the training split is empty: nothing to fit statistics on")
  inputs = {k: np.concatenate(v) for k, v in columns.items()}
  variables = {"params": jax.device_get(state.params),
               **flax.core.unfreeze(jax.device_get(state.model_state))}
  fitted = fit(setup.model, variables, inputs, np.concatenate(labels))
  model_state = flax.core.unfreeze(jax.device_get(state.model_state))
  for collection, tree in fitted.items():
    if collection not in model_state:
      raise UserError(f"model {config.model.name!r}: fit returned collection "
                      f"{collection!r} the model does not declare")
    want = jax.tree.map(np.shape, model_state[collection])
    got = jax.tree.map(np.shape, flax.core.unfreeze(tree))
    if want != got:
      raise UserError(f"model {config.model.name!r}: fitted {collection!r} shapes "
                      f"{got} differ from the model's {want}")
    model_state[collection] = jax.tree.map(
        lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype),
        flax.core.unfreeze(tree), model_state[collection])
  logging.info("fitted %s on %d training examples", sorted(fitted),
               len(np.concatenate(labels)))
  return jax.device_put(state.replace(model_state=model_state), setup.state_shardings)
