"""Every experiment config: it loads, its model builds from the config alone, the
outputs have the shapes the trainer needs, and logits on 8 simulated devices
(batch over 'data', and data x model with kernels split over 'model') equal the
single-device logits."""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.configs import load_config
from avjax.train import runtime, sharding
from input_pipeline.features import get_feature_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every launchable variant of every config. A new config file must be added here
# (test_every_config_file_is_covered fails otherwise).
SPECS = (
    "sultana2024.py:audio", "sultana2024.py:video", "sultana2024.py:fusion",
    "dvemotionnet2024.py:audio", "dvemotionnet2024.py:video", "dvemotionnet2024.py:fusion",
    "satvik2025.py:audio", "satvik2025.py:video", "satvik2025.py:decision",
    "almulla2024_weighted.py:weighted",
    "mocanu2023.py:av",
    "akturk2024.py:fusion", "akturk2024.py:keyframe", "akturk2024.py:mel",
    "avjax_audio.py:audio", "avjax_audio.py:ensemble",
)
BATCH = 8


def _spec_path(spec: str) -> str:
  return os.path.join(REPO, "experiments", spec)


def test_every_config_file_is_covered():
  files = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
           if not os.path.basename(p).startswith("_")}
  covered = {s.split(":")[0] for s in SPECS}
  assert files == covered


def _element_spec(config) -> dict:
  names = [config.data.feature_set, *tuple(config.data.get("feature_sets", ()) or ())]
  spec = {}
  for name in names:
    spec.update(get_feature_set(name).spec)
  return spec


def _random_inputs(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  spec = _element_spec(config)
  out = {}
  for key in config.model.inputs:
    shape, dtype = spec[key]
    shape = (batch, *shape)
    if dtype == np.uint8:
      out[key] = rng.integers(0, 256, shape).astype(np.uint8)
    elif dtype == np.bool_:
      mask = np.ones(shape, bool)
      mask[:, shape[1] * 3 // 4:] = False  # Some padding, as short clips have.
      out[key] = mask
    else:
      out[key] = rng.standard_normal(shape).astype(dtype)
  return out


@pytest.fixture(scope="module", params=SPECS)
def system(request):
  config = load_config(_spec_path(request.param) + ",smoke")
  num_classes = 8
  model = runtime.make_model(config, num_classes)
  inputs = _random_inputs(config, BATCH)
  variables = jax.jit(lambda k, x: model.init({"params": k, "dropout": k}, x, train=False))(
      jax.random.PRNGKey(0), inputs)
  return request.param, config, model, inputs, variables


def _apply(model):
  return lambda v, x: model.apply(v, x, train=False)


def test_inputs_are_features_of_the_configured_sets(system):
  _, config, *_ = system
  spec = _element_spec(config)
  missing = [k for k in config.model.inputs if k not in spec]
  assert not missing


def test_outputs_have_the_trainer_shapes(system):
  name, config, model, inputs, variables = system
  out = jax.jit(_apply(model))(variables, inputs)
  assert out["logits"].shape == (BATCH, 8), name
  assert out["logits"].dtype == jnp.float32
  assert out["embedding"].ndim == 2 and out["embedding"].shape[0] == BATCH
  assert np.all(np.isfinite(np.asarray(out["logits"])))


@pytest.mark.parametrize("mesh_shape", [{"data": 8, "model": 1}, {"data": 4, "model": 2}])
def test_sharded_logits_equal_single_device_logits(system, mesh_shape):
  name, _, model, inputs, variables = system
  with jax.default_device(jax.devices()[0]):
    single = np.asarray(jax.jit(_apply(model))(
        jax.device_put(variables, jax.devices()[0]),
        jax.device_put(inputs, jax.devices()[0]))["logits"])
  mesh = sharding.make_mesh(mesh_shape)
  var_sh = sharding.state_shardings(mesh, variables)
  sharded_vars = jax.device_put(variables, var_sh)
  sharded_inputs = sharding.global_batch(mesh, inputs)
  out = jax.jit(_apply(model), in_shardings=(var_sh, sharding.batch_sharding(mesh)),
                out_shardings=sharding.replicated(mesh))(sharded_vars, sharded_inputs)
  assert len(out["logits"].sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out["logits"]), single, atol=2e-5, rtol=2e-5,
                             err_msg=name)
