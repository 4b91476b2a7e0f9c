"""Train-step throughput: avjax vs the same network in Keras (TF) and PyTorch, on CPU.

Issue 4 asks avjax to train at least 1.5x as fast as Keras on TensorFlow (what
the papers used) and at least as fast as PyTorch; issue 8 adds the S1 video net
and the S5 ONN and asks for >= 1.0x PyTorch everywhere and >= 1.0x Keras on that net. One run
measures every framework on identical shapes and batch size, interleaved, and
prints the ratios, because absolute times on a shared machine are noise.

Nets (one framework-neutral layer list per net builds the Keras and PyTorch
replicas, drives the FLOP count, and is checked against avjax's parameter count):

  s1_fusion  S1: registered `sultana_audio` on mfcc (B,180,20) and
             `sultana_video` on frames3d (B,30,80,70,1) uint8, their 64-wide
             embeddings concatenated, Dense 128 ReLU, Dense 8 (registered
             `feature_concat_fusion`, trained end to end).
  s1_video   S1 video net alone (Conv3D 16,16,pool,32,32,pool, Dense 64, 8).
  fercnn     S2 FERCNN on (B,162,1): Conv1D 256/128/64/64/32 k3 with pools,
             dropout 0.2, Dense 256, Dense 6; 152,614 parameters (registered
             `fercnn`).
  s5_onn     S5 registered `akturk_onn` (defaults): keyframe (B,96,96,3) uint8
             and mel_image (B,128,128) float, each 3 operational Conv2D blocks
             (16, 32, 64; Q=3, k3, SAME) with max-pool 2, tanh, global average
             pool; concatenated, Dense 128 ReLU, Dense 8. The replicas build an
             operational conv as tanh, channel powers [t, t^2, t^3], one conv.

One train step is forward, softmax cross-entropy, backward and Adam (lr 1e-3):
  jax       `jax.jit` with donated (params, opt_state), compiled ahead of time, so
            compilation is never timed; optax.adam. Convolutions and pools are
            what `avjax.models.conv`/`max_pool` build by default (on CPU:
            per layer oneDNN as XLA custom calls or avjax.layers' pure-XLA CPU
            path, `avjax.layers.conv.cpu_auto_impl`, issue 20).
  jax-xla   the same with `avjax.models.set_conv_impl("xla")`: plain
            `lax.conv_general_dilated` and flax max-pool, for comparison;
            likewise jax-cpu (avjax's pure-XLA CPU formulation, the default
            before issue 20) and jax-onednn (every conv through oneDNN's FFI
            custom calls, avjax/ops).
  keras     Keras 3 on TF: both `model.train_on_batch` after `compile()` (on CPU
            Keras' jit_compile='auto' means no XLA, as the papers ran) and a
            custom `tf.function(jit_compile=False)` GradientTape step; the
            ratio uses the faster of the two (the fastest honest Keras path).
  torch     PyTorch eager (on the GPU when jax runs on one, TF32 allowed as in
            jax's default precision: `--torch-device`), on a CPU with
            `torch.set_num_threads(os.cpu_count())`, channels-
            first inputs (its native layout), Adam(fused=True) when available,
            OMP_WAIT_POLICY=PASSIVE unless set: on a shared machine torch's
            spinning OpenMP threads made it 5x slower at load 8 on 2 cores.

Host memory: by default the script first calls
avjax.ops.host_memory.keep_freed_host_memory(), as the `avjax` command does, so
glibc reuses freed memory instead of page-faulting XLA:CPU's per-step temp
buffer in again; it is process-wide, so Keras and PyTorch run with it too.
`--host-memory default` measures glibc's own policy.

Timing: after the warm-up steps, each round runs every framework for `--steps`
steps in turn (interleaved), `--repeat` rounds; examples/s is taken at the
median round time. The two S1 nets at full size are slow in jax on CPU
(seconds per step), so their default is 3 steps per round.

MFU = model FLOPs per train step / median step time / CPU peak FLOP/s, where
  model FLOPs = 3 x forward FLOPs (backward ~ 2 x forward), forward FLOPs =
    2 x MACs of the convolutions and dense layers, counted analytically from the
    layer shapes (pools, activations and the optimizer are not counted; the
    first layer's input gradient is counted although nobody needs it);
  peak = cores x clock x FLOPs/cycle/core, cores = os.sched_getaffinity, clock
    = the highest "cpu MHz" in /proc/cpuinfo (lscpu's max MHz when there is
    one), FLOPs/cycle/core = 2 FMA pipes x fp32 lanes x 2, lanes from the
    SIMD flags: 16 for avx512f, except AMD family 25 (Zen 4, which runs 512-bit
    ops as two 256-bit halves) with 8; 8 for avx2+fma; 4 otherwise.
    `--peak-gflops` overrides. jax's own `cost_analysis()` FLOPs are printed
    beside the analytic count as a cross-check. The clock in /proc/cpuinfo is
    often the base clock of a VM that turbos above it, so the script also
    measures a jax f32 GEMM (2048^3, best of 5) and prints each net's FLOP/s
    as a share of it ("of GEMM"): an attainable peak, not a theoretical one.

Run from the repository root. torch is not an avjax dependency: it lives in a
separate venv that layers it over the project venv (benchmarks/torch_setup.sh):
  bash benchmarks/torch_setup.sh
  .venv-bench/bin/python -m benchmarks.train_step --json out/train_step.json
  .venv/bin/python -m benchmarks.train_step --frameworks jax,keras  # no torch
`--nets`, `--frameworks`, `--steps`, `--repeat`, `--warmup` (steps) pick what
runs. `--smoke` runs tiny shapes (tests/test_benchmark_train_step_smoke.py);
smoke numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# PyTorch's OpenMP threads spin-wait by default. On a shared machine a spinning
# thread waits for a descheduled peer: torch measured 5x slower at load 8 on 2
# cores, and its idle spinning would also steal CPU from the next framework.
# Passive waiting costs nothing on an idle machine; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["KERAS_BACKEND"] = "tensorflow"  # Keras is the TF baseline here.

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

NETS = ("s1_fusion", "s1_video", "fercnn", "s5_onn")
FRAMEWORKS = ("jax", "jax-xla", "jax-cpu", "jax-onednn", "keras", "torch")
DEFAULT_FRAMEWORKS = ("jax", "keras", "torch")
BATCH = 32
# Targets per net: (min avjax/Keras, min avjax/PyTorch). Issue 4: S1 fusion and
# FERCNN; issue 8: the S1 video net, and >= 1.0x PyTorch everywhere.
TARGETS = {"s1_fusion": (1.5, 1.0), "fercnn": (1.5, 1.0), "s1_video": (1.0, 1.0),
           "s5_onn": (None, 1.0)}
SLOW_NETS = ("s1_fusion", "s1_video", "s5_onn")


# --------------------------------------------------------------- net specs
# A layer is a tuple: ("cmvn",) per-example mean/variance normalisation of each
# channel over time; ("scale",) uint8 -> float / 255; ("conv", features, kernel,
# padding) + ReLU; ("pool", window, strides, padding) max-pool; ("dropout", rate);
# ("flatten",); ("dense", width, relu: bool); ("affine", scale, shift) x * scale +
# shift (uint8 or [0, 1] -> [-1, 1]); ("opconv", features, kernel, padding, Q) an
# operational (Self-ONN) conv: tanh, powers [t, .., t^Q] on channels, one conv, no
# activation; ("tanh",); ("gap",) global average pool over the spatial axes.


@dataclasses.dataclass(frozen=True)
class Branch:
  key: str
  shape: tuple[int, ...]  # Channels-last, without the batch.
  dtype: str
  layers: tuple[tuple, ...]
  # avjax reads this input without its unit channel axis (S5's mel image).
  squeeze_for_avjax: bool = False


@dataclasses.dataclass(frozen=True)
class NetSpec:
  name: str
  branches: tuple[Branch, ...]
  head: tuple[tuple, ...]  # After concatenating the branch outputs; ends in the logits.
  num_classes: int
  avjax_source: str = ""


def _s1_audio_layers(audio) -> tuple:
  layers = [("cmvn",)] if audio.cmvn else []
  for width in audio.features:
    layers += [("conv", width, (audio.kernel_size,), "same"),
               ("pool", (audio.pool_size,), (audio.pool_size,), "valid")]
  return tuple(layers + [("flatten",)] + [("dense", w, True) for w in audio.hidden])


def _s1_video_layers(video) -> tuple:
  layers = [("scale",)]
  for i, width in enumerate(video.features):
    layers.append(("conv", width, tuple(video.kernel_size), "same"))
    if i in video.pool_after:
      layers.append(("pool", tuple(video.pool_size), tuple(video.pool_size), "valid"))
  return tuple(layers + [("flatten",)] + [("dense", w, True) for w in video.hidden])


FERCNN_LAYERS = (
    ("conv", 256, (3,), "valid"), ("pool", (3,), (3,), "valid"),
    ("conv", 128, (3,), "valid"), ("pool", (3,), (3,), "valid"), ("dropout", 0.2),
    ("conv", 64, (3,), "valid"), ("pool", (3,), (3,), "valid"), ("dropout", 0.2),
    # The paper's "pool keeping (3)" / "(1)": pool 3, stride 1, 'same'.
    ("conv", 64, (3,), "valid"), ("pool", (3,), (1,), "same"),
    ("conv", 32, (3,), "valid"), ("pool", (3,), (1,), "same"),
    ("flatten",), ("dense", 256, True), ("dropout", 0.2))


def _s5_branch_layers(features, q: int, k: int, pool: int, scale: float,
                      shift: float) -> tuple:
  layers = [("affine", scale, shift)]
  for width in features:
    layers += [("opconv", width, (k, k), "same", q), ("pool", (pool, pool), (pool, pool), "valid")]
  return tuple(layers + [("tanh",), ("gap",)])


def s5_kwargs(smoke: bool) -> dict:
  """akturk_onn's defaults (the spec follows them), or tiny widths for --smoke."""
  return {"keyframe_features": (4, 4), "mel_features": (4, 4), "hidden": (8,)} if smoke else {}


