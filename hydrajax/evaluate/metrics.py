"""Evaluation metrics as sums: a confusion matrix for segmentation and error sums for depth.

Per batch, `segm_confusion` and `depth_sums` run on device (inside the pmapped eval step,
summed over devices with psum); the host adds batches in float64 (`Accumulator`) and divides
once (`segm_metrics`, `depth_metrics`), so every metric is pooled exactly over all pixels
of the set, whatever the batch size or number of devices.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Crops as fractions (top, bottom, left, right) of the label size.
CROPS = {
    "none": None,
    # Garg et al. (2016) crop of KITTI.
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    # Eigen et al. (2014) crop of KITTI.
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
    # Eigen's NYUDv2 crop: rows 45:471, cols 41:601 of 480x640.
    "eigen_nyu": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
}
DEPTH_SUM_KEYS = ("count", "sq_err", "sq_log_err", "abs_rel", "sq_rel", "delta1", "delta2",
                  "delta3", "gt", "gt_sq")


def crop_region(hw: jax.Array, height: int, width: int, crop: str | jax.Array = "none"
                ) -> jax.Array | None:
  """(N, height, width) bool: the evaluated region of each example under a crop.

  hw: (N, 2) int, each example's size before padding (the crop is relative to it).
  crop: a name of CROPS (None for "none": everything counts) or its (4,) fractions
  (top, bottom, left, right) as an array.
  """
  if isinstance(crop, str):
    if crop not in CROPS:
      raise ValueError(f"unknown depth crop {crop!r}; expected one of {sorted(CROPS)}")
    if CROPS[crop] is None:
      return None
    crop = jnp.asarray(CROPS[crop], jnp.float32)
  t, b, l, r = crop[0], crop[1], crop[2], crop[3]
  h = hw[:, 0, None, None].astype(jnp.float32)
  w = hw[:, 1, None, None].astype(jnp.float32)
  ys = jnp.arange(height)[None, :, None]
  xs = jnp.arange(width)[None, None, :]
  return ((ys >= jnp.floor(t * h)) & (ys < jnp.floor(b * h)) &
          (xs >= jnp.floor(l * w)) & (xs < jnp.floor(r * w)))


def segm_confusion(pred: jax.Array, label: jax.Array, num_classes: int,
                   example_mask: jax.Array | None = None) -> jax.Array:
  """(num_classes, num_classes) int32 counts, rows = true class, columns = prediction.

  pred, label: (N, H, W) int; labels >= num_classes (e.g. 255) are ignored, as are
  examples with example_mask (N,) False (padding in the last eval batch).
  """
  label = label.astype(jnp.int32)
  valid = (label >= 0) & (label < num_classes)
  if example_mask is not None:
    valid &= example_mask[:, None, None]
  index = jnp.where(valid, label * num_classes + pred.astype(jnp.int32), 0)
  counts = jnp.bincount(index.ravel(), weights=valid.ravel().astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def depth_sums(pred: jax.Array, gt: jax.Array, example_mask: jax.Array | None = None, *,
               min_depth: float = 1e-3, max_depth: float | None = None,
               region: jax.Array | None = None) -> dict[str, jax.Array]:
  """Error sums over valid pixels. pred, gt (N, H, W) metres; gt <= 0 is invalid.

  Valid pixels: gt > min_depth, gt <= max_depth (None or inf: no cap), inside `region`
  (N, H, W). min_depth and max_depth may be traced scalars.
  Predictions are clipped to [min_depth, max_depth] (the usual protocol; keeps log finite).
  Returns float32 sums keyed by DEPTH_SUM_KEYS ("gt", "gt_sq" give the mean-depth baseline).
  """
  gt = gt.astype(jnp.float32)
  valid = (gt > min_depth) & (gt <= max_depth if max_depth is not None else True)
  if region is not None:
    valid &= region
  if example_mask is not None:
    valid &= example_mask[:, None, None]
  p = jnp.clip(pred.astype(jnp.float32), min_depth, max_depth)
  g = jnp.where(valid, gt, 1.0)
  p = jnp.where(valid, p, 1.0)
  ratio = jnp.maximum(p / g, g / p)
  v = valid.astype(jnp.float32)
  return {
      "count": v.sum(),
      "sq_err": (v * (p - g) ** 2).sum(),
      "sq_log_err": (v * (jnp.log(p) - jnp.log(g)) ** 2).sum(),
      "abs_rel": (v * jnp.abs(p - g) / g).sum(),
      "sq_rel": (v * (p - g) ** 2 / g).sum(),
      "delta1": (v * (ratio < 1.25)).sum(),
      "delta2": (v * (ratio < 1.25 ** 2)).sum(),
      "delta3": (v * (ratio < 1.25 ** 3)).sum(),
      "gt": (v * g).sum(),
      "gt_sq": (v * g * g).sum(),
  }


def segm_metrics(confusion: np.ndarray, class_names: tuple[str, ...] | None = None) -> dict:
  """mIoU (mean over classes present in labels or predictions), pixel and mean accuracy,
  per-class IoU, and two chance baselines, from a confusion matrix (rows = truth)."""
  cm = np.asarray(confusion, np.float64)
  c = cm.shape[0]
  names = class_names or tuple(str(i) for i in range(c))
  tp = np.diag(cm)
  gt_total, pred_total = cm.sum(1), cm.sum(0)
  union = gt_total + pred_total - tp
  present = union > 0
  iou = np.where(present, tp / np.maximum(union, 1), np.nan)
  has_gt = gt_total > 0
  acc = np.where(has_gt, tp / np.maximum(gt_total, 1), np.nan)
  total = max(cm.sum(), 1.0)
  freq = gt_total / total
  # Expected IoU of uniformly random labels: TP = p/C, FP = (1-p)/C, FN = p(1 - 1/C).
  q = 1.0 / c
  chance = freq * q / (q + freq - freq * q)
  return {
      "miou": float(np.nanmean(iou)) if present.any() else 0.0,
      "pixel_acc": float(tp.sum() / total),
      "mean_acc": float(np.nanmean(acc)) if has_gt.any() else 0.0,
      "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
      "chance_miou": float(chance[has_gt].mean()) if has_gt.any() else 0.0,
      "majority_miou": float(freq.max() / max(has_gt.sum(), 1)),
      "num_pixels": int(cm.sum()),
  }


def depth_metrics(sums: Mapping[str, float]) -> dict:
  """RMSE (m), RMSE(log), abs rel, sq rel, delta1..3 pooled over all valid pixels, and the
  RMSE of predicting the mean ground-truth depth (`mean_rmse`, the constant baseline)."""
  n = float(sums["count"])
  if n <= 0:
    raise ValueError("depth metrics: no valid ground-truth pixel in the evaluation set")
  mean = sums["gt"] / n
  return {
      "rmse": float(np.sqrt(sums["sq_err"] / n)),
      "rmse_log": float(np.sqrt(sums["sq_log_err"] / n)),
      "abs_rel": float(sums["abs_rel"] / n),
      "sq_rel": float(sums["sq_rel"] / n),
      "delta1": float(sums["delta1"] / n),
      "delta2": float(sums["delta2"] / n),
      "delta3": float(sums["delta3"] / n),
      "mean_rmse": float(np.sqrt(max(sums["gt_sq"] / n - mean ** 2, 0.0))),
      "num_pixels": int(n),
  }


class Accumulator:
  """Host-side float64 running sums of per-batch device results (any nested dict)."""

  def __init__(self):
    self.totals: dict = {}

  def add(self, values: Mapping) -> None:
    for k, v in values.items():
      if isinstance(v, Mapping):
        self.totals.setdefault(k, Accumulator()).add(v)
      else:
        v = np.asarray(jax.device_get(v), np.float64)
        self.totals[k] = self.totals[k] + v if k in self.totals else v

  def result(self) -> dict:
    return {k: (v.result() if isinstance(v, Accumulator) else v) for k, v in self.totals.items()}
