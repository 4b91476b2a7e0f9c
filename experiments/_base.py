"""Fields every experiment config shares, so a paper's file states only its choices.

Not a launchable config (no get_config). Experiment files import it as `import
_base`: `avjax.configs.load_config` puts this directory on the import path while
it loads a config file.

Conventions of every config in this directory:
  * `get_config(arg)` takes a comma list: one variant (e.g. `audio`, `video`,
    `fusion`) plus any of `smoke`, `demo` and a hardware name from HARDWARE.
  * `smoke` shrinks everything to run on a CPU in seconds (a few steps).
  * `small` narrows the networks so that they train for real (many epochs) on
    a CPU: the size `avjax results` uses on the synthetic corpus. It measures
    the pipeline and the protocols, not the papers' capacity.
  * `paper_accuracy` is the paper's reported number for this variant, and
    `paper_protocol` says how they measured it, for the results table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import ml_collections

HARDWARE = ("cpu", "gpu", "tpu_v3_8", "kaggle_tpu_v5e_8")
COMMON_FLAGS = ("smoke", "small", "demo", *HARDWARE)


def parse_args(arg: str | None, variants: Sequence[str], default: str,
               extra_flags: Iterable[str] = ()) -> tuple[str, set[str]]:
  """`'video,smoke'` -> ('video', {'smoke'}); unknown words raise ValueError."""
  words = [a.strip() for a in (arg or default).split(",") if a.strip()]
  allowed = set(variants) | set(COMMON_FLAGS) | set(extra_flags)
  unknown = [w for w in words if w not in allowed]
  if unknown:
    raise ValueError(f"unknown arguments {unknown}; expected one of {tuple(variants)} "
                     f"plus any of {'/'.join((*COMMON_FLAGS, *extra_flags))}")
  chosen = [w for w in words if w in variants]
  if not chosen:
    chosen = [default]
  if len(chosen) != 1:
    raise ValueError(f"name exactly one of {tuple(variants)}, got {chosen}")
  return chosen[0], {w for w in words if w not in variants}


def base_config(*, num_epochs: float, batch_size: int = 32,
                learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
  """The trainer's whole schema with neutral defaults (see avjax/train/trainer.py)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.system = ""  # e.g. "S1 Sultana 2024", for the results table.
  c.paper_accuracy = -1.0  # Their reported accuracy (%), -1 when none.
  c.paper_protocol = ""

  c.model = ml_collections.ConfigDict()
  # Convolution implementation: 'auto' takes the fast CPU formulation on CPU and
  # plain XLA convolutions on TPU/GPU; 'xla' or 'cpu' force one. 'onednn' (CPU
  # only, opt-in) runs them in TensorFlow's oneDNN kernels: ~1.4-1.8x faster
  # steps for the S1 Conv3D nets, slower for small convs (benchmarks/README.md).
  c.model.conv_impl = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ravdess"
  c.data.data_dir = ""  # Empty: the TFDS default (~/tensorflow_datasets).
  c.data.feature_set = ""
  c.data.feature_sets = ()  # Extra feature sets joined by take (multimodal systems).
  c.data.protocol = "ravdess_6fold"
  c.data.fold = 0
  c.data.k = 5  # Folds of the `actor_kfold` protocol (synthetic corpus).
  c.data.allow_leaky = False
  c.data.eval_splits = ("val", "test")
  c.data.keys = ()  # Empty: the model's inputs.
  c.data.worker_count = 0
  c.data.augment = ml_collections.ConfigDict()

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "cross_entropy"
  c.loss.label_smoothing = 0.0
  c.loss.weights = ml_collections.FieldReference(None, field_type=dict)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.momentum = 0.9  # sgd only.
  c.optimizer.weight_decay = 0.0  # adamw / sgd.
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip_norm = 0.0  # 0: off.
  c.optimizer.reduce_on_plateau = ml_collections.ConfigDict(
      {"enabled": False, "patience": 3, "factor": 0.5, "cooldown": 0,
       "accumulation_size": 0})  # 0: one epoch of steps.

  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = batch_size
  c.train.num_train_steps = -1  # -1: from num_epochs.
  c.train.num_epochs = float(num_epochs)
  c.train.log_every_steps = 20
  c.train.eval_every_steps = 0  # 0: once per epoch.
  c.train.checkpoint_every_steps = 0  # 0: with every eval (so best-by-metric works).
  c.train.keep_checkpoints = 2
  c.train.best_metric = "val/uar"
  c.train.best_mode = "max"
  c.train.async_checkpointing = True
  c.train.compute_dtype = "float32"
  # Moving average of the parameters, evaluated and exported in their place
  # (0: off; 0.99 averages over roughly the last 100 steps).
  c.train.ema_decay = 0.0
  # Top-level parameter subtrees that are not updated (e.g. the pretrained
  # branches of a two-stage fusion net).
  c.train.frozen = ()

  # Two-stage systems: branch name -> {workdir, config}. A branch whose workdir is
  # empty is trained on the fly into <workdir>/branch_<name> with the same data,
  # protocol and fold; its best checkpoint initialises params[<name>].
  c.pretrained = ml_collections.ConfigDict()
  # Non-empty: branches trained on the fly go to <branch_cache>/<model>-<hash of
  # their config>, shared by every run with the same branch and fold.
  c.branch_cache = ""

  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
  c.multihost = False
  return c


