"""Per-op convolution timings: plain XLA against avjax's CPU path, one run.

For each conv layer of the S1 video net (Conv3D 16, 16, pool, 32, 32 on
30x80x70x1 clips), of the S5 ONN (`--net onn`: its Conv2D layers over the Q=3
power channels) and of FERCNN (Conv1D 256/128/64/64/32, k3, VALID on a
162-long vector), times forward, input gradient (dgrad) and weight gradient
(wgrad) with `impl='xla'` and `impl='cpu'`, alternating the two so both see the
same machine load, and prints xla/cpu ratios (>1: the CPU path is faster).
`--variants` also times formulations we tried and did not pick; `--onednn`
adds a column for impl='onednn' (oneDNN called as an XLA custom call,
avjax/ops) and, per layer, fwd+dgrad+wgrad of 'cpu' against 'onednn' and what
'auto' picks: the measurements behind avjax.layers.conv.cpu_auto_impl.

  python benchmarks/conv_ops.py                 # batch 32, both nets
  python benchmarks/conv_ops.py --net video --batch 8 --variants
  python benchmarks/conv_ops.py --net all --batch 32 --onednn --no-xla --reps 2
  python benchmarks/conv_ops.py --smoke         # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avjax.layers import conv as conv_lib  # noqa: E402

# (name, input shape without batch, kernel, out channels, padding)
VIDEO = [
    ("conv3d 1->16", (30, 80, 70, 1), (3, 3, 3), 16, "SAME"),
    ("conv3d 16->16", (30, 80, 70, 16), (3, 3, 3), 16, "SAME"),
    ("conv3d 16->32", (15, 40, 35, 16), (3, 3, 3), 32, "SAME"),
    ("conv3d 32->32", (15, 40, 35, 32), (3, 3, 3), 32, "SAME"),
]
# S1 audio net (sultana_audio defaults): Conv1D k5 SAME on mfcc (180, 20), pool 2.
AUDIO = [
    ("conv1d 20->64", (180, 20), (5,), 64, "SAME"),
    ("conv1d 64->128", (90, 64), (5,), 128, "SAME"),
    ("conv1d 128->128", (45, 128), (5,), 128, "SAME"),
]
FERCNN = [
    ("conv1d 1->256", (162, 1), (3,), 256, "VALID"),
    ("conv1d 256->128", (53, 256), (3,), 128, "VALID"),
    ("conv1d 128->64", (17, 128), (3,), 64, "VALID"),
    ("conv1d 64->64", (5, 64), (3,), 64, "VALID"),
    ("conv1d 64->32", (3, 64), (3,), 32, "VALID"),
]
# S5 ONN (akturk_onn defaults): the operational convs, channels = Q * C with Q=3.
ONN = [
    ("onn key 9->16", (96, 96, 9), (3, 3), 16, "SAME"),
    ("onn key 48->32", (48, 48, 48), (3, 3), 32, "SAME"),
    ("onn key 96->64", (24, 24, 96), (3, 3), 64, "SAME"),
    ("onn mel 3->16", (128, 128, 3), (3, 3), 16, "SAME"),
    ("onn mel 48->32", (64, 64, 48), (3, 3), 32, "SAME"),
    ("onn mel 96->64", (32, 32, 96), (3, 3), 64, "SAME"),
]
SMOKE = [
    ("smoke conv3d", (4, 6, 5, 2), (3, 3, 3), 3, "SAME"),
    ("smoke conv1d", (12, 2), (3,), 3, "VALID"),
]


def _passes(impl: str, padding: str):
  def fwd(x, w, g):
    return conv_lib.conv_nd(x, w, 1, padding, 1, impl=impl)

  def dgrad(x, w, g):
    return jax.vjp(lambda x_: conv_lib.conv_nd(x_, w, 1, padding, 1, impl=impl), x)[1](g)[0]

  def wgrad(x, w, g):
    return jax.vjp(lambda w_: conv_lib.conv_nd(x, w_, 1, padding, 1, impl=impl), w)[1](g)[0]
  return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}


def _variants(ksize, padding):
  """Formulations tried and not picked (timed with --variants): the CPU path
  with its forward (so also its input gradient) or weight gradient forced."""
  n = len(ksize)
  out = {}
  for method in ("xla", "shift", "im2col"):
    if method == "shift" and n != 3:
      continue
    out[f"forward={method}"] = ("fwd", {"_CPU_FORWARD": {n: method}})
    out[f"dgrad with forward={method}"] = ("dgrad", {"_CPU_FORWARD": {n: method}})
  out["wgrad=xla (XLA's derived conv)"] = ("wgrad", {"_CPU_WGRAD": {n: "xla"}})
  if n == 3:
    out["wgrad=XLA-derived from depth-shift form"] = (
        "wgrad", {"_CPU_WGRAD": {n: "xla"}, "_XLA_VALID_IS_SHIFT": True})
  return out


def _with_settings(settings, fn):
  """Calls fn with conv_lib's plan dicts temporarily updated (trace time)."""
  def run(*args):
    saved = {}
    for name, value in settings.items():
      if name == "_XLA_VALID_IS_SHIFT":
        saved[name] = conv_lib._xla_valid
        shift, plain = conv_lib._shift_valid, conv_lib._xla_valid
        conv_lib._xla_valid = lambda x, w, *a: (shift if w.ndim == 5 else plain)(x, w, *a)
      else:
        saved[name] = dict(getattr(conv_lib, name))
        getattr(conv_lib, name).update(value)
    try:
      return jax.block_until_ready(fn(*args))
    finally:
      for name, value in saved.items():
        if name == "_XLA_VALID_IS_SHIFT":
          conv_lib._xla_valid = value
        else:
          getattr(conv_lib, name).clear()
          getattr(conv_lib, name).update(value)
  return run


