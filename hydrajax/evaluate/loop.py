"""Evaluation: full-resolution metrics over a dataset, a table, metrics.json, samples.png.

Predictions are upsampled (bilinear) to the label resolution. Segmentation: one confusion
matrix over the whole set -> mIoU, pixel and mean accuracy, per-class IoU. Depth: error sums
over every valid pixel of the set -> RMSE, RMSE(log), abs/sq rel, delta < 1.25^k. Baselines
printed alongside: the mIoU of uniformly random labels and the RMSE of predicting the mean
ground-truth depth. Runs on the devices of every process (hydrajax.runtime.parallel): each process
feeds its rows of every global batch and the sums are psum'ed over all devices, so every
process gets the whole set's metrics, the same for any process count.

  python evaluate.py --config configs/synthetic.py --workdir runs/demo [--which best]
  python evaluate.py --config configs/nyud.py --weights nyud.npz --workdir runs/nyud_eval
"""
from __future__ import annotations

import ast
import functools
import json
import os
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hydrajax import api
from hydrajax.runtime import atomic
from hydrajax.evaluate import metrics
from hydrajax.runtime import parallel
from hydrajax.data import sources
from hydrajax.models import ops
from hydrajax.runtime.parallel import AXIS


def eval_params(config: ml_collections.ConfigDict) -> dict:
  """The protocol settings as step inputs (changing them does not recompile)."""
  crop = metrics.CROPS.get(config.eval.crop, ())
  if crop == ():
    raise ValueError(f"config.eval.crop must be one of {sorted(metrics.CROPS)}, "
                     f"got {config.eval.crop!r}")
  return {"min_depth": float(config.eval.min_depth),
          "max_depth": float(config.eval.max_depth) or float("inf"),
          "crop": np.asarray(crop or (0.0, 1.0, 0.0, 1.0), np.float32)}


def eval_step(variables: Any, batch: dict, protocol: dict, *, num_classes: int, tasks: tuple,
              align_corners: bool, impl: str = "auto") -> tuple:
  """This device's batch -> (sums psum'ed over devices, predictions at label resolution).

  batch: "image" uint8 (n, H, W, 3), labels (n, H, W), "mask" (n,) bool, "hw" (n, 2);
  protocol: from `eval_params`.
  """
  chex.assert_rank([batch["image"], batch["mask"], batch["hw"]], [4, 1, 2])
  model = api.model_from_config(
      {"num_classes": num_classes, "tasks": tasks, "align_corners": align_corners}, impl=impl)
  raw = model.apply(variables, api.normalize(batch["image"]), train=False)
  label_hw = batch["image"].shape[1:3]
  out = api.postprocess(raw, label_hw, align_corners, impl)
  sums, preds = {}, {}
  if "segm" in tasks:
    preds["segm"] = jnp.argmax(out["segm"], axis=-1).astype(jnp.uint8)
    sums["confusion"] = metrics.segm_confusion(preds["segm"], batch["segm"], num_classes,
                                               batch["mask"])
  if "depth" in tasks:
    preds["depth"] = out["depth"]
    region = metrics.crop_region(batch["hw"], *label_hw, protocol["crop"])
    sums["depth"] = metrics.depth_sums(out["depth"], batch["depth"], batch["mask"],
                                       min_depth=protocol["min_depth"],
                                       max_depth=protocol["max_depth"], region=region)
  return jax.lax.psum(sums, AXIS), preds


@functools.lru_cache(maxsize=16)
def _compiled_eval(key: tuple, devices: tuple) -> Any:
  impl = ops.resolve("auto", devices[0].platform)
  return jax.pmap(functools.partial(eval_step, **dict(key), impl=impl), axis_name=AXIS,
                  in_axes=(0, 0, None), devices=list(devices))


def pmapped_eval_step(model_cfg: dict, devices: Sequence[Any]) -> Any:
  """`step(replicated_variables, device_batch, protocol)`, compiled once per architecture."""
  key = (("num_classes", model_cfg["num_classes"]), ("tasks", tuple(model_cfg["tasks"])),
         ("align_corners", model_cfg["align_corners"]))
  return _compiled_eval(key, tuple(devices))


