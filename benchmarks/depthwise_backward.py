"""Why the training step's depthwise layers cost what they do on XLA:CPU (issue 6's limit).

The 3x3 depthwise conv is written as 9 shifted slices times per-channel weights
(hydrajax.models.layers.DepthwiseConv). Its kernel gradient needs 9 reductions
sum(shifted x * g) over (N, H, W). This script times, at the shapes of the big training
layers (batch 4, 256x256 input), the pieces that decide the cost:

  - `contiguous`: one reduction of x * g, the fast case (what 9 taps would cost ideally);
  - `sliced`: the same reduction reading a shifted slice (what XLA emits when the shifted
    copy is not materialised);
  - `materialise`: writing one shifted, zero-padded copy (what XLA does instead);
  - and the whole layer's forward; its forward+backward with hydrajax's own backward
    (layers.depthwise_shifts, the module's cpu form), and via autodiff of the slices
    (what it replaced).

  python benchmarks/depthwise_backward.py      # prints a table, writes results/depthwise_backward.json
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from hydrajax.models import layers

SHAPES = [(4, 64, 64, 144), (4, 128, 128, 32), (4, 32, 32, 192), (4, 16, 16, 576)]


def median_ms(fn, *args, runs: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times) * 1e3)


def main() -> None:
  rng = np.random.default_rng(0)
  model = layers.DepthwiseConv(3, 1)
  rows = []
  for shape in SHAPES:
    c = shape[-1]
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    params = model.init(jax.random.key(0), x)

    def loss(p, x):
      y = model.apply(p, x)
      return jnp.sum(y * g)

    row = {
        "shape": list(shape),
        "contiguous_reduction_ms": median_ms(
            jax.jit(lambda x, g: jnp.sum(x * g, axis=(0, 1, 2))), x, g),
        "sliced_reduction_ms": median_ms(
            jax.jit(lambda x, g: jnp.sum(x[:, 1:, 1:] * g[:, :-1, :-1], axis=(0, 1, 2))), x, g),
        "materialise_shifted_copy_ms": median_ms(
            jax.jit(lambda x: jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, 2:, 2:]), x),
        "layer_forward_ms": median_ms(jax.jit(model.apply), params, x),
        "layer_forward_backward_ms": median_ms(jax.jit(jax.grad(loss, argnums=(0, 1))),
                                               params, x),
        "autodiff_forward_backward_ms": median_ms(jax.jit(jax.grad(
            lambda k, x: jnp.sum(layers._depthwise_shifts(x, k, 1) * g), argnums=(0, 1))),
            params["params"]["kernel"], x),
    }
    rows.append(row)
    print(f"{str(shape):>20}  " + "  ".join(f"{k[:-3]} {v:6.2f}" for k, v in row.items()
                                          if k.endswith("_ms")), flush=True)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                     "depthwise_backward.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".tmp", "w") as f:
    json.dump({"jax": jax.__version__, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)
  os.replace(out + ".tmp", out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
