"""Metrics against direct numpy formulas on hand-made predictions, on 1 and 2 devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from hydrajax.evaluate import metrics


def _segm_case():
  rng = np.random.default_rng(0)
  label = rng.integers(0, 4, (4, 6, 8)).astype(np.uint8)
  label[0, :2] = 255                   # ignored pixels
  label[1, 0, 0] = 7                   # outside [0, C): ignored too
  pred = np.where(rng.random(label.shape) < 0.7, label % 4, rng.integers(0, 4, label.shape))
  mask = np.array([True, True, True, False])  # the last example is padding
  return pred.astype(np.int32), label, mask


def test_confusion_and_miou_match_numpy_reference_with_ignore_and_padding():
  pred, label, mask = _segm_case()
  cm = np.asarray(metrics.segm_confusion(jnp.asarray(pred), jnp.asarray(label), 4,
                                         jnp.asarray(mask)))
  ref = np.zeros((4, 4), np.int64)
  for n in range(3):
    for t, p in zip(label[n].ravel(), pred[n].ravel()):
      if t < 4:
        ref[t, p] += 1
  np.testing.assert_array_equal(cm, ref)
  m = metrics.segm_metrics(cm, ("a", "b", "c", "d"))
  ious = [ref[c, c] / (ref[c].sum() + ref[:, c].sum() - ref[c, c]) for c in range(4)]
  # Ratios of integer counts computed in float64 on the host: default rtol (1e-7) holds.
  np.testing.assert_allclose(m["miou"], np.mean(ious))
  np.testing.assert_allclose(m["pixel_acc"], np.trace(ref) / ref.sum())
  np.testing.assert_allclose(m["mean_acc"], np.mean([ref[c, c] / ref[c].sum() for c in range(4)]))
  np.testing.assert_allclose(m["per_class_iou"]["c"], ious[2])
  assert m["num_pixels"] == ref.sum()


def test_miou_averages_only_classes_that_occur():
  cm = np.array([[5, 0, 0], [0, 0, 0], [1, 0, 2]])
  m = metrics.segm_metrics(cm)
  np.testing.assert_allclose(m["miou"], (5 / 6 + 2 / 3) / 2)
  assert m["per_class_iou"]["1"] is None


def _depth_case():
  rng = np.random.default_rng(1)
  gt = rng.uniform(0.5, 12.0, (3, 10, 12)).astype(np.float32)
  gt[0, :3] = 0.0                      # invalid
  pred = (gt * rng.uniform(0.7, 1.4, gt.shape)).astype(np.float32)
  pred[1, 0, 0] = -1.0                 # clipped to min_depth
  return pred, gt


def _depth_reference(pred, gt, valid, min_depth, max_depth):
  p = np.clip(pred, min_depth, max_depth)[valid].astype(np.float64)
  g = gt[valid].astype(np.float64)
  ratio = np.maximum(p / g, g / p)
  return {"rmse": np.sqrt(np.mean((p - g) ** 2)),
          "rmse_log": np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)),
          "abs_rel": np.mean(np.abs(p - g) / g), "sq_rel": np.mean((p - g) ** 2 / g),
          "delta1": np.mean(ratio < 1.25), "delta2": np.mean(ratio < 1.25 ** 2),
          "delta3": np.mean(ratio < 1.25 ** 3), "mean_rmse": np.std(g)}


def test_depth_metrics_match_numpy_reference_with_invalid_pixels_cap_and_crop():
  pred, gt = _depth_case()
  hw = np.array([[10, 12], [10, 12], [8, 12]], np.int32)  # the last example was padded
  region = np.asarray(metrics.crop_region(jnp.asarray(hw), 10, 12, "garg"))
  sums = metrics.depth_sums(jnp.asarray(pred), jnp.asarray(gt), min_depth=1e-3, max_depth=10.0,
                            region=jnp.asarray(region))
  got = metrics.depth_metrics(jax.device_get(sums))
  # Garg rows [floor(0.408 h), floor(0.992 h)) of each example's own height.
  assert region[2, 6].any() and not region[2, 7:].any() and not region[2, :3].any()
  assert not region[0, :4].any() and region[0, 4:9].any() and not region[0, 9].any()
  valid = (gt > 1e-3) & (gt <= 10.0) & region
  ref = _depth_reference(pred, gt, valid, 1e-3, 10.0)
  for k, v in ref.items():
    # Sums of positive per-pixel errors over ~100 pixels (float32 vs the float64 reference):
    # ~log2(n) eps, then a sqrt or ratio: ~1e-6 relative in any summation order.
    np.testing.assert_allclose(got[k], v, rtol=1e-5, err_msg=k)
  assert got["num_pixels"] == valid.sum()


def test_metric_sums_over_two_devices_equal_one_device():
  pred, label, mask = _segm_case()
  dpred, dgt = _depth_case()
  dpred, dgt = np.concatenate([dpred, dpred[:1]]), np.concatenate([dgt, dgt[:1]])

  def sums(p, l, m, dp, dg, axis=None):
    out = {"cm": metrics.segm_confusion(p, l, 4, m), "depth": metrics.depth_sums(dp, dg, m)}
    return out if axis is None else jax.lax.psum(out, axis)

  one = jax.device_get(sums(pred, label, mask, dpred, dgt))
  split = lambda x: x.reshape((2, -1) + x.shape[1:])
  two = jax.pmap(functools.partial(sums, axis="d"), axis_name="d", devices=jax.devices()[:2])(
      *map(split, (pred, label, mask, dpred, dgt)))
  two = jax.tree.map(lambda x: np.asarray(x[0]), two)
  np.testing.assert_array_equal(two["cm"], one["cm"])
  for k in metrics.DEPTH_SUM_KEYS:
    # The same positive sums in two halves, added: an order change of ~1e-7 relative.
    np.testing.assert_allclose(two["depth"][k], one["depth"][k], rtol=1e-6, err_msg=k)