def evaluate(variables: dict, config: ml_collections.ConfigDict, source: Any = None,
             devices: Sequence[Any] | None = None, num_samples: int = 0
             ) -> tuple[dict, list[dict]]:
  """Metrics of `variables` on the validation split (or `source`).

  Returns (flat metrics dict, up to `num_samples` dicts of image / labels / predictions
  as numpy for pictures: this process's rows). `variables` are host arrays ({"params",
  "batch_stats"}). `devices`: those of every process (default `parallel.devices()`); every
  process must call this.
  """
  from hydrajax.data import pipeline

  devices = list(devices or parallel.devices())
  n = len(devices)
  source = source if source is not None else sources.build_source(config, "val")
  if config.eval.max_examples:
    source = _Head(source, config.eval.max_examples)
  batch_size = -(-config.eval.batch_size // n) * n  # global, a multiple of the devices
  model_cfg = api.model_config(variables)
  step = pmapped_eval_step(model_cfg, devices)
  protocol = eval_params(config)
  net = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  replicated = parallel.replicate(net, devices)
  acc = metrics.Accumulator()
  samples = []
  ds = pipeline.eval_dataset(source, batch_size=batch_size,
                             num_devices=len(parallel.local(devices)),
                             pad_to_multiple=config.eval.pad_to_multiple or None)
  batches = (_pad_like_other_processes(b) for b in ds)
  shapes = set()
  for batch, on_devices in parallel.prefetch(batches, devices, config.prefetch_to_device):
    if batch["image"].shape not in shapes:
      shapes.add(batch["image"].shape)
      parallel.compile_everywhere(step, replicated, on_devices, protocol, name="eval_step")
    sums, preds = step(replicated, on_devices, protocol)
    acc.add(parallel.unreplicate(sums))
    if len(samples) < num_samples:
      samples += _pictures(batch, preds, num_samples - len(samples))
  return metrics_from_sums(acc.result(), config, len(source)), samples


def metrics_from_sums(totals: dict, config: ml_collections.ConfigDict, num_examples: int
                      ) -> dict:
  """The flat metrics dict of a whole set from its summed "confusion" / "depth" sums."""
  result = {}
  if "confusion" in totals:
    from hydrajax.data import registry
    names = registry.metadata(config).get("class_names")
    seg = metrics.segm_metrics(totals["confusion"], tuple(names) if names else None)
    seg["segm_pixels"] = seg.pop("num_pixels")
    result.update(seg)
  if "depth" in totals:
    dep = metrics.depth_metrics(totals["depth"])
    dep["depth_pixels"] = dep.pop("num_pixels")
    result.update(dep)
  result["num_examples"] = num_examples
  return result


def _pad_like_other_processes(batch: dict) -> dict:
  """Pads this process's rows (devices, n, H, W, ...) to the largest H, W of the global batch
  (ignore values), as one process holding the whole batch pads it: the pmapped step needs
  the same shapes in every process, and predictions then match the one-process run."""
  if jax.process_count() == 1:
    return batch
  from jax.experimental import multihost_utils

  from hydrajax.data import transforms

  h, w = np.max(multihost_utils.process_allgather(np.array(batch["image"].shape[2:4])), axis=0)
  out = {}
  for k, v in batch.items():
    if v.ndim >= 4 and v.shape[2:4] == batch["image"].shape[2:4]:
      pad = [(0, 0), (0, 0), (0, h - v.shape[2]), (0, w - v.shape[3])] + [(0, 0)] * (v.ndim - 4)
      v = np.pad(v, pad, constant_values=transforms.PAD_VALUES.get(k, 0))
    out[k] = v
  return out


class _Head:
  """The first `n` examples of a source."""

  def __init__(self, source: Any, n: int):
    self.source, self.n = source, min(n, len(source))
    self.has_normals = getattr(source, "has_normals", False)

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def _pictures(batch: dict, preds: dict, limit: int) -> list[dict]:
  """Unpadded numpy crops of the batch's real examples, for samples.png."""
  out = []
  flat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in batch.items()}
  pflat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in preds.items()}
  for i in range(flat["image"].shape[0]):
    if len(out) >= limit or not flat["mask"][i]:
      continue
    h, w = flat["hw"][i]
    item = {"image": flat["image"][i, :h, :w]}
    for k in ("segm", "depth"):
      if k in pflat:
        item[k] = flat[k][i, :h, :w]
        item[f"pred_{k}"] = pflat[k][i, :h, :w]
    out.append(item)
  return out


def format_table(result: dict) -> str:
  """Plain-text table of the headline metrics and their baselines."""
  rows = []
  if "miou" in result:
    rows += [("mIoU", result["miou"], f"chance (random labels) {result['chance_miou']:.4f}, "
              f"majority class {result['majority_miou']:.4f}"),
             ("pixel acc", result["pixel_acc"], ""), ("mean acc", result["mean_acc"], "")]
  if "rmse" in result:
    rows += [("RMSE (m)", result["rmse"], f"predicting the mean depth {result['mean_rmse']:.4f}"),
             ("RMSE (log)", result["rmse_log"], ""), ("abs rel", result["abs_rel"], ""),
             ("sq rel", result["sq_rel"], ""), ("delta < 1.25", result["delta1"], ""),
             ("delta < 1.25^2", result["delta2"], ""), ("delta < 1.25^3", result["delta3"], "")]
  lines = [f"{'metric':<16}{'value':>10}   baseline", "-" * 60]
  lines += [f"{name:<16}{value:>10.4f}   {base}" for name, value, base in rows]
  if "per_class_iou" in result:
    lines.append("per-class IoU: " + ", ".join(
        f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in result["per_class_iou"].items()))
  return "\n".join(lines)


