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
              frozen (top-level parameter subtrees never updated).
  pretrained: branch name -> {workdir, config}: two-stage systems; see stages.py.
  mesh:       data (-1: the rest), model (1).
  multihost:  bool; or AVJAX_MULTIHOST=1 in the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import parameter_overview, periodic_actions

from avjax import losses, models
from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import metrics as metrics_lib
from avjax.train import optim, sharding, stages, writers

# Keys the step needs besides the model inputs (eval padding mask, mixup targets).
_AUX_BATCH_KEYS = ("label", "valid", "mixup_label", "mixup_lambda")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/inf; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # Non-trainable collections (e.g. batch_stats); {} for most.
  opt_state: Any
  rng: jax.Array  # The base key; step keys are fold_in(rng, step).


@dataclasses.dataclass
class Setup:
  """Everything built from (config, data info, mesh) that a loop or an
  evaluation needs; `evaluate` rebuilds it from a workdir's config."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: nn.Module
  loss_fn: Callable
  tx: optax.GradientTransformation
  num_train_steps: int
  steps_per_epoch: int
  init_fn: Callable[[jax.Array], TrainState]
  abstract_state: TrainState
  state_shardings: Any
  train_step: Callable
  eval_step: Callable
  input_keys: tuple[str, ...]


# --- mesh --------------------------------------------------------------------------


def _mesh(config) -> jax.sharding.Mesh:
  # Multi-host start-up must come before the first device query.
  sharding.maybe_initialize_distributed(config.get("multihost", False))
  return sharding.make_mesh(config.get("mesh"))


# --- data --------------------------------------------------------------------------


def _create_datasets(config, mesh):
  from input_pipeline import loader  # pylint: disable=g-import-not-at-top
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  if not data_config.get("keys"):
    with data_config.unlocked():
      data_config.keys = tuple(config.model.inputs)
  sharding.local_batch_size(config.train.global_batch_size, mesh)
  return loader.create_datasets(
      data_config, global_batch_size=config.train.global_batch_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())


def _device_batch(mesh, batch: Mapping[str, np.ndarray], input_keys) -> dict:
  """Keeps what the step reads and makes global arrays sharded over 'data'."""
  keep = set(input_keys) | set(_AUX_BATCH_KEYS)
  return sharding.global_batch(mesh, {k: v for k, v in batch.items() if k in keep})


def _schedule_lengths(config, info) -> tuple[int, int]:
  """(num_train_steps, steps_per_epoch) from steps or epochs."""
  gbs = int(config.train.global_batch_size)
  n_train = int((info.num_examples or {}).get("train", 0) or 0)
  steps_per_epoch = max(n_train // gbs, 1) if n_train else 1
  steps = config.train.get("num_train_steps", -1)
  steps = -1 if steps is None else int(steps)
  if steps < 0:  # 0 is allowed: a run with nothing to train only evaluates.
    epochs = float(config.train.get("num_epochs", 0) or 0)
    if epochs <= 0 or not n_train:
      raise UserError("set train.num_train_steps, or train.num_epochs with a data "
                      "source that reports its number of training examples")
    steps = int(math.ceil(epochs * n_train / gbs))
  return steps, steps_per_epoch


# --- model -------------------------------------------------------------------------


def make_model(config, num_classes: int) -> nn.Module:
  models.set_conv_impl(config.model.get("conv_impl", "auto"))
  dtype = config.train.get("compute_dtype", "float32")
  if dtype not in _DTYPES:
    raise UserError(f"train.compute_dtype {dtype!r} not in {sorted(_DTYPES)}")
  return models.from_section(config.model.to_dict(), num_classes=num_classes,
                             dtype=_DTYPES[dtype])


def _dummy_inputs(info, input_keys) -> dict:
  spec = dict(info.element_spec)
  missing = [k for k in input_keys if k not in spec]
  if missing:
    raise UserError(f"model.inputs {missing} are not features of this data "
                    f"(has: {', '.join(sorted(spec))})")
  return {k: jnp.zeros((1, *spec[k][0]), spec[k][1]) for k in input_keys}


# --- sharding / step ---------------------------------------------------------------


def build(config, info, mesh) -> Setup:
  """Model, optimizer, sharded init and the jitted steps for this mesh."""
  input_keys = tuple(config.model.inputs)
  model = make_model(config, info.num_classes)
  loss_fn = losses.make_loss(config.loss.to_dict(), info.num_classes)
  num_train_steps, steps_per_epoch = _schedule_lengths(config, info)
  tx = optim.make_optimizer(config.optimizer.to_dict(), num_train_steps, steps_per_epoch)
  tx = optim.freeze(tx, tuple(config.train.get("frozen", ()) or ()))
  dummy = _dummy_inputs(info, input_keys)

  def init_fn(rng):
    init_rng, base_rng = jax.random.split(rng)
    variables = model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
    variables = flax.core.unfreeze(variables)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=variables, opt_state=tx.init(params), rng=base_rng)

  abstract_state = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sh = sharding.state_shardings(mesh, abstract_state)
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  def apply(state, params, batch, train, rng):
    variables = {"params": params, **state.model_state}
    inputs = {k: batch[k] for k in input_keys}
    if train and state.model_state:
      outputs, new_ms = model.apply(variables, inputs, train=True, rngs={"dropout": rng},
                                    mutable=list(state.model_state))
      return outputs, flax.core.unfreeze(new_ms)
    rngs = {"dropout": rng} if train else {}
    return model.apply(variables, inputs, train=train, rngs=rngs), state.model_state

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_of(params):
      outputs, new_ms = apply(state, params, batch, True, rng)
      per_example = loss_fn(outputs, batch)
      return jnp.mean(per_example), (outputs, per_example, new_ms)

    (loss, (outputs, per_example, new_ms)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    stats = metrics_lib.batch_stats(outputs["logits"], batch["label"], per_example,
                                    step=state.step)
    new_state = state.replace(step=state.step + 1, params=params, model_state=new_ms,
                              opt_state=opt_state)
    return new_state, stats

  def eval_step(state: TrainState, batch):
    outputs, _ = apply(state, state.params, batch, False, None)
    per_example = loss_fn(outputs, batch)
    return metrics_lib.batch_stats(outputs["logits"], batch["label"], per_example,
                                   valid=batch.get("valid"))

  return Setup(
      config=config, mesh=mesh, model=model, loss_fn=loss_fn, tx=tx,
      num_train_steps=num_train_steps, steps_per_epoch=steps_per_epoch,
      init_fn=init_fn, abstract_state=abstract_state, state_shardings=state_sh,
      train_step=jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, repl), donate_argnums=(0,)),
      eval_step=jax.jit(eval_step, in_shardings=(state_sh, batch_sh), out_shardings=repl),
      input_keys=input_keys)


def init_state(setup: Setup, seed: int) -> TrainState:
  """Initialises the state directly into its shardings (no host round trip)."""
  return jax.jit(setup.init_fn, out_shardings=setup.state_shardings)(
      jax.random.PRNGKey(seed))


def restore_state(setup: Setup, checkpointer: ckpt_lib.Checkpointer, step: int) -> TrainState:
  """Restores onto the *current* mesh, whatever device count wrote the step."""
  target = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
  return checkpointer.restore_state(step, target)


def restore_best(setup: Setup, workdir: str, step: int | None = None, *,
                 purpose: str = "evaluate") -> tuple[TrainState, int]:
  """The best checkpoint of `workdir` by its run's metric (the latest if it tracks
  none), or `step`, restored onto `setup`'s mesh. Evaluate, export and the
  grafting of pretrained branches all pick the checkpoint this way."""
  config = setup.config
  checkpointer = ckpt_lib.Checkpointer(
      workdir, best_metric=config.train.get("best_metric") or None,
      best_mode=config.train.get("best_mode", "max"), read_only=True)
  try:
    step = checkpointer.best_step() if step is None else step
    if step is None:
      raise UserError(f"{workdir}: no checkpoint to {purpose}")
    return restore_state(setup, checkpointer, step), int(step)
  finally:
    checkpointer.close()


# --- evals -------------------------------------------------------------------------


def run_evals(setup: Setup, state: TrainState,
              evals: Mapping[str, Callable[[], Iterator[dict]]]) -> dict[str, dict]:
  """split -> host numpy totals (confusion, loss_sum, count) over every example."""
  results = {}
  for split, batches in evals.items():
    acc = None
    for batch in batches():
      acc = metrics_lib.merge(acc, setup.eval_step(state, _device_batch(
          setup.mesh, batch, setup.input_keys)))
    if acc is not None:
      results[split] = jax.device_get(acc)
  return results


def eval_scalars(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
  out = {}
  for split, stats in results.items():
    for k, v in metrics_lib.summarize(stats["confusion"], stats["loss_sum"],
                                      stats["count"]).items():
      out[f"{split}/{k}"] = v
  return out


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

  mesh = _mesh(config)
  _refuse_other_runs_checkpoints(config, workdir)
  # Two-stage systems: finished (or now trained) branch runs, before our own data.
  branch_dirs = stages.prepare_branches(config, workdir)
  if datasets is None:
    datasets = _create_datasets(config, mesh)
  info = datasets.info
  setup = build(config, info, mesh)
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
    state = restore_state(setup, checkpointer, latest)
    checkpointer.restore_data_iter(latest, train_iter)
    logging.info("resumed from step %d in %s", latest, checkpointer.directory)
  else:
    state = init_state(setup, int(config.seed))
    state = stages.graft_branches(setup, state, config, branch_dirs, info)
    state = stages.fit_statistics(setup, state, config, datasets)
    if setup.num_train_steps == 0:  # Nothing to train: keep the state to evaluate.
      checkpointer.save(0, state, train_iter, config_json, force=True,
                        metrics=eval_scalars(run_evals(setup, state, datasets.evals)))
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
        batch = _device_batch(mesh, next(train_iter), setup.input_keys)
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
          eval_metrics = eval_scalars(run_evals(setup, state, datasets.evals))
        writer.write_scalars(step, eval_metrics)
        final.update(eval_metrics)

      # The preemption sync point is agreed on by all hosts at this step.
      preempted = checkpointer.reached_preemption(step)
      if step % ckpt_every == 0 or last or preempted:
        if guard_acc is not None:
          _check_finite(guard_acc, checkpointer, workdir)
          guard_acc = None
        with report_progress.timed("checkpoint"):
          checkpointer.save(step, state, train_iter, config_json, metrics=eval_metrics,
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


def _final_report(workdir: str, datasets, config, setup: Setup,
                  final: dict[str, float]) -> dict[str, float]:
  """evals: the report is made from the best checkpoint by validation metric."""
  from avjax.train import evaluate  # pylint: disable=g-import-not-at-top
  report = evaluate.evaluate_workdir(workdir, datasets=datasets, config=config, setup=setup)
  final["report/checkpoint_step"] = report["checkpoint_step"]
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
