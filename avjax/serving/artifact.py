"""The TF-free export format and its loader: needs jax and numpy, no model code.

An export directory holds:
  model.jax_exported  `jax.export` serialisation of (variables, inputs) ->
                      {"logits", "probabilities"}, batch dimension symbolic ("b"),
                      for every exported platform
  model.cpu.jax_exported  the same for CPU only, with avjax.layers' CPU
                      convolutions (faster there); loaded instead on a CPU
  variables.npz       the variables, one array per "/"-joined path
  metadata.json       model name, class names, input keys with shapes/dtypes and
                      the feature sets that make them, the training config
  savedmodel/1/       the same function as a TF SavedModel (TF Serving layout)

Keeping the variables outside the serialised function keeps it small and lets a
reader inspect or swap them; the function's own input tree says how they nest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from avjax.errors import UserError

FORMAT = "avjax-export"
FORMAT_VERSION = 1
FUNCTION_FILE = "model.jax_exported"
CPU_FUNCTION_FILE = "model.cpu.jax_exported"  # Optional: CPU-only, faster convolutions.
VARIABLES_FILE = "variables.npz"
METADATA_FILE = "metadata.json"
SAVEDMODEL_DIR = "savedmodel"
SAVEDMODEL_VERSION = "1"  # TF Serving loads <model_base_path>/<integer version>/.
_SEP = "/"


def flatten_variables(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{"params": {"Dense_0": {"kernel": x}}} -> {"params/Dense_0/kernel": x}."""
  out = {}
  for key, value in tree.items():
    if _SEP in str(key):
      raise ValueError(f"variable name {key!r} contains {_SEP!r}")
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten_variables(value, path + _SEP))
    else:
      out[path] = np.asarray(value)
  return out


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split(_SEP)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def save_variables(path: str, tree: Mapping[str, Any]) -> None:
  np.savez(path, **flatten_variables(tree))


def load_variables(path: str) -> dict:
  with np.load(path, allow_pickle=False) as data:
    return unflatten_variables({k: data[k] for k in data.files})


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


class ExportedModel:
  """A loaded export: `model(inputs)` -> {"logits", "probabilities"} as numpy."""

  def __init__(self, directory: str, metadata: dict, exported, variables: dict,
               function_file: str = FUNCTION_FILE, device=None):
    import jax  # pylint: disable=g-import-not-at-top
    self.directory = directory
    self.function_file = function_file
    self.metadata = metadata
    self.exported = exported
    # Committed inputs pin the jitted call to this device (the host CPU for a
    # CPU-only function on a GPU machine); None: the default device.
    self.device = device
    self.variables = jax.device_put(variables, device)
    self._call = jax.jit(exported.call)

  @property
  def class_names(self) -> list[str]:
    return list(self.metadata["class_names"])

  @property
  def input_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(v["shape"]), np.dtype(v["dtype"]))
            for k, v in self.metadata["inputs"].items()}

  @property
  def feature_sets(self) -> list[str]:
    return list(self.metadata["feature_sets"])

  @property
  def modalities(self) -> list[str]:
    return list(self.metadata["modalities"])

  def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec = self.input_spec
    missing = sorted(set(spec) - set(inputs))
    if missing:
      raise UserError(f"inputs {missing} missing (the model reads {sorted(spec)})")
    batch = {k: np.asarray(inputs[k], dtype=dtype) for k, (_, dtype) in spec.items()}
    if self.device is not None:
      import jax  # pylint: disable=g-import-not-at-top
      batch = jax.device_put(batch, self.device)
    out = self._call(self.variables, batch)
    return {k: np.asarray(v) for k, v in out.items()}

  def predict(self, inputs: Mapping[str, np.ndarray], batch_size: int = 16
              ) -> dict[str, np.ndarray]:
    """Runs in fixed-size batches (the last one padded), so a clip of any length
    compiles the function once per batch size, not once per window count."""
    n = len(next(iter(inputs.values())))
    outs: list[dict[str, np.ndarray]] = []
    for start in range(0, n, batch_size):
      chunk = {k: np.asarray(v[start:start + batch_size]) for k, v in inputs.items()}
      size = len(next(iter(chunk.values())))
      if size < batch_size and n > batch_size:
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - size, axis=0)])
                 for k, v in chunk.items()}
      outs.append({k: v[:size] for k, v in self(chunk).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def is_export_dir(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, METADATA_FILE)) and os.path.isfile(
      os.path.join(directory, FUNCTION_FILE))


def read_metadata(directory: str) -> dict:
  path = os.path.join(directory, METADATA_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      metadata = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{directory}: not an export directory (no {METADATA_FILE}); "
                    f"make one with `avjax export --workdir RUN --out {directory}`") from None
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: unreadable export metadata ({e})") from e
  if metadata.get("format") != FORMAT:
    raise UserError(f"{path}: not an avjax export (format {metadata.get('format')!r})")
  if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
    raise UserError(f"{path}: export format {metadata['format_version']} is newer than "
                    f"this avjax reads ({FORMAT_VERSION}); upgrade avjax")
  return metadata


def load(directory: str, portable: bool | None = None) -> ExportedModel:
  """Loads an export directory with jax + numpy only. On a CPU the CPU-only
  function is used when there is one; `portable=True` forces the portable one,
  `False` the CPU one, which then runs on the host CPU whatever the default
  backend. A function exported without this machine's accelerator but with
  "cpu" also runs on the host CPU."""
  import jax  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise UserError(f"{directory}: model directory does not exist")
  metadata = read_metadata(directory)
  platform = jax.default_backend()
  platform = "cuda" if platform == "gpu" else platform
  has_cpu = os.path.isfile(os.path.join(directory, CPU_FUNCTION_FILE))
  if portable is False and not has_cpu:
    raise UserError(f"{directory}: has no CPU-only function ({CPU_FUNCTION_FILE})")
  use_cpu_function = has_cpu and (portable is False or (platform == "cpu" and not portable))
  name = CPU_FUNCTION_FILE if use_cpu_function else FUNCTION_FILE
  try:
    with open(os.path.join(directory, name), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    variables = load_variables(os.path.join(directory, VARIABLES_FILE))
  except FileNotFoundError as e:
    raise UserError(f"{directory}: incomplete export ({os.path.basename(e.filename)} "
                    "missing)") from None
  except (ValueError, OSError) as e:
    raise UserError(f"{directory}: cannot load the exported model ({e})") from e
  device = None  # The default device, unless an accelerator host must use its CPU.
  if platform != "cpu" and (use_cpu_function or (platform not in exported.platforms
                                                 and "cpu" in exported.platforms)):
    try:
      device, platform = jax.devices("cpu")[0], "cpu"
    except RuntimeError:  # JAX_PLATFORMS leaves the CPU backend out: refused below.
      pass
  if platform not in exported.platforms:
    raise UserError(f"{directory}: exported for {', '.join(exported.platforms)}, this "
                    f"machine runs {platform}; export again with that platform")
  return ExportedModel(directory, metadata, exported, variables, function_file=name,
                       device=device)