def s1_branch_kwargs(smoke: bool) -> tuple[dict, dict, dict]:
  """Input shapes and video widths: the paper's, or tiny ones for --smoke."""
  if smoke:
    return {"mfcc": (24, 20), "frames3d": (6, 12, 10, 1)}, {}, {"features": (4, 4, 4, 4)}
  return {"mfcc": (180, 20), "frames3d": (30, 80, 70, 1)}, {}, {}


def build_specs(smoke: bool) -> dict[str, NetSpec]:
  """Specs whose widths come from avjax's own S1 defaults, so the replicas follow them."""
  from avjax import models
  shapes, audio_kw, video_kw = s1_branch_kwargs(smoke)
  audio = models.get_model("sultana_audio", num_classes=8, **audio_kw)
  video = models.get_model("sultana_video", num_classes=8, **video_kw)
  a = Branch("mfcc", shapes["mfcc"], "float32", _s1_audio_layers(audio))
  v = Branch("frames3d", shapes["frames3d"], "uint8", _s1_video_layers(video))
  onn = models.get_model("akturk_onn", num_classes=8, **s5_kwargs(smoke))
  side = (16, 16) if smoke else None
  onn_branches = (
      Branch("keyframe", side + (3,) if smoke else (96, 96, 3), "uint8", _s5_branch_layers(
          onn.keyframe_features, onn.q_order, onn.kernel_size, onn.pool_size,
          1 / 127.5, -1.0)),
      Branch("mel_image", side + (1,) if smoke else (128, 128, 1), "float32", _s5_branch_layers(
          onn.mel_features, onn.q_order, onn.kernel_size, onn.pool_size, 2.0, -1.0),
             squeeze_for_avjax=True))
  assert onn.global_pool == "avg" and not onn.dropout_rate, "spec follows the defaults"
  return {
      "s5_onn": NetSpec("s5_onn", onn_branches,
                        tuple(("dense", w, True) for w in onn.hidden) + (("dense", 8, False),), 8),
      "s1_fusion": NetSpec("s1_fusion", (a, v), (("dense", 128, True), ("dense", 8, False)), 8),
      "s1_video": NetSpec("s1_video", (v,), (("dense", 8, False),), 8),
      "fercnn": NetSpec("fercnn", (Branch("x162", (162, 1), "float32", FERCNN_LAYERS),),
                        (("dense", 6, False),), 6),
  }


