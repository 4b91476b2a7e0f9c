"""One trainer for every system: `train_and_evaluate(config, workdir)`.

Systems differ only by config (model name, loss, features, optimizer); this file
has no branch per paper. Sections, in the order a run meets them: mesh, data,
model, sharding, step, checkpoint, evals, loop.

Determinism: parameters come from `PRNGKey(seed)`, the step's dropout key is
`fold_in(base_key, step)` and the Grain iterator position is saved with every
checkpoint, so a run resumed after SIGKILL ends with the same parameters as one
that never stopped (bitwise on CPU).

Config schema (ml_collections; see experiments/sultana2024.py for a full one):
  seed
  model:      name (registry), inputs (example keys the model reads), and any
              other field is a keyword argument of the model.
  data:       dataset, data_dir, feature_set, protocol, fold, keys, worker_count,
              augment: read by input_pipeline.loader.create_datasets.
  loss:       name, label_smoothing, weights ({loss name: weight} or None),
              optional class_weights.
  optimizer:  name (adam|adamw|sgd), learning_rate, momentum, weight_decay,
              schedule (constant|cosine|warmup_cosine), warmup_steps,
              grad_clip_norm (0 = off), reduce_on_plateau {enabled, patience,
              factor, cooldown, accumulation_size (0 = one epoch)}.
  train:      global_batch_size, num_train_steps (-1: from num_epochs; 0: only
              evaluate, e.g. a decision-fusion rule over pretrained branches),
              num_epochs, log_every_steps, eval_every_steps (0: each epoch),
              checkpoint_every_steps (0: with each eval), keep_checkpoints,
              best_metric ('val/uar'), best_mode (max|min), async_checkpointing,
              compute_dtype (float32|bfloat16; parameters stay float32),
              frozen (top-level parameter subtrees never updated),
              ema_decay (0 = off: evaluate, choose, export the parameters'
              moving average with this decay).
  pretrained: branch name -> {workdir, config}: two-stage systems; see stages.py.
  mesh:       data (-1: the rest), model (1).
  multihost:  bool; or AVJAX_MULTIHOST=1 in the environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from clu import parameter_overview, periodic_actions

from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import evaluate, optim, runtime, stages, writers
from avjax.train import metrics as metrics_lib
from avjax.train.runtime import Setup


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/inf; the last good checkpoint is kept."""


# --- loop --------------------------------------------------------------------------


def _check_finite(stats, checkpointer: ckpt_lib.Checkpointer, workdir: str) -> None:
  bad = int(jax.device_get(stats["first_bad_step"]))
  if bad == metrics_lib.NO_BAD_STEP:
    return
  checkpointer.wait()  # The last good checkpoint must be complete on disk.
  last = checkpointer.latest_step()
  where = (f"the last good checkpoint (step {last}) is kept in "
           f"{checkpointer.directory}" if last is not None else "no checkpoint was written")
  raise NonFiniteLossError(
      f"training loss became non-finite at step {bad} in {workdir}; {where}. "
      f"Lower optimizer.learning_rate, set optimizer.grad_clip_norm, or check the "
      f"inputs for NaN/inf.")


