"""Orbax checkpoints of a run: train state, Grain iterator position and config.

One `CheckpointManager` under `workdir/checkpoints` with three items per step:
`state` (params, optimizer state, step, base RNG: StandardSave), `data_iter`
(Grain's own handler, one JSON file per process, so every host resumes its own
shard) and `config` (JSON, so `evaluate` can rebuild the model). It keeps the last
N steps *and* the best step by a validation metric (two preservation policies),
and writes asynchronously. Restoring takes abstract arrays whose shardings come
from the *current* mesh, which is what lets a run saved on 8 devices resume on 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

STATE, DATA_ITER, CONFIG = "state", "data_iter", "config"


def _metric_getter(name: str, mode: str):
  worst = -math.inf if mode == "max" else math.inf

  def get(metrics: Mapping[str, Any]) -> float:
    value = (metrics or {}).get(name)
    return worst if value is None or not math.isfinite(float(value)) else float(value)
  return get


def _not_read_only_notice(record: logging.LogRecord) -> bool:
  """Filter for Orbax's "Given directory is read only" warning: `evaluate`,
  `export` and `predict` open checkpoints read-only on purpose, and the line read
  as if the directory's permissions were wrong."""
  return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _without_read_only_notice():
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_not_read_only_notice)
  try:
    yield
  finally:
    absl_logger.removeFilter(_not_read_only_notice)


class Checkpointer:
  """Thin policy layer over `ocp.CheckpointManager` for one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "max", async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.best_metric = best_metric or None
    policies: list[Any] = [ocp_managers.LatestN(n=max(int(keep), 1))]
    best_fn = None
    if self.best_metric:
      best_fn = _metric_getter(self.best_metric, best_mode)
      policies.append(ocp_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,  # Also makes Orbax record metrics and answer best_step().
        best_mode=best_mode,
        preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only)
    with _without_read_only_notice() if read_only else contextlib.nullcontext():
      self.manager = ocp.CheckpointManager(
          self.directory, item_names=(STATE, DATA_ITER, CONFIG), options=options)

  # --- queries ---
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step() if self.best_metric else self.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  # --- save / restore ---
  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None,
           config_json: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
           force: bool = False) -> bool:
    items = {STATE: ocp.args.StandardSave(state),
             CONFIG: ocp.args.JsonSave(dict(config_json))}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(
        step, args=ocp.args.Composite(**items),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=force)

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores the train state onto the shardings carried by `abstract_state`
    (a pytree of `jax.ShapeDtypeStruct` with `.sharding` from the current mesh)."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)}))
    return restored[STATE]

  def restore_data_iter(self, step: int, data_iter: grain.DatasetIterator) -> bool:
    """Moves `data_iter` to where it was at `step`. Returns False (and warns) when
    the checkpoint holds no state for this process, e.g. after changing the number
    of hosts: the run then continues with a fresh iterator."""
    try:
      self.manager.restore(step, args=ocp.args.Composite(
          **{DATA_ITER: grain.checkpoint.CheckpointRestore(data_iter)}))
      return True
    except (ValueError, FileNotFoundError, KeyError) as e:
      logging.warning("no data iterator state for this process at step %d (%s); "
                      "the input pipeline restarts from its beginning", step, e)
      return False

  def restore_config(self, step: int) -> dict:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return dict(restored[CONFIG])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# Config fields a resumed run may change: how long it trains and how it logs,
# where the data lives and what it runs on. Any other change (another fold, k,
# seed, model or optimizer) makes the checkpoint one of a different run, and
# resuming it would report that run under this one's name.
RESUMABLE_FIELDS = (
    "config_spec", "multihost", "mesh", "branch_cache",
    "train.num_epochs", "train.num_train_steps", "train.log_every_steps",
    "train.eval_every_steps", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "train.async_checkpointing",
    "data.data_dir", "data.worker_count", "data.worker_buffer_size",
    "model.conv_impl")


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  """A nested config dict as {'a.b.c': value}."""
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(flat_config(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


# Config fields added after runs had been checkpointed, with the value those
# runs had in effect: a saved config without the field is the same run as a
# current one at that value (not "(unset) there, 0.0 here").
ADDED_FIELDS = {"train.ema_decay": 0.0}


def _resumable(key: str) -> bool:
  parts = key.split(".")
  # A branch's config inside `pretrained` follows the same rule as the run's own,
  # and a branch's workdir is only where a finished run is found.
  while len(parts) > 2 and parts[0] == "pretrained" and parts[2] == "config":
    parts = parts[3:]
  if len(parts) == 3 and parts[0] == "pretrained" and parts[2] == "workdir":
    return True
  key = ".".join(parts)
  return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """`field: saved -> current` for every field outside RESUMABLE_FIELDS on which
  the checkpointed run's config and this one differ (both as `config_to_json`)."""
  a, b = flat_config(saved), flat_config(current)
  for key, value in ADDED_FIELDS.items():  # At the top and in branch configs.
    for field in {k for k in (*a, *b) if k == key or k.endswith("." + key)}:
      a.setdefault(field, value)
      b.setdefault(field, value)
  return [f"{k}={a.get(k, '(unset)')!r} there, {b.get(k, '(unset)')!r} here"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not _resumable(k)]


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s carrying the target shardings, for `restore_state`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_tree, shardings)


def config_to_json(config) -> dict:
  """A JSON-able dict of an ml_collections config (tuples become lists)."""
  return json.loads(config.to_json_best_effort())
