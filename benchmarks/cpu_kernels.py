"""Each CPU FFI kernel (hydrajax/models/ops/cpu_kernels.cc) against its XLA twin, alone.

At the shapes where they matter (inference 1x480x640, training batch 4 at 256x256), times
the forward and the forward+backward of: the CRP max-pool (the xla_cpu form's `max_pool_5x5`),
crp1 (`crp_depthwise`, forward only: training keeps the XLA chain's VJP) and
the 3x3 depthwise conv (`depthwise_conv`, strides 1 and 2). Calls of the two forms
alternate in one process; medians and minimums of `--runs` calls each. The whole-network
effect is what `compare.py`'s `jax` vs `jax_xla` variants measure.

  python benchmarks/cpu_kernels.py        # prints a table, writes results/cpu_kernels.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hydrajax.models.ops import ffi, ffi_build, xla_cpu  # noqa: E402


def _vjp(f):
  """x, *rest, g -> the cotangents of f(x, *rest) for g (all of them, as one tuple)."""
  return lambda *a: jax.vjp(f, *a[:-1])[1](a[-1])


def cases():
  """(name, shape, stride, kernel form, XLA form, backward too)."""
  for shape in [(1, 120, 160, 256), (4, 64, 64, 256)]:
    yield "max_pool_5x5", shape, 1, ffi.max_pool_5x5, xla_cpu.max_pool_5x5, True
    yield "crp1", shape, 1, ffi.crp_depthwise, xla_cpu.crp_depthwise, False
  for shape, s in [((4, 64, 64, 144), 1), ((4, 128, 128, 96), 2), ((1, 240, 320, 32), 1),
                   ((1, 240, 320, 96), 2)]:
    kernel = lambda x, k, s=s: ffi.depthwise_conv(x, k, stride=s)
    xla = lambda x, k, s=s: xla_cpu.depthwise_conv(x, k, stride=s)
    yield "depthwise3x3", shape, s, kernel, xla, True


def time_pair(fa, fb, args, runs: int) -> tuple[list[float], list[float]]:
  jax.block_until_ready((fa(*args), fb(*args)))
  ta, tb = [], []
  for i in range(runs):
    for f, t in ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta)):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      t.append((time.perf_counter() - t0) * 1e3)
  return ta, tb


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--runs", type=int, default=30)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cpu_kernels.json"))
  args = p.parse_args(argv)
  if not ffi_build.available():
    print("the CPU kernels are not available here (see the warning above)")
    return 1
  rng = np.random.default_rng(0)
  rows = []
  print(f"{'kernel':14} {'shape':18} {'s':>2} {'pass':8} {'kernel ms':>16} {'XLA ms':>16} "
        f"{'XLA/kernel':>10}")
  for name, shape, s, fk, fx, backward in cases():
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    extra = ([jnp.asarray(rng.standard_normal((4, shape[-1])), jnp.float32)] if name == "crp1"
             else [jnp.asarray(rng.standard_normal((3, 3, 1, shape[-1])), jnp.float32)]
             if name == "depthwise3x3" else [])
    passes = [("forward", jax.jit(fk), jax.jit(fx), [x, *extra])]
    if backward:
      g = jnp.asarray(rng.standard_normal(jax.eval_shape(fx, x, *extra).shape), jnp.float32)
      passes.append(("fwd+bwd", jax.jit(_vjp(fk)), jax.jit(_vjp(fx)), [x, *extra, g]))
    for label, jk, jx, a in passes:
      tk, tx = time_pair(jk, jx, a, args.runs)
      row = {"kernel": name, "shape": list(shape), "stride": s, "pass": label,
             "kernel_median_ms": float(np.median(tk)), "kernel_min_ms": float(np.min(tk)),
             "xla_median_ms": float(np.median(tx)), "xla_min_ms": float(np.min(tx))}
      rows.append(row)
      print(f"{name:14} {str(tuple(shape)):18} {s:2d} {label:8} "
            f"{row['kernel_median_ms']:7.2f} ({row['kernel_min_ms']:6.2f}) "
            f"{row['xla_median_ms']:7.2f} ({row['xla_min_ms']:6.2f}) "
            f"{row['xla_median_ms'] / row['kernel_median_ms']:9.1f}x")
  from hydrajax.runtime import atomic
  report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": args.runs, "rows": rows,
            "jax": jax.__version__, "cpu": ffi_build.cpu_id()[:300]}
  atomic.write_bytes_atomic(args.out, (json.dumps(report, indent=1) + "\n").encode())
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