def _out_len(n: int, k: int, s: int, padding: str) -> int:
  return -(-n // s) if padding == "same" else (n - k) // s + 1


def next_shape(shape: tuple[int, ...], layer: tuple) -> tuple[int, ...]:
  """Channels-last output shape of one layer (without the batch)."""
  kind = layer[0]
  if kind in ("conv", "opconv"):
    return tuple(_out_len(n, k, 1, layer[3]) for n, k in zip(shape[:-1], layer[2])) + (layer[1],)
  if kind == "gap":
    return shape[-1:]
  if kind == "pool":
    return tuple(_out_len(n, k, s, layer[3])
                 for n, k, s in zip(shape[:-1], layer[1], layer[2])) + shape[-1:]
  if kind == "flatten":
    return (math.prod(shape),)
  if kind == "dense":
    return (layer[1],)
  return shape


def trace(spec: NetSpec) -> tuple[int, int]:
  """(parameters, forward MACs per example), from the layer shapes."""
  params = macs = 0

  def run(shape: tuple[int, ...], layers) -> tuple[int, ...]:
    nonlocal params, macs
    for layer in layers:
      out = next_shape(shape, layer)
      if layer[0] in ("conv", "opconv"):
        cin = shape[-1] * (layer[4] if layer[0] == "opconv" else 1)
        params += math.prod(layer[2]) * cin * layer[1] + layer[1]
        macs += math.prod(out) * math.prod(layer[2]) * cin
      elif layer[0] == "dense":
        params += shape[0] * layer[1] + layer[1]
        macs += shape[0] * layer[1]
      shape = out
    return shape

  width = sum(run(b.shape, b.layers)[0] for b in spec.branches)
  run((width,), spec.head)
  return params, macs


# -------------------------------------------------------------------- avjax


@contextlib.contextmanager
def conv_impl(impl: str | None):
  """`jax-xla`: every avjax model built (and traced) inside uses plain XLA."""
  from avjax import models
  if impl is None:
    yield
    return
  previous = models.set_conv_impl(impl)
  try:
    yield
  finally:
    models.set_conv_impl(previous)


def avjax_model(spec: NetSpec, smoke: bool):
  """The registered avjax model for a spec, and a note on what it is."""
  from avjax import models
  _, audio_kw, video_kw = s1_branch_kwargs(smoke)
  if spec.name == "s1_video":
    return models.get_model("sultana_video", num_classes=8, **video_kw), "registered sultana_video"
  if spec.name == "s5_onn":
    return (models.get_model("akturk_onn", num_classes=8, **s5_kwargs(smoke)),
            "registered akturk_onn")
  if spec.name == "s1_fusion":
    return (common.s1_fusion(audio_kw, video_kw),
            "registered feature_concat_fusion over sultana_audio + sultana_video, "
            "trained end to end")
  return (models.get_model("fercnn", num_classes=6, input_key=spec.branches[0].key),
          "registered fercnn")


def make_jax(spec: NetSpec, batch: dict, smoke: bool, impl: str | None) -> dict:
  """A compiled, donated train step; returns the runner and what it found."""
  import jax
  import jax.numpy as jnp
  import optax

  with conv_impl(impl):
    model, source = avjax_model(spec, smoke)
    inputs = {k: v for k, v in batch.items() if k != "label"}
    for b in spec.branches:
      if b.squeeze_for_avjax:
        inputs[b.key] = inputs[b.key][..., 0]
    if "mfcc" in inputs:  # What the trainer feeds the audio net.
      inputs["mfcc_mask"] = np.ones(inputs["mfcc"].shape[:2], np.float32)
    params = jax.jit(lambda k: model.init({"params": k, "dropout": k}, inputs,
                                          train=False)["params"])(jax.random.PRNGKey(0))
    tx = optax.adam(1e-3)

    def loss_fn(p, b, rng):
      out = model.apply({"params": p}, {k: v for k, v in b.items() if k != "label"},
                        train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(
          out["logits"].astype(jnp.float32), b["label"]).mean()

    def step(state, b):
      p, o, i = state
      loss, grads = jax.value_and_grad(loss_fn)(p, b, jax.random.fold_in(
          jax.random.PRNGKey(1), i))
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), o, i + 1), loss

    dev_batch = jax.device_put({**inputs, "label": batch["label"]})
    state = (params, tx.init(params), jnp.zeros((), jnp.int32))
    compiled = jax.jit(step, donate_argnums=0).lower(state, dev_batch).compile()
    # Parameters no gradient reaches (the branch nets' own 8-way heads, which
    # the fusion net never uses) are reported, not compared: Adam leaves a
    # parameter whose gradient is zero exactly as it was, so one step shows them.
    before = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
    state, loss = compiled(state, dev_batch)
    loss.block_until_ready()
    unused = sum(b.size for b, a in zip(before, jax.tree_util.tree_leaves(state[0]))
                 if np.array_equal(b, np.asarray(a)))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = {"state": state}

  def run(steps: int) -> None:
    loss = None
    for _ in range(steps):
      holder["state"], loss = compiled(holder["state"], dev_batch)
    loss.block_until_ready()

  return {"run": run, "params": sum(b.size for b in before) - unused, "unused_params": unused,
          "note": f"{source}; conv={_factory_name()} impl={impl or 'default'}",
          "xla_flops": float((cost or {}).get("flops", float("nan")))}


