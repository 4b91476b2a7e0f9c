"""Loader throughput: prepared ArrayRecord -> host batches, against what a CPU
train step of the S1 fusion net consumes.

    python -m benchmarks.loader_throughput [--data-dir DATA] [--batches 50] [--json OUT]

The loader is `create_datasets(...).train` over the `mfcc` and
`frames3d_gray_80x70x30` feature sets joined by take (keys `mfcc`, `mfcc_mask`,
`frames3d`, as S1's fusion net reads them), batch 32. The consumer is one jitted
train step (forward, backward, Adam via optax) of the S1 fusion net at batch 32 on
CPU: the registered `sultana_audio` and `sultana_video` nets, their 64-wide
embeddings concatenated, Dense 128 ReLU, Dense 8 (SYSTEMS.md, S1). The ratio
loader_examples_per_s / train_step_examples_per_s says how far ahead of the
model the loader is (target: >= 20x), i.e. whether input can ever be the
bottleneck of an S1 run on this machine.

Preparing the data is not timed. Without --data-dir a synthetic corpus is
generated and prepared with avjax in a temp dir first.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The consumer is a CPU train step.

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

DATASET = "ravdess"
FEATURE_SETS = ("mfcc", "frames3d_gray_80x70x30")
KEYS = ("mfcc", "mfcc_mask", "frames3d")
NUM_CLASSES = 8


# ---------------------------------------------------------------------- data


def ensure_prepared(data_dir: str | None, work: str, actors: int, per_emotion: int,
                    corpus: str | None) -> str:
  """Prepared data for both feature sets: the given dir, or a fresh one."""
  from input_pipeline.prepare import prepare, prepared_path
  from input_pipeline.errors import InputError
  if data_dir is not None:
    for fs in FEATURE_SETS:
      prepared_path(data_dir, DATASET, fs)  # Raises with the prepare command if absent.
    return data_dir
  if corpus is None:
    from input_pipeline.synth import generate_corpus
    corpus = os.path.join(work, "corpus")
    generate_corpus(corpus, actors=actors, clips_per_emotion=per_emotion, seed=0,
                    progress=False)
  data_dir = os.path.join(work, "data")
  for fs in FEATURE_SETS:
    report = prepare(DATASET, corpus, data_dir, fs, progress=False)
    if report.prepared == 0:
      raise InputError(corpus, f"nothing prepared for {fs}")
  return data_dir


def data_config(data_dir: str, batch_size: int, worker_count: int):
  """actor_kfold (k=2) when there are two actors or more; otherwise the leaky clip
  split, which only matters here because it still gives a training set."""
  import ml_collections

  from input_pipeline.loader import open_prepared
  from input_pipeline.builders.base import actor_of_split
  builder = open_prepared(data_dir, DATASET, FEATURE_SETS[0])
  actors = {actor_of_split(s) for s, info in builder.info.splits.items()
            if info.num_examples > 0}
  base = dict(dataset=DATASET, data_dir=data_dir, feature_sets=FEATURE_SETS, keys=KEYS,
              fold=0, worker_count=worker_count, eval_splits=())
  if len(actors) >= 2:
    base.update(protocol="actor_kfold", k=2, allow_leaky=False)
  else:
    base.update(protocol="random_clip", allow_leaky=True)
  return ml_collections.ConfigDict(base)


# --------------------------------------------------------------------- model


def fusion_model(smoke: bool):
  """S1 fusion net from the registered S1 branch nets (a registered fusion model
  is used when avjax has one)."""
  small = dict(features=(4, 4, 4, 4)) if smoke else {}
  source = "registered feature_concat_fusion over sultana_audio + sultana_video"
  if smoke:
    source += " [SMOKE: video widths 4,4,4,4]"
  return common.s1_fusion({}, small, NUM_CLASSES), source


def make_train_step(model, batch: dict):
  """Initialised params and a jitted forward + backward + Adam step."""
  import jax
  import optax

  inputs = {k: batch[k] for k in KEYS}
  params = model.init(jax.random.PRNGKey(0), inputs, train=False)["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def loss_fn(p, b, rng):
    out = model.apply({"params": p}, {k: b[k] for k in KEYS}, train=True,
                      rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(out["logits"], b["label"]).mean()

  @jax.jit
  def step(p, o, b, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, b, rng)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  state = {"params": params, "opt": opt_state, "rng": jax.random.PRNGKey(1)}

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], batch,
                                               state["rng"])
    loss.block_until_ready()

  return run


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict:
  parser = common.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--data-dir", help="prepared data with ravdess/mfcc and "
                                         "ravdess/frames3d_gray_80x70x30")
  parser.add_argument("--corpus", help="corpus to prepare when --data-dir is not given")
  parser.add_argument("--actors", type=int, default=None)
  parser.add_argument("--clips-per-emotion", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=None)
  parser.add_argument("--batches", type=int, default=None, help="loader batches per run")
  parser.add_argument("--steps", type=int, default=None, help="train steps per run")
  parser.add_argument("--worker-count", type=int, default=0,
                      help="Grain worker processes (0: the loader's default)")
  args = parser.parse_args(argv)
  smoke = args.smoke
  batch_size = args.batch_size or (1 if smoke else 32)
  batches = args.batches or (2 if smoke else 50)
  steps = args.steps or 1
  repeat = args.repeat or (1 if smoke else 3)
  warmup = args.warmup if args.warmup is not None else 1

  import jax

  from input_pipeline.loader import create_datasets

  payload = {"benchmark": "loader_throughput", "smoke": smoke, "machine": common.machine(),
             "batch_size": batch_size, "repeat": repeat, "warmup": warmup}
  with tempfile.TemporaryDirectory(prefix="avjax-bench-") as work:
    data_dir = ensure_prepared(args.data_dir, work, args.actors or (1 if smoke else 4),
                               args.clips_per_emotion or (1 if smoke else 2), args.corpus)
    cfg = data_config(data_dir, batch_size, args.worker_count)
    ds = create_datasets(cfg, global_batch_size=batch_size, seed=0)
    it = iter(ds.train)
    print(f"timing the loader: {repeat} x {batches} batches of {batch_size}", flush=True)

    def load():
      for _ in range(batches):
        next(it)

    loader = common.measure(
        "grain loader", load, items=batches * batch_size, unit="examples", repeat=repeat,
        warmup=warmup, warmup_fn=lambda: next(it),
        note=f"{cfg.protocol}, {ds.info.num_examples['train']} train examples, "
             f"worker_count={args.worker_count}")

    batch = next(it)
    model, source = fusion_model(smoke)
    step = make_train_step(model, batch)
    print(f"timing the train step: {repeat} x {steps} steps after compiling ({source})",
          flush=True)
    trainer = common.measure(
        "S1 fusion train step", lambda: [step() for _ in range(steps)],
        items=steps * batch_size, unit="examples", repeat=repeat, warmup=max(1, warmup),
        warmup_fn=step, note=f"jit fwd+bwd+Adam, {jax.default_backend()}")

    print(f"loader throughput benchmark: batch {batch_size}, keys {', '.join(KEYS)}, "
          f"cpus={os.cpu_count()}, load={common.load_average():.1f}"
          + ("  [SMOKE: numbers mean nothing]" if smoke else ""))
    print(f"model: {source}")
    common.measurement_table([loader, trainer])
    ratio = common.ratio_line(loader.rate / trainer.rate,
                              "loader_examples_per_s / train_step_examples_per_s "
                              "[S1 fusion, batch %d]" % batch_size, at_least=20.0)
    payload.update(model=source, data=cfg.to_dict(),
                   measurements=[loader.to_json(), trainer.to_json()], ratios=[ratio])
  payload["machine_end"] = common.machine()
  common.write_json(args.json, payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
