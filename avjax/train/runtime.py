"""What a run is made of, and how to rebuild it from a workdir: the mesh, the
datasets, the model, the sharded state with its jitted steps, and the restore of
the best checkpoint.

The trainer, evaluation, two-stage fusion and export all build runs from these
pieces, so this module sits below all of them and imports none of them: the
dependency runs one way (trainer -> stages, evaluate -> runtime).
"""

from __future__ import annotations

import dataclasses
import json
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

from avjax import losses, models
from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import metrics as metrics_lib
from avjax.train import optim, sharding

# Keys the step needs besides the model inputs (eval padding mask, mixup targets).
_AUX_BATCH_KEYS = ("label", "valid", "mixup_label", "mixup_lambda")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # Non-trainable collections (e.g. batch_stats); {} for most.
  opt_state: Any
  rng: jax.Array  # The base key; step keys are fold_in(rng, step).
  # Exponential moving average of `params` (train.ema_decay > 0), else None.
  # Every evaluation, checkpoint choice, export and graft reads it in place of
  # `params` (`for_eval`); training updates `params` as usual.
  ema_params: Any = None


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


def make_mesh(config) -> jax.sharding.Mesh:
  # Multi-host start-up must come before the first device query.
  sharding.maybe_initialize_distributed(config.get("multihost", False))
  return sharding.make_mesh(config.get("mesh"))


# --- data --------------------------------------------------------------------------


def create_datasets(config, mesh):
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


def device_batch(mesh, batch: Mapping[str, np.ndarray], input_keys) -> dict:
  """Keeps what the step reads and makes global arrays sharded over 'data'."""
  keep = set(input_keys) | set(_AUX_BATCH_KEYS)
  return sharding.global_batch(mesh, {k: v for k, v in batch.items() if k in keep})


def schedule_lengths(config, info) -> tuple[int, int]:
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
  num_train_steps, steps_per_epoch = schedule_lengths(config, info)
  tx = optim.make_optimizer(config.optimizer.to_dict(), num_train_steps, steps_per_epoch)
  tx = optim.freeze(tx, tuple(config.train.get("frozen", ()) or ()))
  dummy = _dummy_inputs(info, input_keys)

  ema_decay = ema_decay_of(config)

  def init_fn(rng):
    init_rng, base_rng = jax.random.split(rng)
    variables = model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
    variables = flax.core.unfreeze(variables)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=variables, opt_state=tx.init(params), rng=base_rng,
                      ema_params=params if ema_decay else None)

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
    ema_params = state.ema_params
    if ema_decay:
      # Warmed up like TF's ExponentialMovingAverage(num_updates=step): early on
      # the average follows the parameters instead of holding on to the init.
      step = state.step.astype(jnp.float32)
      decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
      ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                                state.ema_params, params)
    stats = metrics_lib.batch_stats(outputs["logits"], batch["label"], per_example,
                                    step=state.step)
    new_state = state.replace(step=state.step + 1, params=params, model_state=new_ms,
                              opt_state=opt_state, ema_params=ema_params)
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


def ema_decay_of(config) -> float:
  decay = float(config.train.get("ema_decay", 0.0) or 0.0)
  if not 0.0 <= decay < 1.0:
    raise UserError(f"train.ema_decay must be in [0, 1) (0: off), got {decay}")
  return decay


def for_eval(state: TrainState) -> TrainState:
  """The state to evaluate, export or graft: its parameter average when the run
  keeps one (train.ema_decay), else the state itself."""
  if state.ema_params is None:
    return state
  return state.replace(params=state.ema_params)


def init_state(setup: Setup, seed: int) -> TrainState:
  """Initialises the state directly into its shardings (no host round trip)."""
  return jax.jit(setup.init_fn, out_shardings=setup.state_shardings)(
      jax.random.PRNGKey(seed))


def state_tree(state: TrainState) -> dict[str, Any]:
  """The state as checkpointed: its fields by name, without `ema_params` when
  the run keeps no average, so checkpoints of runs without one have the same
  tree whether they were written before the field existed or after."""
  tree = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  if tree["ema_params"] is None:
    del tree["ema_params"]
  return tree


def restore_state(setup: Setup, checkpointer: ckpt_lib.Checkpointer, step: int) -> TrainState:
  """Restores onto the *current* mesh, whatever device count wrote the step."""
  target = ckpt_lib.abstract_with_shardings(state_tree(setup.abstract_state),
                                            state_tree(setup.state_shardings))
  return TrainState(**checkpointer.restore_state(step, target))


def restore_best(setup: Setup, workdir: str, step: int | None = None, *,
                 purpose: str = "evaluate") -> tuple[TrainState, int]:
  """The best checkpoint of `workdir` by its run's metric (the latest if it tracks
  none), or `step`, restored onto `setup`'s mesh. Evaluate, export and the
  grafting of pretrained branches all pick the checkpoint this way. A run with a
  parameter average (train.ema_decay) gives the average as `params`."""
  config = setup.config
  checkpointer = ckpt_lib.Checkpointer(
      workdir, best_metric=config.train.get("best_metric") or None,
      best_mode=config.train.get("best_mode", "max"), read_only=True)
  try:
    step = checkpointer.best_step() if step is None else step
    if step is None:
      raise UserError(f"{workdir}: no checkpoint to {purpose}")
    return for_eval(restore_state(setup, checkpointer, step)), int(step)
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
      acc = metrics_lib.merge(acc, setup.eval_step(state, device_batch(
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


# --- a workdir's own config ---------------------------------------------------------


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with: its config.json, else the one saved
  in its latest checkpoint."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise UserError(f"{workdir}: no config.json and no checkpoint; is it a workdir?")
    return ml_collections.ConfigDict(checkpointer.restore_config(step))
  finally:
    checkpointer.close()