def _factory_name() -> str:
  from avjax import models
  factory = models._CONV_FACTORY  # pylint: disable=protected-access
  return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__name__', factory)}"


# -------------------------------------------------------------------- Keras


def make_keras(spec: NetSpec, batch: dict) -> list[dict]:
  """train_on_batch and a custom tf.function step on the same model."""
  import keras
  import tensorflow as tf
  from keras import layers as kl

  def block(layer: tuple, x):
    kind = layer[0]
    if kind == "cmvn":
      return kl.Lambda(lambda t: (t - keras.ops.mean(t, axis=1, keepdims=True))
                       * keras.ops.rsqrt(keras.ops.var(t, axis=1, keepdims=True) + 1e-5))(x)
    if kind == "scale":
      return kl.Rescaling(1.0 / 255.0)(x)
    if kind == "affine":
      return kl.Rescaling(layer[1], offset=layer[2])(x)
    if kind == "opconv":
      q = layer[4]

      def powers(t):
        t = keras.ops.tanh(t)
        out = [t]
        for _ in range(q - 1):
          out.append(out[-1] * t)
        return keras.ops.concatenate(out, axis=-1)
      cls = {1: kl.Conv1D, 2: kl.Conv2D, 3: kl.Conv3D}[len(layer[2])]
      return cls(layer[1], layer[2], padding=layer[3])(kl.Lambda(powers)(x))
    if kind == "tanh":
      return kl.Activation("tanh")(x)
    if kind == "gap":
      cls = {2: kl.GlobalAveragePooling1D, 3: kl.GlobalAveragePooling2D,
             4: kl.GlobalAveragePooling3D}[len(x.shape) - 1]
      return cls()(x)
    if kind == "conv":
      cls = {1: kl.Conv1D, 2: kl.Conv2D, 3: kl.Conv3D}[len(layer[2])]
      return cls(layer[1], layer[2], padding=layer[3], activation="relu")(x)
    if kind == "pool":
      cls = {1: kl.MaxPooling1D, 2: kl.MaxPooling2D, 3: kl.MaxPooling3D}[len(layer[1])]
      return cls(layer[1], strides=layer[2], padding=layer[3])(x)
    if kind == "dropout":
      return kl.Dropout(layer[1])(x)
    if kind == "flatten":
      return kl.Flatten()(x)
    if kind == "dense":
      return kl.Dense(layer[1], activation="relu" if layer[2] else None)(x)
    raise ValueError(layer)

  def build():
    keras.utils.set_random_seed(0)
    inputs, outs = {}, []
    for b in spec.branches:
      x = inputs[b.key] = keras.Input(b.shape, dtype=b.dtype, name=b.key)
      for layer in b.layers:
        x = block(layer, x)
      outs.append(x)
    x = outs[0] if len(outs) == 1 else kl.Concatenate()(outs)
    for layer in spec.head:
      x = block(layer, x)
    return keras.Model(inputs, x)

  x = {b.key: batch[b.key] for b in spec.branches}
  y = batch["label"]
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  fit_model = build()
  fit_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)

  def run_fit(steps: int) -> None:
    for _ in range(steps):
      fit_model.train_on_batch(x, y)

  step_model = build()
  opt = keras.optimizers.Adam(1e-3)
  opt.build(step_model.trainable_variables)
  tx = {k: tf.constant(v) for k, v in x.items()}
  ty = tf.constant(y)

  @tf.function(jit_compile=False, autograph=False)  # No Python control flow.
  def tf_step(xb, yb):
    with tf.GradientTape() as tape:
      value = loss(yb, step_model(xb, training=True))
    grads = tape.gradient(value, step_model.trainable_variables)
    opt.apply(grads, step_model.trainable_variables)
    return value

  def run_step(steps: int) -> None:
    value = None
    for _ in range(steps):
      value = tf_step(tx, ty)
    value.numpy()

  params = int(sum(np.prod(v.shape) for v in fit_model.trainable_variables))
  return [{"name": "keras-fit", "run": run_fit, "params": params,
           "note": f"keras {keras.__version__} / TF {tf.__version__}: train_on_batch, "
                   f"jit_compile={fit_model.jit_compile}"},
          {"name": "keras-step", "run": run_step, "params": params,
           "note": "custom tf.function(jit_compile=False) GradientTape + Adam"}]


