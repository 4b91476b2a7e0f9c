"""Devices, mesh and placement: the only module that knows about topology.

One code path for 1 CPU device, 8 simulated ones, a GPU, a TPU v3-8/v5e-8 or a pod
slice: a 2D mesh ('data', 'model') over every device, batches split on 'data',
parameters replicated or split on 'model' by a shape rule. Multi-host start-up is
explicit (a flag, AVJAX_MULTIHOST=1, or AVJAX_COORDINATOR with AVJAX_NUM_PROCESSES
and AVJAX_PROCESS_ID) and must run before anything asks JAX about devices, because
the first device query fixes the backend.
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


# Explicit multi-host start-up (a CPU/GPU cluster, or several processes on one
# machine): all three set, or none (then JAX auto-detects, as on Cloud TPU pods).
ENV_COORDINATOR = "AVJAX_COORDINATOR"      # host:port of process 0's coordinator
ENV_NUM_PROCESSES = "AVJAX_NUM_PROCESSES"  # total number of processes
ENV_PROCESS_ID = "AVJAX_PROCESS_ID"        # this process, in [0, num_processes)
_ENV_ARGS = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


def multihost_requested(flag: bool | None = None) -> bool:
  return (bool(flag) or os.environ.get("AVJAX_MULTIHOST", "0") == "1"
          or bool(os.environ.get(ENV_COORDINATOR)))


def distributed_args_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
  """`jax.distributed.initialize` keyword arguments from AVJAX_COORDINATOR,
  AVJAX_NUM_PROCESSES and AVJAX_PROCESS_ID; {} when none is set (auto-detect)."""
  env = os.environ if environ is None else environ
  values = {k: env.get(k, "").strip() for k in _ENV_ARGS}
  if not any(values.values()):
    return {}
  missing = [k for k, v in values.items() if not v]
  if missing:
    raise UserError(f"multi-host: set all of {', '.join(_ENV_ARGS)} or none of them "
                    f"(missing: {', '.join(missing)})")
  coordinator = values[ENV_COORDINATOR]
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"{ENV_COORDINATOR}={coordinator!r} is not host:port")
  try:
    num_processes = int(values[ENV_NUM_PROCESSES])
    process_id = int(values[ENV_PROCESS_ID])
  except ValueError as e:
    raise UserError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers ({e})") from e
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise UserError(f"multi-host: {ENV_PROCESS_ID}={process_id} is not in "
                    f"[0, {ENV_NUM_PROCESSES}={num_processes})")
  return {"coordinator_address": coordinator, "num_processes": num_processes,
          "process_id": process_id}


def _enable_cpu_collectives() -> None:
  """Cross-process collectives of the CPU backend (gloo). Newer JAX defaults to it;
  older versions default to none, and a multi-process CPU run then fails at its
  first cross-process computation. It only concerns the CPU client, so setting it
  on TPU/GPU hosts is harmless. Must run before the backends are created."""
  try:
    if not jax.config.jax_cpu_collectives_implementation:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # A JAX without the option.
    logging.warning("this JAX has no jax_cpu_collectives_implementation option")


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
  """Calls `jax.distributed.initialize` once when multi-host is requested.

  Requested by `flag` (config.multihost), AVJAX_MULTIHOST=1 or AVJAX_COORDINATOR.
  With AVJAX_COORDINATOR / AVJAX_NUM_PROCESSES / AVJAX_PROCESS_ID set, they are
  passed to `initialize` (e.g. several CPU processes on one machine); otherwise,
  on Cloud TPU pods (and Slurm / Open MPI) the coordinator address and process ids
  are discovered from the environment. Also creates JAX's preemption sync manager
  (SIGTERM -> `Checkpointer.reached_preemption`), even for one process. Must run
  before anything asks JAX about devices.
  """
  global _distributed_initialized
  if not multihost_requested(flag) or _distributed_initialized:
    return _distributed_initialized
  kwargs = distributed_args_from_env()
  if jax.distributed.is_initialized():  # Someone (a launcher, a notebook) did it.
    logging.info("jax.distributed was already initialised; not initialising again")
  else:
    _enable_cpu_collectives()
    jax.distributed.initialize(**kwargs)
  _distributed_initialized = True
  logging.info("jax.distributed: process %d of %d (%s)", jax.process_index(),
               jax.process_count(),
               f"coordinator {kwargs['coordinator_address']}" if kwargs else "auto-detected")
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