def use_branches(c: ml_collections.ConfigDict,
                 branches: dict[str, ml_collections.ConfigDict],
                 seed_offsets: dict[str, int] | None = None) -> None:
  """Wires a two-stage system from its branches' own full configs: the fusion
  model's `branches` are their model sections, its inputs and feature sets are
  theirs, the branches are frozen, and each config is kept under `pretrained` so
  the branch can be trained on the fly (see avjax/train/stages.py). A branch
  trains with the run's seed plus its `seed_offset` (0 unless given): an
  ensemble's members are the same config with different offsets."""
  names = sorted(branches)
  c.model.branches = ml_collections.ConfigDict(
      {m: {k: v for k, v in branches[m].model.to_dict().items() if k != "conv_impl"}
       for m in names})
  c.model.inputs = tuple(dict.fromkeys(k for m in names for k in branches[m].model.inputs))
  sets = list(dict.fromkeys(branches[m].data.feature_set for m in names))
  c.data.feature_set, c.data.feature_sets = sets[0], tuple(sets[1:])
  c.train.frozen = tuple(names)
  for m in names:
    c.pretrained[m] = ml_collections.ConfigDict(
        {"workdir": "", "config": branches[m],
         "seed_offset": int((seed_offsets or {}).get(m, 0))})


def apply_hardware(c: ml_collections.ConfigDict, flags: set[str]) -> None:
  """Hardware variants override only what differs."""
  if "cpu" in flags:
    c.data.worker_count = 0
  if "gpu" in flags:
    c.data.worker_count = 4
  if "tpu_v3_8" in flags or "kaggle_tpu_v5e_8" in flags:
    # bf16 compute with f32 parameters; one Grain worker per core.
    c.train.compute_dtype = "bfloat16"
    c.data.worker_count = 8


def apply_demo_train(c: ml_collections.ConfigDict) -> None:
  """`demo`: the paper's network, a few epochs on the small synthetic corpus."""
  c.train.global_batch_size = 16
  c.train.log_every_steps = 5
  c.train.keep_checkpoints = 1


def apply_small_train(c: ml_collections.ConfigDict, num_epochs: float = 20.0) -> None:
  """`small`: CPU-sized networks trained for real on the synthetic corpus."""
  c.train.global_batch_size = 16
  c.train.num_epochs = float(num_epochs)
  c.train.log_every_steps = 10
  c.train.keep_checkpoints = 1


def apply_smoke_train(c: ml_collections.ConfigDict, steps: int = 6) -> None:
  """`smoke`: a handful of steps, every code path (eval, checkpoint) taken."""
  c.train.global_batch_size = 8
  c.train.num_train_steps = steps
  c.train.log_every_steps = 2
  c.train.eval_every_steps = max(steps // 2, 1)
  c.train.checkpoint_every_steps = max(steps // 2, 1)
  c.train.keep_checkpoints = 1
  c.train.async_checkpointing = False