# ------------------------------------------------------------------ PyTorch


def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=unused-import
  except ImportError:
    return False
  return True


def make_torch(spec: NetSpec, batch: dict, device: str = "cpu") -> dict:
  import torch
  from torch import nn

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  if device == "cuda":  # jax's default f32 precision on GPU allows TF32; match it.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

  class Lambda(nn.Module):
    def __init__(self, fn):
      super().__init__()
      self.fn = fn

    def forward(self, x):
      return self.fn(x)

  def cmvn(t):  # Channels-first: time is the last axis.
    mean = t.mean(dim=-1, keepdim=True)
    return (t - mean) * torch.rsqrt(t.var(dim=-1, unbiased=False, keepdim=True) + 1e-5)

  def sequential(shape: tuple[int, ...], layers) -> tuple[nn.Module, tuple[int, ...]]:
    mods = []
    for layer in layers:
      kind, channels = layer[0], shape[-1]
      if kind == "cmvn":
        mods.append(Lambda(cmvn))
      elif kind == "scale":
        mods.append(Lambda(lambda t: t.float() / 255.0))
      elif kind == "affine":
        mods.append(Lambda(lambda t, a=layer[1], b=layer[2]: t.float() * a + b))
      elif kind == "opconv":
        q = layer[4]

        def powers(t, q=q):
          t = torch.tanh(t)
          out = [t]
          for _ in range(q - 1):
            out.append(out[-1] * t)
          return torch.cat(out, dim=1)  # Channels-first.
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(layer[2])]
        mods += [Lambda(powers), cls(channels * q, layer[1], layer[2], padding=layer[3])]
      elif kind == "tanh":
        mods.append(nn.Tanh())
      elif kind == "gap":
        mods.append(Lambda(lambda t: t.flatten(2).mean(-1)))
      elif kind == "conv":
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(layer[2])]
        mods += [cls(channels, layer[1], layer[2], padding=layer[3]), nn.ReLU()]
      elif kind == "pool":
        _, w, s, padding = layer
        if padding == "same" and any(ss != 1 or kk % 2 == 0 for kk, ss in zip(w, s)):
          raise ValueError(f"torch 'same' pooling only for odd windows, stride 1: {layer}")
        cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[len(w)]
        pad = tuple(kk // 2 for kk in w) if padding == "same" else 0
        mods.append(cls(w, s, padding=pad))
      elif kind == "dropout":
        mods.append(nn.Dropout(layer[1]))
      elif kind == "flatten":
        mods.append(nn.Flatten())
      elif kind == "dense":
        mods.append(nn.Linear(shape[0], layer[1]))
        if layer[2]:
          mods.append(nn.ReLU())
      shape = next_shape(shape, layer)
    return nn.Sequential(*mods), shape[0]

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      built = [sequential(b.shape, b.layers) for b in spec.branches]
      self.branches = nn.ModuleList([m for m, _ in built])
      self.head, _ = sequential((sum(w for _, w in built),), (("flatten",),) + spec.head)

    def forward(self, *xs):
      outs = [m(x) for m, x in zip(self.branches, xs)]
      return self.head(outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1))

  model = Net().to(device)
  model.train()
  try:
    opt, adam = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), "fused"
  except (RuntimeError, TypeError, ValueError):
    opt, adam = torch.optim.Adam(model.parameters(), lr=1e-3), "default"
  # Channels-first, torch's native layout, prepared outside the timed step.
  xs = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch[b.key], -1, 1))).to(device)
        for b in spec.branches]
  y = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
  loss_fn = nn.CrossEntropyLoss()

  def run(steps: int) -> None:
    for _ in range(steps):
      opt.zero_grad(set_to_none=True)
      loss_fn(model(*xs), y).backward()
      opt.step()
    if device == "cuda":  # Kernels are queued: wait for them, as jax's block_until_ready.
      torch.cuda.synchronize()

  return {"run": run, "params": int(sum(p.numel() for p in model.parameters())),
          "note": f"torch {torch.__version__} eager on {device}"
                  + (f", {torch.get_num_threads()} threads" if device == "cpu" else ", TF32 on")
                  + f", Adam {adam}"}


# ---------------------------------------------------------------- CPU peak


