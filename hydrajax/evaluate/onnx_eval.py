"""Evaluate an exported graph (ONNX or OpenVINO IR, float or int8) on a config's validation
set, with the metrics of the JAX evaluation (hydrajax.evaluate.metrics: one confusion matrix
and depth error sums pooled over the whole set, the config's depth cap, minimum and crop).

  python evaluate.py --config configs/synthetic.py --workdir runs/demo --onnx model.onnx

Each image runs alone. Where the graph's input size is the image's size padded to
`config.eval.pad_to_multiple` (export at that size), the image is padded as the JAX
evaluation pads it (black, below and to the right) and the outputs cropped back, so the two
evaluations see the same network input and give the same metrics to float rounding. Images
of any other size are resized to the graph's and the outputs upsampled back (onnx_runner).
Writes WORKDIR/eval/<onnx file name>.json and prints the table of the JAX evaluation.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from hydrajax.data import sources, transforms
from hydrajax.evaluate import loop, metrics
from hydrajax.inference import exported
from hydrajax.inference import onnx_runner


def evaluate_onnx(model: onnx_runner.ExportedModel, config: ml_collections.ConfigDict,
                  source: Any = None) -> dict:
  """Flat metrics dict (as `loop.evaluate`'s) of `model` on the validation split (or
  `source`), first `config.eval.max_examples` examples when set."""
  source = source if source is not None else sources.build_source(config, "val")
  if config.eval.max_examples:
    source = loop._Head(source, config.eval.max_examples)
  protocol = loop.eval_params(config)
  crop = None if metrics.CROPS[config.eval.crop] is None else protocol["crop"]
  acc = metrics.Accumulator()
  num_classes = model.num_classes
  for i in range(len(source)):
    example = source[i]
    image = np.asarray(example["image"])[None]
    out = _predict_like_jax(model, image, config.eval.pad_to_multiple)
    sums = {}
    if "segm" in model.tasks and "segm" in example:
      pred = np.argmax(out["segm"], axis=-1)
      sums["confusion"] = metrics.segm_confusion(pred, np.asarray(example["segm"])[None],
                                                 num_classes)
    if "depth" in model.tasks and "depth" in example:
      hw = np.array([image.shape[1:3]])
      region = None if crop is None else metrics.crop_region(hw, *image.shape[1:3], crop)
      sums["depth"] = metrics.depth_sums(out["depth"], np.asarray(example["depth"])[None],
                                         min_depth=protocol["min_depth"],
                                         max_depth=protocol["max_depth"], region=region)
    acc.add(sums)
  return loop.metrics_from_sums(acc.result(), config, len(source))


def _predict_like_jax(model: onnx_runner.ExportedModel, image: np.ndarray, multiple: int
                      ) -> dict[str, np.ndarray]:
  """model(image) (1, H, W, 3), on the image padded as the JAX evaluation pads it when the
  graph takes exactly that padded size; outputs at (H, W)."""
  h, w = image.shape[1:3]
  padded = (-(-h // multiple) * multiple, -(-w // multiple) * multiple) if multiple else (h, w)
  if padded == (h, w) or tuple(model.size) != padded:
    return model(image)
  pad = ((0, 0), (0, padded[0] - h), (0, padded[1] - w), (0, 0))
  out = model(np.pad(image, pad, constant_values=transforms.PAD_VALUES["image"]))
  return {k: v[:, :h, :w] for k, v in out.items()}


def run(config: ml_collections.ConfigDict, workdir: str, onnx_path: str,
        runtime: str = "file") -> dict:
  """Evaluate `onnx_path` (an ONNX graph or OpenVINO IR, in `runtime`: exported.load)
  and write WORKDIR/eval/<file name>.json; prints the table."""
  from hydrajax.train import config_check
  config = config_check.validate(config, "evaluate")
  model = exported.load(onnx_path, runtime)
  wanted = (config.num_classes if "segm" in config.tasks else 0, tuple(config.tasks))
  if (model.num_classes, model.tasks) != wanted:
    raise ValueError(
        f"{onnx_path} is a model with {model.num_classes} classes and tasks "
        f"{','.join(model.tasks)}, but the config has num_classes={config.num_classes} and "
        f"tasks {','.join(config.tasks)}: export weights trained for this config")
  result = evaluate_onnx(model, config)
  result["weights"] = onnx_path
  loop.write_json_atomic(
      os.path.join(workdir, "eval", os.path.basename(onnx_path) + ".json"), result)
  print(f"evaluated {onnx_path} on {result['num_examples']} examples")
  print(loop.format_table(result))
  return result