def _timeit(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile + warm
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def bench_layer(name, in_shape, ksize, out_ch, padding, batch, reps, variants, onednn=False,
                xla_column=True):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, *in_shape), np.float32))
  w = jnp.asarray(rng.standard_normal((*ksize, in_shape[-1], out_ch), np.float32) * 0.1)
  y_shape = jax.eval_shape(lambda a, b: conv_lib.conv_nd(a, b, 1, padding, 1, impl="xla"),
                           x, w).shape
  g = jnp.asarray(rng.standard_normal(y_shape, np.float32))
  xla, cpu = _passes("xla", padding), _passes("cpu", padding)
  dnn = _passes("onednn", padding) if onednn else None
  rows = []
  for op in ("fwd", "dgrad", "wgrad"):
    fx, fc = jax.jit(xla[op]), jax.jit(cpu[op])
    fns = [fx, fc] + ([jax.jit(dnn[op])] if dnn else [])
    if not xla_column:  # --no-xla: plain XLA takes 5-20 s per 3D pass at batch 32.
      fns[0] = None
    for f in fns:
      if f is not None:
        jax.block_until_ready(f(x, w, g))
    ts = [[float("nan")] for _ in fns]
    for _ in range(reps):  # alternate blocks so all see the same load
      for f, t in zip(fns, ts):
        if f is not None:
          t.append(_timeit(f, (x, w, g), 2))
    tx, tc = (min(t[1:]) if len(t) > 1 else t[0] for t in ts[:2])
    td = min(ts[2][1:]) if dnn else float("nan")
    rows.append((op, tx, tc, td))
    extra = (f"   onednn {td * 1e3:9.2f} ms  cpu/onednn {tc / td:5.2f}x" if dnn else "")
    print(f"  {name:18s} {op:6s} xla {tx * 1e3:9.2f} ms   cpu-path {tc * 1e3:9.2f} ms"
          f"   xla/cpu {tx / tc:5.2f}x{extra}", flush=True)
  if dnn:
    total = [sum(r[i] for r in rows) for i in (2, 3)]
    auto = conv_lib.cpu_auto_impl(x.shape, w.shape, (1,) * len(ksize), x.dtype)
    print(f"  {name:18s} all3   cpu-path {total[0] * 1e3:9.2f} ms   onednn "
          f"{total[1] * 1e3:9.2f} ms   cpu/onednn {total[0] / total[1]:5.2f}x   "
          f"auto picks {auto}", flush=True)
  if variants:
    for vname, (op, settings) in _variants(ksize, padding).items():
      base = dict((r[0], r[1]) for r in rows)[op]
      # A fresh function per variant: jit caches traces by function identity.
      fn = jax.jit(_passes("cpu", padding)[op])
      _with_settings(settings, fn)(x, w, g)  # traced and compiled with the settings
      tv = _timeit(fn, (x, w, g), reps)
      print(f"  {name:18s} {op:6s} variant '{vname}': {tv * 1e3:9.2f} ms"
            f"   xla/variant {base / tv:5.2f}x", flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--net", choices=("video", "audio", "fercnn", "onn", "both", "all"),
                      default="both", help="'both': video and fercnn")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--variants", action="store_true",
                      help="also time the formulations we tried and did not pick")
  parser.add_argument("--onednn", action="store_true",
                      help="also time impl='onednn' (oneDNN as XLA custom calls, avjax/ops)")
  parser.add_argument("--no-xla", action="store_true",
                      help="skip plain XLA (with --onednn: just 'cpu' against 'onednn')")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 rep")
  args = parser.parse_args(argv)

  if args.smoke:
    nets = {"smoke": SMOKE}
    args.batch, args.reps = 2, 1
  else:
    nets = {k: v for k, v in (("video", VIDEO), ("audio", AUDIO), ("fercnn", FERCNN),
                              ("onn", ONN))
            if args.net in (k, "all") or (args.net == "both" and k in ("video", "fercnn"))}
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}, batch {args.batch}", flush=True)
  for net, layers in nets.items():
    print(f"{net}:", flush=True)
    totals = {"xla": 0.0, "cpu": 0.0, "onednn": 0.0}
    for layer in layers:
      for op, tx, tc, td in bench_layer(*layer, args.batch, args.reps, args.variants,
                                        args.onednn, not args.no_xla):
        totals["xla"] += tx
        totals["cpu"] += tc
        totals["onednn"] += td
    extra = (f", onednn {totals['onednn']:.3f} s, cpu/onednn "
             f"{totals['cpu'] / totals['onednn']:.2f}x" if args.onednn else "")
    print(f"  {net} all layers, fwd+dgrad+wgrad: xla {totals['xla']:.3f} s, cpu-path "
          f"{totals['cpu']:.3f} s, xla/cpu {totals['xla'] / totals['cpu']:.2f}x{extra}",
          flush=True)


if __name__ == "__main__":
  main()
