"""Cost of one order-Q operational (Self-ONN) conv against Q plain convolutions.

The layer computes sum_q conv(W_q, tanh(x)^q) as ONE convolution over the
power-major concat [t, t^2, ..., t^Q]. This times forward + backward (grads for
the input and the kernel) of that layer against the same sum done as Q separate
plain convolutions, and against one plain convolution, in one run, alternating
the candidates so all see the same machine load.

  python benchmarks/operational.py                  # 2D 64x64x32 -> 32, k3, batch 16, Q=3
  python benchmarks/operational.py --impl xla       # plain XLA convs (TPU/GPU path)
  python benchmarks/operational.py --impl onednn    # TF oneDNN kernels via pure_callback
  python benchmarks/operational.py --smoke
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

from avjax.layers import OperationalConv, conv_nd  # noqa: E402
from avjax.layers import conv as conv_lib  # noqa: E402


def _loss_fns(q: int, c: int, impl: str):
  layer = OperationalConv(c, (3, 3), q_order=q, impl=impl)

  def one_layer(params, x):
    return jnp.sum(layer.apply(params, x) ** 2)

  def q_convs(params, x):
    # Same math, Q separate convolutions over the power slices of the kernel.
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    t = jnp.tanh(x)
    cin = x.shape[-1]
    y = bias
    tq = t
    for i in range(q):
      if i:
        tq = tq * t
      y = y + conv_nd(tq, kernel[..., i * cin:(i + 1) * cin, :], impl=impl)
    return jnp.sum(y ** 2)

  def plain(params, x):
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    return jnp.sum((conv_nd(x, kernel[..., :x.shape[-1], :], impl=impl) + bias) ** 2)

  grad = lambda f: jax.jit(jax.grad(f, argnums=(0, 1)))
  return layer, {"order-Q layer (one conv)": grad(one_layer),
                 "Q plain convs summed": grad(q_convs),
                 "one plain conv": grad(plain)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--q", type=int, default=3)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=32)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--impl", default="auto", choices=conv_lib.IMPLS)
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.size, args.channels, args.reps = 2, 8, 4, 1

  c = args.channels
  x = jnp.asarray(np.random.default_rng(0).standard_normal(
      (args.batch, args.size, args.size, c), np.float32))
  layer, fns = _loss_fns(args.q, c, args.impl)
  params = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, impl {args.impl}; "
        f"2D {args.size}x{args.size}x{c} -> {c}, k3, batch {args.batch}, Q={args.q}, "
        f"fwd+bwd", flush=True)
  for fn in fns.values():
    jax.block_until_ready(fn(params, x))
  times = {name: [] for name in fns}
  for _ in range(args.reps):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(params, x))
      times[name].append(time.perf_counter() - t)
  best = {name: min(ts) for name, ts in times.items()}
  for name, t in best.items():
    print(f"  {name:26s} {t * 1e3:9.2f} ms", flush=True)
  one, qs, plain = best.values()
  print(f"  ratio order-Q layer / Q plain convs: {one / qs:.2f}", flush=True)
  print(f"  ratio order-Q layer / one plain conv: {one / plain:.2f} (Q={args.q})", flush=True)


if __name__ == "__main__":
  main()
