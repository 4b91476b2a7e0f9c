"""`avjax export`: a training workdir -> a `jax.export` artefact and a TF SavedModel.

The best checkpoint by the run's validation metric (as `evaluate` picks it) is
restored with the trainer's own build (`avjax.train.runtime`), so export reads
exactly what training wrote. The
served function is inference only, `(variables, inputs) -> {"logits",
"probabilities"}`, traced with a symbolic batch dimension and plain XLA
convolutions (`model.conv_impl='xla'`), so one artefact lowers for CPU, GPU
and TPU alike.

The SavedModel goes through `jax.experimental.jax2tf` with native serialization:
it embeds the same StableHLO in a TF `XlaCallModule` op, so the TF that loads it
must support the calling-convention version this jax writes (recorded in
metadata.json; jax 0.10.2 writes 10, which TF 2.21 reads).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from avjax.errors import UserError
from avjax.serving import artifact

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
SIGNATURE = "serving_default"


@dataclasses.dataclass
class Restored:
  """A trained model as export needs it: the module, its variables and what
  makes its inputs."""
  config: Any
  model: Any
  variables: dict
  class_names: tuple[str, ...]
  feature_sets: tuple[str, ...]
  input_keys: tuple[str, ...]
  step: int
  best_metric: str | None


@dataclasses.dataclass
class ExportReport:
  out: str
  files: list[str]
  metadata: dict


def feature_sets_of(data_config) -> tuple[str, ...]:
  """`data.feature_set` then `data.feature_sets`, without repeats (as the loader)."""
  names = data_config.get("feature_sets") or ()
  names = (names,) if isinstance(names, str) else tuple(names)
  single = data_config.get("feature_set")
  if single and single not in names:
    names = (single, *names)
  if not names:
    raise UserError("config.data needs feature_set (or feature_sets)")
  return names


def input_spec(input_keys: Sequence[str], feature_sets: Sequence[str]) -> dict[str, dict]:
  """key -> {shape, dtype, feature_set}: where predict gets each model input."""
  from input_pipeline import features as features_lib
  spec = {}
  for key in input_keys:
    for name in feature_sets:
      fs_spec = features_lib.get_feature_set(name).spec
      if key in fs_spec:
        shape, dtype = fs_spec[key]
        spec[key] = {"shape": list(shape), "dtype": np.dtype(dtype).name, "feature_set": name}
        break
    else:
      raise UserError(f"model input {key!r} is made by none of the feature sets "
                      f"{list(feature_sets)}")
  return spec


def _class_names(workdir: str, config) -> tuple[str, ...]:
  """From the run's report.json, else from the prepared data's label feature."""
  report = os.path.join(workdir, "report.json")
  if os.path.exists(report):
    with open(report, encoding="utf-8") as f:
      names = json.load(f).get("class_names")
    if names:
      return tuple(names)
  try:
    from input_pipeline import loader
    builder = loader.open_prepared(config.data.data_dir, config.data.dataset,
                                   feature_sets_of(config.data)[0])
    return tuple(builder.info.features["label"].names)
  except Exception as e:  # noqa: BLE001 - reworded: the user can fix it by evaluating.
    raise UserError(f"{workdir}: no report.json and the prepared data is not readable "
                    f"({type(e).__name__}); run `avjax evaluate --workdir {workdir}` "
                    "first") from e


def _check_step_kept(workdir: str, step: int) -> None:
  """A step the run did not keep (only the last few and the best survive) is a
  user error that names the steps there are, not Orbax's bare "not found"."""
  from avjax.train import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    kept = sorted(checkpointer.all_steps())
  finally:
    checkpointer.close()
  if step not in kept:
    steps = ", ".join(str(s) for s in kept) if kept else "none"
    raise UserError(f"{workdir}: no checkpoint at step {step}; the steps kept are: "
                    f"{steps} (leave out --step for the best)")


