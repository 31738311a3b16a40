"""Masked losses as (sum, count) pieces, so a mean over devices or batches stays exact.

Predictions are upsampled (bilinear) to the label resolution before the loss, as in the
authors' recipe. A task with no valid pixel contributes exactly 0 with a zero gradient.
"""
from __future__ import annotations

from typing import Mapping

import chex
import jax
import jax.numpy as jnp

from hydrajax.models.hydranet import upsample_outputs

IGNORE_LABEL = 255
BERHU_FRACTION = 0.2

SumCount = tuple[jax.Array, jax.Array]


def _at_least_f32(x: jax.Array) -> jax.Array:
  """bfloat16 / float16 -> float32; float32 and float64 stay (float64 serves exactness tests)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy_terms(logits: jax.Array, labels: jax.Array,
                        ignore_label: int = IGNORE_LABEL) -> SumCount:
  """Softmax CE. logits (N, H, W, C), labels (N, H, W) int; labels == ignore_label or
  outside [0, C) are ignored. Returns (sum over valid pixels, number of valid pixels)."""
  chex.assert_rank([logits, labels], [4, 3])
  chex.assert_equal_shape_prefix([logits, labels], 3)
  logits = _at_least_f32(logits)
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < logits.shape[-1])
  safe = jnp.where(valid, labels, 0)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  nll = jnp.where(valid, logz - picked, 0.0)
  return nll.sum(), valid.sum().astype(jnp.float32)


def berhu_threshold(pred: jax.Array, target: jax.Array) -> jax.Array:
  """c = 0.2 * max |relu(pred) - target| over valid pixels (target > 0); 0 if none.
  Treated as a per-batch constant (no gradient), as in Laina et al. (2016)."""
  valid = target > 0
  err = jnp.where(valid, jnp.abs(jax.nn.relu(pred) - target), 0.0)
  return jax.lax.stop_gradient(BERHU_FRACTION * err.max())


def berhu_terms(pred: jax.Array, target: jax.Array, c: jax.Array | None = None) -> SumCount:
  """Inverse Huber on relu(pred) vs target (metres), pixels with target > 0.
  loss = |e| if |e| <= c else (e^2 + c^2) / (2c). pred, target (N, H, W).
  Returns (sum over valid pixels, number of valid pixels), a correct masked mean's pieces
  (the authors' DenseTorch divides by all pixels instead)."""
  chex.assert_equal_shape([pred, target])
  pred, target = _at_least_f32(pred), _at_least_f32(target)
  if c is None:
    c = berhu_threshold(pred, target)
  valid = target > 0
  diff = jnp.where(valid, jax.nn.relu(pred) - target, 0.0)
  err = jnp.abs(diff)
  c_safe = jnp.where(c > 0, c, 1.0)
  quad = (diff ** 2 + c ** 2) / (2.0 * c_safe)
  loss = jnp.where(err <= c, err, quad)
  return jnp.where(valid, loss, 0.0).sum(), valid.sum().astype(jnp.float32)


# Per-sample codes of batch["depth_relative"] (hydrajax.data.teacher writes them): the
# sample's depth label is metric (0), or relative, affine in depth (1) or in inverse depth (2).
DEPTH_METRIC, RELATIVE_DEPTH, RELATIVE_INVERSE_DEPTH = 0, 1, 2
SSI_MIN_DEPTH = 1e-2  # metres: |pred| below this is taken as this in inverse depth


def ssi_terms(pred: jax.Array, target: jax.Array, space: jax.Array) -> SumCount:
  """Scale-and-shift-invariant depth loss (Ranftl et al., MiDaS, TPAMI 2022) on relative labels.

  pred (N, H, W) raw depth outputs, taken as |pred| (metres, as `hydrajax.apply` reports
  them); target (N, H, W) relative labels, 0 invalid; space (N,) int: RELATIVE_DEPTH (the
  label is a * depth + b), RELATIVE_INVERSE_DEPTH (a / depth + b; the prediction enters as
  1 / max(|pred|, SSI_MIN_DEPTH)), or DEPTH_METRIC (the sample is skipped). Per image, the
  target is normalised to zero mean and unit standard deviation over its valid pixels and
  the prediction aligned to it by least squares (scale and shift); the loss is the L1
  difference of the aligned values, so it is the same for any a, b (a != 0) and 0 for an
  exact affine match. Returns (sum over valid pixels, number of valid pixels).
  """
  chex.assert_equal_shape([pred, target])
  chex.assert_shape(space, (pred.shape[0],))
  pred, target = _at_least_f32(pred), _at_least_f32(target)
  space = space.astype(jnp.int32)[:, None, None]
  valid = (target > 0) & (space != DEPTH_METRIC)
  depth = jnp.abs(pred)
  p = jnp.where(space == RELATIVE_INVERSE_DEPTH, 1.0 / jnp.maximum(depth, SSI_MIN_DEPTH), depth)
  w = valid.astype(p.dtype)
  n = jnp.maximum(w.sum(axis=(1, 2), keepdims=True), 1.0)
  mean = lambda x: (w * x).sum(axis=(1, 2), keepdims=True) / n
  t = target - mean(target)
  t = t / jnp.maximum(jnp.sqrt(mean(t ** 2)), 1e-12)
  pc = p - mean(p)
  var = mean(pc ** 2)
  scale = mean(pc * t) / jnp.where(var > 0, var, 1.0)  # t has zero mean: the shift is -scale * mean(p)
  loss = jnp.abs(scale * pc - t)
  return jnp.where(valid, loss, 0.0).sum(), valid.sum().astype(jnp.float32)


def normals_terms(pred: jax.Array, target: jax.Array) -> SumCount:
  """1 - cosine(pred, target) over pixels whose target normal is non-zero. (N, H, W, 3)."""
  chex.assert_equal_shape([pred, target])
  chex.assert_axis_dimension(target, -1, 3)
  pred, target = _at_least_f32(pred), _at_least_f32(target)
  tnorm = jnp.linalg.norm(target, axis=-1)
  valid = tnorm > 0
  pnorm = jnp.sqrt(jnp.sum(pred ** 2, axis=-1) + 1e-12)
  cos = jnp.sum(pred * target, axis=-1) / (pnorm * jnp.where(valid, tnorm, 1.0))
  return jnp.where(valid, 1.0 - cos, 0.0).sum(), valid.sum().astype(jnp.float32)


def loss_terms(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
               align_corners: bool = False, axis_name: str | None = None, impl: str = "auto"
               ) -> dict[str, SumCount]:
  """(sum, count) per task of the model, predictions upsampled to the label size.

  batch: "segm" (N, H, W) uint8 (255 ignore), "depth" (N, H, W) metres (0 invalid),
  "normals" (N, H, W, 3), optionally "depth_relative" (N,) uint8: samples whose code is not
  DEPTH_METRIC carry relative depth labels, scored by `ssi_terms` (one depth mean over the
  metric and relative pixels together). With `axis_name` (inside pmap), the berHu threshold is the max
  over all devices, so the result equals one device on the global batch.
  """
  label = batch["segm"] if "segm" in batch else batch["depth"]
  chex.assert_rank(label, 3)
  up = upsample_outputs(outputs, label.shape[1:3], align_corners, impl)
  terms = {}
  if "segm" in up:
    terms["segm"] = cross_entropy_terms(up["segm"], batch["segm"])
  if "depth" in up:
    relative = batch.get("depth_relative")
    metric = batch["depth"]
    if relative is not None:  # relative labels take ssi_terms, metric ones berHu
      chex.assert_shape(relative, (metric.shape[0],))
      metric = jnp.where(relative[:, None, None] == DEPTH_METRIC, metric, 0.0)
    c = berhu_threshold(up["depth"], metric)
    if axis_name is not None:
      c = jax.lax.pmax(c, axis_name)
    terms["depth"] = berhu_terms(up["depth"], metric, c)
    if relative is not None:
      ssi = ssi_terms(up["depth"], batch["depth"], relative)
      terms["depth"] = (terms["depth"][0] + ssi[0], terms["depth"][1] + ssi[1])
  if "normals" in up:
    terms["normals"] = normals_terms(up["normals"], batch["normals"])
  return terms


def combined_loss(terms: Mapping[str, SumCount], weights: Mapping[str, float],
                  axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of masked task means: sum_t w_t * sum_t / max(count_t, 1).

  With `axis_name`, counts are summed over devices and the returned total is this device's
  share: summing totals (and gradients) over devices gives the global-batch loss.
  Returns (total, {task: this device's share of the task's mean}).
  """
  total = jnp.zeros((), jnp.float32)
  means = {}
  for task, (s, n) in terms.items():
    if axis_name is not None:
      n = jax.lax.psum(n, axis_name)
    means[task] = s / jnp.maximum(n, 1.0)
    total = total + weights[task] * means[task]
  return total, means