def _refuse_other_runs_checkpoints(config, workdir: str) -> None:
  """Resuming continues the checkpointed run; if that run had another fold, k,
  seed, model or optimizer, its numbers would be reported under this config (a
  run trained on this fold's test actors, say). Changes to length, logging,
  paths and hardware are fine (ckpt_lib.RESUMABLE_FIELDS)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    latest = checkpointer.latest_step()
    if latest is None:
      return
    conflicts = ckpt_lib.resume_conflicts(checkpointer.restore_config(latest),
                                          ckpt_lib.config_to_json(config))
  finally:
    checkpointer.close()
  if conflicts:
    more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
    raise UserError(
        f"{workdir} holds checkpoints of another run (step {latest}): "
        f"{'; '.join(conflicts[:3])}{more}. Resuming would report that run under "
        "this config: use a new --workdir, or the original settings to resume it")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       datasets=None) -> dict[str, float]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates and writes
  `report.json` and figures. Returns the final metrics."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  mesh = runtime.make_mesh(config)
  _refuse_other_runs_checkpoints(config, workdir)
  # Two-stage systems: finished (or now trained) branch runs, before our own data.
  branch_dirs = stages.prepare_branches(config, workdir, train_branch=train_and_evaluate)
  if datasets is None:
    datasets = runtime.create_datasets(config, mesh)
  info = datasets.info
  setup = runtime.build(config, info, mesh)
  logging.info("mesh %s; %d train steps (%d per epoch)", dict(mesh.shape),
               setup.num_train_steps, setup.steps_per_epoch)

  tcfg = config.train
  log_every = max(int(tcfg.log_every_steps), 1)
  eval_every = int(tcfg.eval_every_steps) if int(tcfg.eval_every_steps) > 0 \
      else setup.steps_per_epoch
  ckpt_every = int(tcfg.checkpoint_every_steps) if int(tcfg.checkpoint_every_steps) > 0 \
      else eval_every
  config_json = ckpt_lib.config_to_json(config)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))

  # checkpoint: resume from the latest step in workdir, if any.
  checkpointer = ckpt_lib.Checkpointer(
      workdir, keep=int(tcfg.keep_checkpoints), best_metric=tcfg.get("best_metric"),
      best_mode=tcfg.get("best_mode", "max"),
      async_save=bool(tcfg.get("async_checkpointing", True)))
  train_iter = iter(datasets.train)
  latest = checkpointer.latest_step()
  if latest is not None:
    state = runtime.restore_state(setup, checkpointer, latest)
    checkpointer.restore_data_iter(latest, train_iter)
    logging.info("resumed from step %d in %s", latest, checkpointer.directory)
  else:
    state = runtime.init_state(setup, int(config.seed))
    state = stages.graft_branches(setup, state, config, branch_dirs, info)
    state = stages.fit_statistics(setup, state, config, datasets)
    if setup.num_train_steps == 0:  # Nothing to train: keep the state to evaluate.
      checkpointer.save(0, runtime.state_tree(state), train_iter, config_json, force=True,
                        metrics=_selection_evals(setup, state, datasets))
      checkpointer.wait()
  step = int(jax.device_get(state.step))
  if latest is not None and step >= setup.num_train_steps:
    checkpointer.close()  # A finished run: only its report is made again.
    logging.warning("%s: already trained (step %d of %d); re-evaluating its best "
                    "checkpoint", workdir, step, setup.num_train_steps)
    return _final_report(workdir, datasets, config, setup, {})

  writer = writers.create_writer(workdir)
  if step == 0:
    parameter_overview.log_parameter_overview(state.params, include_stats="sharding")
    writer.write_hparams({k: v for k, v in _flatten(config_json).items()
                          if isinstance(v, (int, float, str, bool))})
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=setup.num_train_steps, writer=writer, every_steps=log_every)

  final: dict[str, float] = {}
  train_acc = None  # Device-side sums since the last log.
  guard_acc = None  # Device-side non-finite tracker since the last check.
  try:
    while step < setup.num_train_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = runtime.device_batch(mesh, next(train_iter), setup.input_keys)
        state, stats = setup.train_step(state, batch)
      step += 1
      train_acc = metrics_lib.merge_jit(train_acc, stats) if train_acc else stats
      guard_acc = {"first_bad_step": stats["first_bad_step"] if guard_acc is None else
                   jnp.minimum(guard_acc["first_bad_step"], stats["first_bad_step"])}
      report_progress(step)
      last = step == setup.num_train_steps

      if step % log_every == 0 or last:
        _check_finite(guard_acc, checkpointer, workdir)
        guard_acc = None
        scalars = {f"train/{k}": v for k, v in metrics_lib.stats_to_scalars(train_acc).items()}
        scalars["train/learning_rate"] = _learning_rate(config, setup, step)
        writer.write_scalars(step, scalars)
        final.update(scalars)
        train_acc = None

      eval_metrics = None
      if step % eval_every == 0 or last:
        with report_progress.timed("eval"):
          eval_metrics = _selection_evals(setup, state, datasets)
        writer.write_scalars(step, eval_metrics)
        final.update(eval_metrics)

      # The preemption sync point is agreed on by all hosts at this step.
      preempted = checkpointer.reached_preemption(step)
      if step % ckpt_every == 0 or last or preempted:
        if guard_acc is not None:
          _check_finite(guard_acc, checkpointer, workdir)
          guard_acc = None
        with report_progress.timed("checkpoint"):
          checkpointer.save(step, runtime.state_tree(state), train_iter, config_json,
                            metrics=eval_metrics,
                            force=preempted)
      if preempted:
        logging.warning("preemption at step %d: checkpoint saved, exiting", step)
        checkpointer.wait()
        writer.flush()
        return final
    writer.flush()
  finally:
    checkpointer.close()
    writer.close()

  return _final_report(workdir, datasets, config, setup, final)


def _selection_evals(setup: Setup, state, datasets) -> dict[str, float]:
  """Scalars of the eval splits that may steer training (validation, ...): the
  test split is left out, so no logged curve or checkpoint choice ever sees it.
  The test split is scored once, for the reported checkpoint (_final_report)."""
  evals = {k: v for k, v in datasets.evals.items() if k != evaluate.TEST_SPLIT}
  return runtime.eval_scalars(runtime.run_evals(setup, runtime.for_eval(state), evals))


def _final_report(workdir: str, datasets, config, setup: Setup,
                  final: dict[str, float]) -> dict[str, float]:
  """evals: the report is made from the best checkpoint by validation metric, and
  only there is the test split scored. Its numbers are returned as `test/...`
  next to `report/checkpoint_step`, the step they belong to."""
  report = evaluate.evaluate_workdir(workdir, datasets=datasets, config=config, setup=setup)
  final["report/checkpoint_step"] = report["checkpoint_step"]
  for split, stats in report["splits"].items():
    if split == evaluate.TEST_SPLIT:
      final.update({f"{split}/{k}": float(stats[k]) for k in evaluate.HEADLINE + ("loss",)
                    if stats.get(k) is not None})
  return final


def _learning_rate(config, setup: Setup, step: int) -> float:
  return float(optim.make_schedule(config.optimizer.to_dict(), setup.num_train_steps)(step))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