def cpu_peak() -> tuple[float, str]:
  """Peak fp32 FLOP/s of the CPUs this process may use, and how it was taken."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  try:
    info = open("/proc/cpuinfo", encoding="utf-8").read()
  except OSError:
    info = ""
  flags = set((re.search(r"^flags\s*:(.*)$", info, re.M) or [None, ""])[1].split())
  vendor = (re.search(r"^vendor_id\s*:\s*(\S+)", info, re.M) or [None, "?"])[1]
  family = int((re.search(r"^cpu family\s*:\s*(\d+)", info, re.M) or [None, "0"])[1])
  mhz = max([float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)] or [0.0])
  clock_src = "max 'cpu MHz' in /proc/cpuinfo"
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.M)
    if found and float(found.group(1)) > 0:
      mhz, clock_src = float(found.group(1)), "lscpu 'CPU max MHz'"
  except (OSError, subprocess.SubprocessError):
    pass
  if "avx512f" in flags and not (vendor == "AuthenticAMD" and family == 25):
    lanes, simd = 16, "avx512f"
  elif "avx512f" in flags:
    lanes, simd = 8, "avx512f on AMD family 25 (Zen 4: 512-bit ops as 2x256-bit)"
  elif "avx2" in flags and "fma" in flags:
    lanes, simd = 8, "avx2+fma"
  else:
    lanes, simd = 4, "sse"
  per_cycle = 2 * lanes * 2
  peak = cores * mhz * 1e6 * per_cycle
  how = (f"peak = {cores} cores x {mhz / 1000:.3f} GHz ({clock_src}) x {per_cycle} fp32 "
         f"FLOPs/cycle/core (2 FMA pipes x {lanes} lanes x 2; {simd}; {vendor} family "
         f"{family}) = {peak / 1e9:.1f} GFLOP/s")
  return peak, how


def gemm_flops(n: int = 2048, tries: int = 5) -> float:
  """Best fp32 FLOP/s of one jitted n^3 matmul: what this CPU attains now."""
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(tries):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


# -------------------------------------------------------------------- main


def make_batch(spec: NetSpec, batch_size: int) -> dict:
  rng = np.random.default_rng(0)
  batch = {}
  for b in spec.branches:
    shape = (batch_size, *b.shape)
    batch[b.key] = (rng.integers(0, 256, shape, dtype=np.uint8) if b.dtype == "uint8"
                    else rng.standard_normal(shape, dtype=np.float32))
  batch["label"] = rng.integers(0, spec.num_classes, (batch_size,), dtype=np.int32)
  return batch


def _build_runners(spec: NetSpec, batch: dict, fw: str, smoke: bool,
                   torch_device: str) -> list[dict]:
  """The timed runner(s) of one framework: Keras has two (fit and a custom step)."""
  start = time.perf_counter()
  if fw.startswith("jax"):  # jax-<impl>: set_conv_impl(<impl>) for that row.
    runners = [{"name": fw, **make_jax(spec, batch, smoke, fw[4:] if fw != "jax" else None)}]
  elif fw == "keras":
    runners = make_keras(spec, batch)
  else:
    runners = [{"name": "torch", **make_torch(spec, batch, torch_device)}]
  print(f"  built {fw} in {time.perf_counter() - start:.1f} s"
        + (f" (process {os.getpid()})" if multiprocessing.parent_process() else ""), flush=True)
  return runners


def _warm_up(runners: list[dict], steps: int) -> None:
  for r in runners:
    start = time.perf_counter()
    r["run"](steps)
    print(f"  warm-up {r['name']}: {steps} steps in {time.perf_counter() - start:.1f} s",
          flush=True)


def _round(runners: list[dict], steps: int, items: int) -> list[common.Measurement]:
  return [common.measure(r["name"], lambda r=r: r["run"](steps), items=items,
                         unit="examples", note=r["note"]) for r in runners]


def _public(runner: dict) -> dict:
  """What the parent reports of a runner (everything but the callable)."""
  return {k: v for k, v in runner.items() if k != "run"}


class _InProcess:
  """`--processes one`: every framework in this process, sharing its heap."""

  def __init__(self, spec, batch, fw, smoke, torch_device):
    self._runners = _build_runners(spec, batch, fw, smoke, torch_device)
    self.runners = [_public(r) for r in self._runners]

  def warm_up(self, steps: int) -> None:
    _warm_up(self._runners, steps)

  def round(self, steps: int, items: int) -> list[common.Measurement]:
    return _round(self._runners, steps, items)


def _framework_worker(conn, net: str, fw: str, batch_size: int, smoke: bool,
                      torch_device: str, host_memory: str) -> None:
  """A spawned process that owns one framework: builds it, then warms up or
  times rounds when the parent asks, so the rounds stay interleaved while each
  framework keeps its own heap, threads and allocator, as in a user's run."""
  try:
    if host_memory == "keep":  # Before the framework starts its threads.
      from avjax.ops import host_memory as hm  # pylint: disable=g-import-not-at-top
      hm.keep_freed_host_memory()
    spec = build_specs(smoke)[net]
    runners = _build_runners(spec, make_batch(spec, batch_size), fw, smoke, torch_device)
    conn.send(("built", [_public(r) for r in runners]))
    while True:
      command, steps, items = conn.recv()
      if command == "stop":
        return
      if command == "warmup":
        _warm_up(runners, steps)
        conn.send(("done", None))
      else:
        conn.send(("done", [dataclasses.asdict(m) for m in _round(runners, steps, items)]))
  except BaseException as e:  # pylint: disable=broad-except
    conn.send(("error", f"{fw} on {net} (process {os.getpid()}): {type(e).__name__}: {e}"))
    raise