def write_json_atomic(path: str, data: Any) -> None:
  atomic.write_bytes_atomic(path, json.dumps(data, indent=2).encode())


def load_variables(config: ml_collections.ConfigDict, workdir: str, weights: str = "",
                   which: str = "latest") -> tuple[dict, str]:
  """Variables from a weights file, or the latest / best checkpoint of `workdir` (opened
  read-only: a run training there keeps its in-flight save). Returns (variables, a
  description of where they came from). The upsampling (align_corners) is the weights' or
  the checkpoint's recorded config's; where `config` says otherwise they win, stated."""
  import hydrajax
  from hydrajax.train import checkpoint

  if weights:
    variables, origin = hydrajax.load(weights), weights
    _state_align_corners(api.model_config(variables)["align_corners"], config, origin,
                         "its weights file")
    return variables, origin
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint in {directory} (no such directory); train "
                            f"first or pass --weights FILE")
  ckpt = checkpoint.Checkpointer(directory, best_metric=config.best_metric,
                                 best_mode=config.best_mode, read_only=True)
  try:
    step = ckpt.best_step() if which == "best" else ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no {'best ' if which == 'best' else ''}checkpoint in "
                              f"{directory}; train first or pass --weights FILE")
    variables = ckpt.restore_variables(step)
    recorded = ckpt.config(step) or {}
  finally:
    ckpt.close()
  origin = f"{workdir}/checkpoints/{step} ({which})"
  align_corners = config.align_corners
  if "align_corners" in recorded:
    align_corners = ast.literal_eval(recorded["align_corners"])
    _state_align_corners(align_corners, config, origin, "the config it was trained with")
  if align_corners:
    variables["meta"] = {"align_corners": True}
  return variables, origin


def _state_align_corners(theirs: bool, config: ml_collections.ConfigDict, origin: str,
                         source: str) -> None:
  """One line when the weights' upsampling overrides config.align_corners."""
  if bool(theirs) != bool(config.align_corners) and parallel.is_primary():
    print(f"{origin}: align_corners={bool(theirs)} from {source} (config.align_corners="
          f"{config.align_corners} is not used)")


def check_model_matches_config(variables: dict, config: ml_collections.ConfigDict,
                               origin: str) -> None:
  """Raise ValueError naming both when the weights' classes or tasks differ from the
  config's: their scores would be computed against labels of another meaning."""
  model = api.model_config(variables)
  wanted = {"num_classes": config.num_classes if "segm" in config.tasks else 0,
            "tasks": tuple(config.tasks)}
  if (model["num_classes"], model["tasks"]) != (wanted["num_classes"], wanted["tasks"]):
    raise ValueError(
        f"{origin} is a model with {model['num_classes']} classes and tasks "
        f"{','.join(model['tasks'])}, but the config has num_classes={config.num_classes} and "
        f"tasks {','.join(config.tasks)} (dataset {config.dataset!r}): use weights trained "
        f"for this config, or set --config.num_classes / --config.tasks to match them")


def run(config: ml_collections.ConfigDict, workdir: str, weights: str = "",
        which: str = "latest") -> dict:
  """Evaluate and write WORKDIR/eval/metrics.json and WORKDIR/eval/samples.png."""
  from hydrajax.train import config_check
  from hydrajax.inference import pictures

  config = config_check.validate(config, "evaluate")
  parallel.initialize(config)
  parallel.check_same_config(config, workdir)
  variables, origin = load_variables(config, workdir, weights, which)
  check_model_matches_config(variables, config, origin)
  result, samples = evaluate(variables, config, devices=parallel.devices(config.num_devices),
                             num_samples=config.eval.num_samples)
  result["weights"] = origin
  if not parallel.is_primary():
    return result
  out_dir = os.path.join(workdir, "eval")
  write_json_atomic(os.path.join(out_dir, "metrics.json"), result)
  if samples:
    from hydrajax.data import registry
    meta = registry.metadata(config)
    pictures.save_grid(os.path.join(out_dir, "samples.png"), samples,
                       max_depth=config.eval.max_depth or None, palette=meta.get("palette"),
                       class_names=meta.get("class_names"))
  print(f"evaluated {origin} on {result['num_examples']} examples")
  print(format_table(result))
  return result