def restore_workdir(workdir: str, step: int | None = None) -> Restored:
  """The best (or given) checkpoint's variables and the model that reads them."""
  import jax  # pylint: disable=g-import-not-at-top
  from avjax.train import runtime
  from input_pipeline import loader
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise UserError(f"{workdir}: workdir does not exist")
  config = runtime.load_workdir_config(workdir)
  if step is not None:
    _check_step_kept(workdir, int(step))  # Before the slow build.
  class_names = _class_names(workdir, config)
  feature_sets = feature_sets_of(config.data)
  input_keys = tuple(config.model.inputs)
  spec = input_spec(input_keys, feature_sets)
  # The trainer's own build gives the state's exact tree (optimizer state
  # included) to restore into; the example counts only size the schedule.
  info = loader.DataInfo(
      num_classes=len(class_names), class_names=class_names,
      element_spec={k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in spec.items()},
      protocol=str(config.data.get("protocol", "")), leaky=False,
      fold=int(config.data.get("fold", 0)), split_actors={},
      num_examples={"train": int(config.train.global_batch_size)})
  mesh = runtime.make_mesh(config)
  setup = runtime.build(config, info, mesh)
  best_metric = config.train.get("best_metric") or None
  state, step = runtime.restore_best(setup, workdir, step, purpose="export")
  variables = jax.device_get({"params": state.params, **state.model_state})
  return Restored(config=config, model=setup.model, variables=variables,
                  class_names=class_names, feature_sets=feature_sets, input_keys=input_keys,
                  step=int(step), best_metric=best_metric)


def serving_function(model):
  """Inference only: dropout off, nothing mutable, probabilities alongside logits."""
  import jax  # pylint: disable=g-import-not-at-top

  def serve(variables, inputs):
    logits = model.apply(variables, inputs, train=False)["logits"]
    return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}
  return serve


def _abstract_inputs(spec: Mapping[str, dict], batch):
  import jax  # pylint: disable=g-import-not-at-top
  return {k: jax.ShapeDtypeStruct((batch, *v["shape"]), np.dtype(v["dtype"]))
          for k, v in spec.items()}