class _FrameworkProcess:
  """`--processes per-framework` (the default): one spawned worker per framework."""

  def __init__(self, net, fw, batch_size, smoke, torch_device, host_memory):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_framework_worker, name=f"bench-{fw}", daemon=True,
                             args=(child, net, fw, batch_size, smoke, torch_device,
                                   host_memory))
    self.fw = fw

  def __enter__(self):
    self._proc.start()
    self.runners = self._reply()
    return self

  def __exit__(self, *exc):
    if self._proc.is_alive():
      with contextlib.suppress(OSError):
        self._conn.send(("stop", 0, 0))
      self._proc.join(60)
      if self._proc.is_alive():
        self._proc.kill()
    return False

  def _reply(self):
    try:
      kind, value = self._conn.recv()
    except EOFError:
      raise RuntimeError(f"the {self.fw} worker died (exit code "
                         f"{self._proc.exitcode}); its output is above") from None
    if kind == "error":
      raise RuntimeError(value)
    return value

  def warm_up(self, steps: int) -> None:
    self._conn.send(("warmup", steps, 0))
    self._reply()

  def round(self, steps: int, items: int) -> list[common.Measurement]:
    self._conn.send(("round", steps, items))
    return [common.Measurement(**m) for m in self._reply()]


def bench_net(spec: NetSpec, frameworks: Sequence[str], *, batch_size: int, steps: int,
              repeat: int, warmup: int, smoke: bool, peak: float, gemm: float,
              torch_device: str = "cpu", processes: str = "per-framework",
              host_memory: str = "keep") -> dict:
  batch = make_batch(spec, batch_size)
  params, macs = trace(spec)
  train_flops = 3 * 2 * macs * batch_size
  print(f"\n== {spec.name}: batch {batch_size}, inputs "
        + ", ".join(f"{b.key} {(batch_size, *b.shape)} {b.dtype}" for b in spec.branches)
        + f"; {steps} steps x {repeat} rounds after {warmup} warm-up steps", flush=True)
  with contextlib.ExitStack() as stack:
    if processes == "per-framework":
      groups = [stack.enter_context(_FrameworkProcess(
          spec.name, fw, batch_size, smoke, torch_device, host_memory)) for fw in frameworks]
    else:
      groups = [_InProcess(spec, batch, fw, smoke, torch_device) for fw in frameworks]
    runners = [r for g in groups for r in g.runners]
    for g in groups:  # Warm-up: Keras traces, torch allocates, heaps grow; jax is compiled.
      g.warm_up(warmup)
    ms: dict[str, common.Measurement] = {}
    for rnd in range(repeat):  # Interleaved: each round times every framework once.
      for g in groups:
        for m in g.round(steps, steps * batch_size):
          if m.name in ms:
            ms[m.name].extend(m)
          else:
            ms[m.name] = m
          print(f"  round {rnd + 1}/{repeat} {m.name}: {m.rate:.2f} examples/s", flush=True)

  print(f"\n{spec.name}: analytic params {params:,}; train FLOPs/step = 3 x 2 x "
        f"{macs:,} MACs x {batch_size} = {train_flops / 1e9:.2f} GFLOP")
  for r in runners:
    if "xla_flops" in r:
      print(f"  {r['name']}: XLA cost_analysis {r['xla_flops'] / 1e9:.2f} GFLOP/step "
            f"({r['xla_flops'] / train_flops:.2f}x analytic)")
  rows = []
  for r in runners:
    m = ms[r["name"]]
    rate = train_flops / m.median * steps
    rows.append((r["name"], f"{m.rate:.2f}", f"{m.median / steps:.4f}", len(m.times),
                 f"{r['params']:,}", f"{rate / 1e9:.1f}", f"{100 * rate / peak:.2f}%",
                 f"{100 * rate / gemm:.1f}%", f"{statistics.mean(m.load):.1f}",
                 r["note"] + (f"; +{r['unused_params']:,} params no gradient reaches"
                              if r.get("unused_params") else "")))
  common.print_table(rows, ["framework", "examples/s", "s/step", "rounds", "params",
                            "GFLOP/s", "MFU", "of GEMM", "load", "note"])
  counts = {r["name"]: r["params"] for r in runners}
  mismatched = {k: v for k, v in counts.items() if v != params}
  assert not mismatched, f"{spec.name}: parameter counts differ from {params:,}: {mismatched}"
  if spec.name == "fercnn" and not smoke:
    assert params == 152_614, params

  ratios = []
  keras_best = max((ms[k] for k in ("keras-fit", "keras-step") if k in ms),
                   key=lambda m: m.rate, default=None)
  want_keras, want_torch = TARGETS[spec.name]
  for jx in [f for f in FRAMEWORKS if f.startswith("jax")]:
    if jx not in ms:
      continue
    if keras_best is not None:
      ratios.append(common.ratio_line(
          ms[jx].rate / keras_best.rate,
          f"{spec.name} {jx} / {keras_best.name} examples/s", at_least=want_keras))
    if "torch" in ms:
      ratios.append(common.ratio_line(ms[jx].rate / ms["torch"].rate,
                                      f"{spec.name} {jx} / torch examples/s",
                                      at_least=want_torch))
  return {"net": spec.name, "batch_size": batch_size, "steps": steps, "params": params,
          "forward_macs_per_example": macs, "train_flops_per_step": train_flops,
          "param_counts": counts,
          "xla_flops": {r["name"]: r["xla_flops"] for r in runners if "xla_flops" in r},
          "measurements": [ms[r["name"]].to_json() for r in runners],
          "mfu": {r["name"]: train_flops * steps / ms[r["name"]].median / peak
                  for r in runners},
          "of_gemm": {r["name"]: train_flops * steps / ms[r["name"]].median / gemm
                      for r in runners},
          "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> dict:
  parser = common.base_parser(__doc__.split("\n\n")[0])
  parser.description = __doc__
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.add_argument("--nets", default=",".join(NETS), help="comma list of " + ", ".join(NETS))
  parser.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS),
                      help="comma list of " + ", ".join(FRAMEWORKS))
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per round (default: 3 for the S1 nets, 30 FERCNN)")
  parser.add_argument("--batch-size", type=int, default=None)
  parser.add_argument("--peak-gflops", type=float, default=None,
                      help="CPU peak fp32 GFLOP/s, instead of the /proc/cpuinfo estimate")
  parser.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where torch runs; auto: cuda when jax runs on a GPU and torch "
                           "sees one, so both frameworks use the same hardware")
  parser.add_argument("--host-memory", choices=("keep", "default"), default="keep",
                      help="keep: glibc reuses freed memory, as the avjax command sets it "
                           "(avjax/ops/host_memory.py); process-wide, so every framework "
                           "runs with it. default: glibc's own policy")
  parser.add_argument("--processes", choices=("per-framework", "one"), default="per-framework",
                      help="per-framework: each framework in its own spawned process (its "
                           "own heap, as a user's run has), rounds still interleaved by this "
                           "one; one: every framework in this process, sharing its heap")
  args = parser.parse_args(argv)
  from avjax.ops import host_memory  # pylint: disable=g-import-not-at-top
  # Before jax, TF or torch start threads (the arena limit binds only new ones).
  kept = args.host_memory == "keep" and host_memory.keep_freed_host_memory()
  nets = [n for n in args.nets.split(",") if n]
  frameworks = [f for f in args.frameworks.split(",") if f]
  bad = [n for n in nets if n not in NETS] + [f for f in frameworks if f not in FRAMEWORKS]
  if bad:
    parser.error(f"unknown nets/frameworks {bad}")
  if "torch" in frameworks and not torch_available():
    sys.exit("torch is not importable here. It is not an avjax dependency: run\n"
             "  bash benchmarks/torch_setup.sh\n"
             "  .venv-bench/bin/python -m benchmarks.train_step ...\n"
             "or leave it out: --frameworks jax,keras")
  smoke = args.smoke
  batch_size = args.batch_size or (4 if smoke else BATCH)
  repeat = args.repeat or (1 if smoke else 3)
  warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)

  import jax
  torch_device = args.torch_device
  if "torch" in frameworks and torch_device == "auto":
    import torch  # pylint: disable=g-import-not-at-top
    torch_device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() \
        else "cpu"
  peak, how = cpu_peak()
  gemm = gemm_flops(256 if smoke else 2048)
  if jax.default_backend() != "cpu" and not args.peak_gflops:
    # The CPU's peak says nothing about an accelerator: use the measured GEMM rate.
    peak, how = gemm, f"{jax.default_backend()}: peak = the measured GEMM rate below"
  if args.peak_gflops:
    peak, how = args.peak_gflops * 1e9, f"peak = {args.peak_gflops} GFLOP/s (--peak-gflops)"
  how += (f"\nmeasured: jax f32 GEMM {256 if smoke else 2048}^3, best of 5 = "
          f"{gemm / 1e9:.1f} GFLOP/s = {100 * gemm / peak:.0f}% of that peak"
          + (" (above 100%: the cores run faster than the clock read)" if gemm > peak else ""))
  print(f"train-step benchmark: jax {jax.__version__} ({jax.default_backend()}), "
        f"cpus={os.cpu_count()}, load={common.load_average():.1f}"
        + (f", torch on {torch_device}" if "torch" in frameworks else "")
        + f", host memory: {'kept (reused)' if kept else 'glibc default'}"
        + f", processes: {args.processes}"
        + ("  [SMOKE: numbers mean nothing]" if smoke else ""))
  print(how)
  specs = build_specs(smoke)
  payload = {"benchmark": "train_step", "smoke": smoke, "machine": common.machine(),
             "peak_flops": peak, "peak_how": how, "gemm_flops": gemm, "repeat": repeat, "warmup": warmup,
             "host_memory_kept": bool(kept), "processes": args.processes,
             "results": []}
  for name in nets:
    steps = args.steps or (1 if smoke else (3 if name in SLOW_NETS else 30))
    payload["results"].append(bench_net(
        specs[name], frameworks, batch_size=batch_size, steps=steps, repeat=repeat,
        warmup=warmup, smoke=smoke, peak=peak, gemm=gemm, torch_device=torch_device,
        processes=args.processes, host_memory=args.host_memory))
  payload["machine_end"] = common.machine()
  common.write_json(args.json, payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
