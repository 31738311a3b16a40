"""Accuracy of the int8 ONNX export against the float ONNX export of the same weights.

    python benchmarks/int8_accuracy.py --weights W.npz --config configs/synthetic.py \
        [--calibrate-count 32] [--keep-float depth_head --keep-float none ...] \
        [--out benchmarks/results/int8_accuracy.json]

For the float graph and one int8 graph per --keep-float choice (comma-separated parts of
hydrajax.export.quantize.FLOAT_PARTS, "none" = everything int8):
  held-out: the config's validation set at its image size, through the ONNX evaluator
    (hydrajax/evaluate/onnx_eval.py: the JAX evaluation's metrics): mIoU, RMSE, ...;
  real frames: tests/data's NYUDv2 and KITTI frames through graphs exported at 480x640
    (`OnnxModel.dense_predictions`, labels at the frame's own size): the share of pixels
    whose int8 label equals the float graph's, and the int8 depth's relative RMS change.
Calibration: --calibrate-count seeded images of the config's training split (resized to
each graph's size), as `hydrajax-export --int8 --calibrate-config` does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FRAMES = ("tests/data/nyud/000464_rgb.png", "tests/data/kitti/000099_rgb.png")
REAL_SIZE = (480, 640)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--weights", required=True)
  p.add_argument("--config", required=True)
  p.add_argument("--calibrate-count", type=int, default=32)
  p.add_argument("--keep-float", action="append", default=None)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "int8_accuracy.json"))
  args = p.parse_args(argv)
  choices = args.keep_float or ["none"]

  from ml_collections.config_flags import config_flags

  import hydrajax
  from hydrajax.data import sources
  from hydrajax.evaluate import onnx_eval
  from hydrajax.export import cli as export
  from hydrajax.export import quantize
  from hydrajax.inference import onnx_runner, predict
  from hydrajax.runtime import atomic

  config = config_flags.ConfigFileFlagParser(name="config").parse(args.config)
  variables = hydrajax.load(args.weights)
  val = sources.build_source(config, "val")
  val_size = tuple(np.asarray(val[0]["image"]).shape[:2])
  frames = [predict.load_image(os.path.join(ROOT, f)) for f in FRAMES]
  result = {"weights": args.weights, "config": args.config,
            "calibrate_count": args.calibrate_count, "val_size": list(val_size),
            "real_size": list(REAL_SIZE), "variants": {}}
  with tempfile.TemporaryDirectory() as tmp:
    graphs = {}
    for size in (val_size, REAL_SIZE):
      graphs[size] = {"float": export.export_onnx(variables, *size)}
      calib = quantize.images_from_config(args.config, size, args.calibrate_count)
      for choice in choices:
        keep = [c for c in choice.split(",") if c not in ("", "none")]
        t0 = time.perf_counter()
        graphs[size][f"int8 keep_float={choice}"] = quantize.quantize(
            graphs[size]["float"], calib, keep_float=keep)
        print(f"quantized at {size} keep_float={choice}: {time.perf_counter() - t0:.0f} s",
              flush=True)
    models = {}
    for size, by_name in graphs.items():
      for name, data in by_name.items():
        path = os.path.join(tmp, f"{name.replace(' ', '_')}_{size[0]}x{size[1]}.onnx")
        with open(path, "wb") as f:
          f.write(data)
        models[size, name] = onnx_runner.OnnxModel(path, threads=2)
    ref_frames = [models[REAL_SIZE, "float"].dense_predictions(f) for f in frames]
    for name in graphs[val_size]:
      metrics = onnx_eval.evaluate_onnx(models[val_size, name], config, val)
      row = {k: metrics[k] for k in ("miou", "pixel_acc", "rmse", "rmse_log", "abs_rel",
                                     "delta1") if k in metrics}
      for frame, ref, path in zip(frames, ref_frames, FRAMES):
        out = models[REAL_SIZE, name].dense_predictions(frame)
        key = os.path.basename(os.path.dirname(path))
        row[f"{key}_label_agreement"] = float(np.mean(out["segm"] == ref["segm"]))
        row[f"{key}_depth_rel_change"] = float(
            np.linalg.norm(out["depth"] - ref["depth"]) / np.linalg.norm(ref["depth"]))
      result["variants"][name] = row
      print(name, json.dumps(row), flush=True)
  base = result["variants"]["float"]
  for name, row in result["variants"].items():
    if "miou" in base:
      row["miou_minus_float_points"] = 100 * (row["miou"] - base["miou"])
    if "rmse" in base:
      row["rmse_vs_float"] = row["rmse"] / base["rmse"]
  atomic.write_bytes_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