def export_model(model, variables: Mapping[str, Any], out: str, *,
                 input_keys: Sequence[str], feature_sets: Sequence[str],
                 class_names: Sequence[str], model_name: str,
                 extra_metadata: Mapping[str, Any] | None = None,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS,
                 savedmodel: bool = True) -> ExportReport:
  """Writes the jax.export artefact (and the SavedModel) for `model` with
  `variables` into `out`, atomically: a failed export leaves no half directory."""
  import jax  # pylint: disable=g-import-not-at-top
  from avjax import models
  from input_pipeline import clip as clip_lib
  out = _check_out(out)
  spec = input_spec(input_keys, feature_sets)
  used_sets = [s for s in feature_sets if any(v["feature_set"] == s for v in spec.values())]
  variables = jax.tree.map(np.asarray, dict(variables))
  serve = serving_function(model)

  platforms = tuple(platforms)
  batch = jax.export.symbolic_shape("b")[0]
  abstract_vars = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  abstract_inputs = _abstract_inputs(spec, batch)

  def export_with(conv_impl: str, on: tuple[str, ...]):
    previous = models.set_conv_impl(conv_impl)  # Read while tracing.
    try:
      return jax.export.export(jax.jit(serve), platforms=on)(abstract_vars, abstract_inputs)
    finally:
      models.set_conv_impl(previous)

  # The portable function has plain XLA convolutions, right on every platform;
  # on CPU avjax.layers' own formulation is ~3x faster (S1 fusion), so a CPU
  # export also gets a CPU-only function that the loader prefers there.
  functions = {artifact.FUNCTION_FILE: export_with(
      "cpu" if platforms == ("cpu",) else "xla", platforms)}
  if "cpu" in platforms and platforms != ("cpu",):
    functions[artifact.CPU_FUNCTION_FILE] = export_with("cpu", ("cpu",))
  exported = functions[artifact.FUNCTION_FILE]
  previous = models.set_conv_impl("xla")  # The SavedModel is portable too.
  try:
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
      for name, function in functions.items():
        with open(os.path.join(tmp, name), "wb") as f:
          f.write(function.serialize())
      artifact.save_variables(os.path.join(tmp, artifact.VARIABLES_FILE), variables)
      metadata = {
          "format": artifact.FORMAT,
          "format_version": artifact.FORMAT_VERSION,
          "model": model_name,
          "class_names": list(class_names),
          "inputs": spec,
          "outputs": {"logits": {"shape": [len(class_names)], "dtype": "float32"},
                      "probabilities": {"shape": [len(class_names)], "dtype": "float32"}},
          "feature_sets": used_sets,
          "modalities": list(clip_lib.modalities_of(used_sets)),
          "window_seconds": clip_lib.natural_window(used_sets),
          "platforms": list(exported.platforms),
          "jax_version": jax.__version__,
          "calling_convention_version": int(exported.calling_convention_version),
          "files": {"function": artifact.FUNCTION_FILE,
                    "variables": artifact.VARIABLES_FILE,
                    **({"function_cpu": artifact.CPU_FUNCTION_FILE}
                       if artifact.CPU_FUNCTION_FILE in functions else {})},
          **dict(extra_metadata or {}),
      }
      if savedmodel:
        sm_dir = os.path.join(tmp, artifact.SAVEDMODEL_DIR, artifact.SAVEDMODEL_VERSION)
        metadata["savedmodel"] = write_savedmodel(serve, variables, spec, sm_dir,
                                                  platforms=platforms)
        metadata["files"]["savedmodel"] = artifact.SAVEDMODEL_DIR
      with open(os.path.join(tmp, artifact.METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, default=str)
      if os.path.isdir(out):
        os.rmdir(out)  # Empty (checked above).
      os.replace(tmp, out)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  finally:
    models.set_conv_impl(previous)
  files = [os.path.join(out, name) for name in functions]
  files.append(os.path.join(out, artifact.VARIABLES_FILE))
  files.append(os.path.join(out, artifact.METADATA_FILE))
  if savedmodel:
    files.append(os.path.join(out, artifact.SAVEDMODEL_DIR, artifact.SAVEDMODEL_VERSION))
  return ExportReport(out=out, files=files, metadata=metadata)


def _check_out(out: str) -> str:
  out = os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise UserError(f"{out}: already exists and is not empty; pick a new --out")
  return out


def write_savedmodel(serve, variables: Mapping[str, Any], spec: Mapping[str, dict],
                     path: str, *, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict:
  """The same function as a TF SavedModel whose `serving_default` signature takes
  one named tensor per model input (batch dimension None) and returns logits and
  probabilities. The variables become tf.Variables, so they are checkpointed
  beside the graph rather than folded into it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  converted = jax2tf.convert(
      serve, polymorphic_shapes=[None, {k: "(b, ...)" for k in spec}],
      native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.variables_tree = tf.nest.map_structure(
      lambda a: tf.Variable(a, trainable=False), dict(variables))
  signature = {k: tf.TensorSpec([None, *v["shape"]], tf.as_dtype(v["dtype"]), name=k)
               for k, v in spec.items()}

  @tf.function(input_signature=[signature], autograph=False)
  def serving_default(inputs):
    return converted(module.variables_tree, inputs)

  module.serving_default = serving_default
  tf.saved_model.save(module, path, signatures={SIGNATURE: serving_default})
  return {"signature": SIGNATURE, "version_dir": artifact.SAVEDMODEL_VERSION,
          "inputs": sorted(spec), "outputs": ["logits", "probabilities"],
          "tensorflow_version": tf.__version__, "platforms": list(platforms)}


def export_workdir(workdir: str, out: str, *, step: int | None = None,
                   platforms: Sequence[str] = DEFAULT_PLATFORMS,
                   savedmodel: bool = True) -> ExportReport:
  """`avjax export`: the best checkpoint of `workdir` into `out`."""
  from avjax.train import checkpoint as ckpt_lib
  _check_out(out)  # Before the slow restore.
  restored = restore_workdir(workdir, step)
  config = restored.config
  extra = {"config_spec": config.get("config_spec", None) or config.model.name,
           "checkpoint_step": restored.step, "best_metric": restored.best_metric,
           "workdir": os.path.abspath(workdir),
           "config": ckpt_lib.config_to_json(config)}
  return export_model(restored.model, restored.variables, out,
                      input_keys=restored.input_keys, feature_sets=restored.feature_sets,
                      class_names=restored.class_names, model_name=config.model.name,
                      extra_metadata=extra, platforms=platforms, savedmodel=savedmodel)


def export_initialised(config, out: str, *, class_names: Sequence[str], seed: int = 0,
                       platforms: Sequence[str] = DEFAULT_PLATFORMS,
                       savedmodel: bool = False) -> ExportReport:
  """Exports a config's model with freshly initialised variables: for benchmarks
  and tests of the serving path, where what the weights say does not matter."""
  import jax  # pylint: disable=g-import-not-at-top
  from avjax.train import runtime
  out = _check_out(out)
  feature_sets = feature_sets_of(config.data)
  input_keys = tuple(config.model.inputs)
  spec = input_spec(input_keys, feature_sets)
  model = runtime.make_model(config, len(class_names))
  dummy = {k: np.zeros((1, *v["shape"]), v["dtype"]) for k, v in spec.items()}
  key = jax.random.PRNGKey(seed)
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, dummy,
                                           train=False))(key)
  extra = {"config_spec": config.get("config_spec", None) or config.model.name,
           "checkpoint_step": None, "initialised_seed": seed, "config": config.to_dict()}
  return export_model(model, jax.device_get(variables), out, input_keys=input_keys,
                      feature_sets=feature_sets, class_names=class_names,
                      model_name=config.model.name, extra_metadata=extra,
                      platforms=platforms, savedmodel=savedmodel)
