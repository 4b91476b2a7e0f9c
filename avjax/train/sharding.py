"""Devices, mesh and placement: the only module that knows about topology.

One code path for 1 CPU device, 8 simulated ones, a GPU, a TPU v3-8/v5e-8 or a pod
slice: a 2D mesh ('data', 'model') over every device, batches split on 'data',
parameters replicated or split on 'model' by a shape rule. Multi-host start-up is
explicit (a flag or AVJAX_MULTIHOST=1) and must run before anything asks JAX
about devices, because the first device query fixes the backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avjax.errors import UserError

DATA, MODEL = "data", "model"
_distributed_initialized = False


def multihost_requested(flag: bool | None = None) -> bool:
  return bool(flag) or os.environ.get("AVJAX_MULTIHOST", "0") == "1"


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
  """Calls `jax.distributed.initialize()` once when multi-host is requested.

  On Cloud TPU pods and Kaggle-style multi-host slices the coordinator address and
  process ids are discovered from the environment.
  """
  global _distributed_initialized
  if not multihost_requested(flag) or _distributed_initialized:
    return _distributed_initialized
  jax.distributed.initialize()
  _distributed_initialized = True
  logging.info("jax.distributed: process %d of %d", jax.process_index(),
               jax.process_count())
  return True


def make_mesh(mesh_config: Mapping[str, Any] | None = None) -> Mesh:
  """A ('data', 'model') mesh over all devices; -1 on one axis takes the rest."""
  cfg = dict(mesh_config or {})
  n = jax.device_count()
  data, model = int(cfg.get("data", -1)), int(cfg.get("model", 1))
  if model == -1 and data == -1:
    raise UserError("mesh: at most one of mesh.data, mesh.model may be -1")
  if model == -1:
    model = n // max(data, 1)
  if data == -1:
    data = n // max(model, 1)
  if data * model != n or data < 1 or model < 1:
    raise UserError(f"mesh: data={data} x model={model} does not cover the {n} devices")
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', replicated over 'model'."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], model_size: int) -> P:
  """The partition rule: a kernel (ndim >= 2) whose output (last) dimension divides
  the 'model' axis is split along it; everything else is replicated."""
  if model_size > 1 and len(shape) >= 2 and shape[-1] % model_size == 0:
    return P(*([None] * (len(shape) - 1)), MODEL)
  return P()


def state_shardings(mesh: Mesh, abstract_tree: Any) -> Any:
  """NamedShardings for every leaf of an abstract (eval_shape) pytree by
  `param_spec`. Adam's moments mirror the parameters, so they follow them."""
  model_size = mesh.shape[MODEL]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), model_size)),
      abstract_tree)


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Per-process batch; it must split evenly over this process's data shards."""
  pc = jax.process_count()
  if global_batch_size % pc:
    raise UserError(f"global batch {global_batch_size} does not divide over {pc} processes")
  local = global_batch_size // pc
  data_shards = mesh.shape[DATA]
  if global_batch_size % data_shards:
    raise UserError(f"global batch {global_batch_size} does not divide over the "
                    f"{data_shards} devices of the 'data' mesh axis")
  return local


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
