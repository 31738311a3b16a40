"""Latency of the exported ONNX model under onnxruntime next to `hydrajax.apply` (and the
deserialized StableHLO artifact), one image, CPU.

    python benchmarks/export_latency.py [--weights W.npz] [--height 480 --width 640]
        [--runs 15] [--out benchmarks/export_latency.json]

All three run the same computation: uint8 image -> normalised -> network -> segm logits and
depth at full resolution (the ONNX/StableHLO models are exported with --full-resolution, which
also returns argmax labels). Without --weights a random 40-class model is used (latency does
not depend on the weights). Reports median and min milliseconds over `runs` calls after
warm-up, and writes them as JSON (atomically).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

import hydrajax
from hydrajax import atomic, export


def time_calls(fn, runs: int, warmup: int = 2) -> dict[str, float]:
  """Median / min wall milliseconds of `fn()` over `runs` calls after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--weights", default=None)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=640)
  p.add_argument("--runs", type=int, default=15)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "export_latency.json"))
  args = p.parse_args()
  import onnxruntime as ort

  variables = hydrajax.load(args.weights) if args.weights else hydrajax.init(0, num_classes=40)
  h, w = args.height, args.width
  image = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
  results = {}

  results["hydrajax.apply"] = time_calls(
      lambda: jax.block_until_ready(hydrajax.apply(variables, image)), args.runs)

  start = time.perf_counter()
  shlo = jax.export.deserialize(bytearray(
      export.export_stablehlo(variables, h, w, full_resolution=True)))
  results["stablehlo_export_s"] = time.perf_counter() - start
  results["stablehlo (jax.export, deserialized)"] = time_calls(
      lambda: jax.block_until_ready(shlo.call(image)), args.runs)

  start = time.perf_counter()
  onnx_bytes = export.export_onnx(variables, h, w, full_resolution=True)
  results["onnx_export_s"] = time.perf_counter() - start
  options = ort.SessionOptions()
  options.log_severity_level = 3
  sess = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
  results["onnxruntime"] = time_calls(lambda: sess.run(None, {"image": image}), args.runs)

  results["config"] = {"height": h, "width": w, "batch": 1, "input": "uint8",
                       "outputs": "full-resolution segm logits, depth, labels",
                       "cpu_count": os.cpu_count(), "machine": platform.machine(),
                       "jax": jax.__version__, "onnxruntime": ort.__version__,
                       "load_average_at_end": os.getloadavg()}
  atomic.write_bytes_atomic(args.out, (json.dumps(results, indent=2) + "\n").encode())
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
