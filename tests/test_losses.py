"""Losses against plain numpy, ignore/invalid masks, all-ignored batches, berHu threshold."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hydrajax.train import losses
from hydrajax.models import layers


WEIGHTS = {"segm": 0.5, "depth": 0.5}  # the paper's


def np_cross_entropy(logits, labels):
  logits = logits.astype(np.float64)
  valid = labels != 255
  m = logits.max(-1, keepdims=True)
  logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  picked = np.take_along_axis(logits, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  return (logz - picked)[valid].sum(), valid.sum()


def np_berhu(pred, target):
  valid = target > 0
  e = np.abs(np.maximum(pred.astype(np.float64), 0) - target)[valid]
  c = 0.2 * e.max() if e.size else 0.0
  loss = np.where(e <= c, e, (e ** 2 + c ** 2) / (2 * c if c > 0 else 1))
  return loss.sum(), valid.sum(), c


def _random_batch(seed, n=2, h=12, w=16, k=5, ignore_frac=0.3, invalid_frac=0.3):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, h, w, k)).astype(np.float32) * 3
  labels = rng.integers(0, k, (n, h, w)).astype(np.uint8)
  labels[rng.random((n, h, w)) < ignore_frac] = 255
  pred = rng.normal(1.5, 1.0, (n, h, w)).astype(np.float32)  # some negative (relu'd)
  target = rng.uniform(0.5, 4.0, (n, h, w)).astype(np.float32)
  target[rng.random((n, h, w)) < invalid_frac] = 0.0
  return logits, labels, pred, target


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_entropy_matches_numpy_with_ignore(seed):
  logits, labels, _, _ = _random_batch(seed)
  s, n = losses.cross_entropy_terms(jnp.asarray(logits), jnp.asarray(labels))
  ref_s, ref_n = np_cross_entropy(logits, labels)
  assert int(n) == ref_n
  # A sum of positive per-pixel terms: tree reductions (XLA's, numpy's pairwise) err by
  # ~log2(n) eps = 1e-6 relative in any order; 1e-5 holds on any CPU.
  np.testing.assert_allclose(float(s), ref_s, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_berhu_matches_numpy_with_invalid_pixels(seed):
  _, _, pred, target = _random_batch(seed)
  c = losses.berhu_threshold(jnp.asarray(pred), jnp.asarray(target))
  s, n = losses.berhu_terms(jnp.asarray(pred), jnp.asarray(target))
  ref_s, ref_n, ref_c = np_berhu(pred, target)
  np.testing.assert_allclose(float(c), ref_c, rtol=1e-6)  # a max and one product: exact to eps
  assert int(n) == ref_n
  np.testing.assert_allclose(float(s), ref_s, rtol=1e-5)  # sum of positives, as above


def test_berhu_switches_from_l1_to_quadratic_at_threshold():
  # Errors 1, 2, 10 -> c = 0.2 * 10 = 2: |e| for 1 and 2, (e^2 + c^2) / 2c = 26 for 10.
  target = jnp.asarray([[[1.0, 1.0, 1.0, 0.0]]])
  pred = jnp.asarray([[[2.0, 3.0, 11.0, 100.0]]])  # the last pixel is invalid
  s, n = losses.berhu_terms(pred, target)
  assert float(n) == 3
  np.testing.assert_allclose(float(s), 1.0 + 2.0 + (100 + 4) / 4, rtol=1e-6)  # 3 exact terms


def test_berhu_uses_relu_of_prediction():
  # relu(-3) = 0: error 1, c = 0.2, so the quadratic branch (1 + 0.04) / 0.4 = 2.6.
  s, _ = losses.berhu_terms(jnp.asarray([[[-3.0]]]), jnp.asarray([[[1.0]]]))
  np.testing.assert_allclose(float(s), 2.6, rtol=1e-6)  # one term, a few roundings


def test_normals_loss_is_one_minus_cosine_over_valid():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
  target = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
  target[0, 0] = 0.0  # first row invalid
  s, n = losses.normals_terms(jnp.asarray(pred), jnp.asarray(target))
  with np.errstate(invalid="ignore"):  # the invalid row divides 0 by 0; it is excluded
    cos = (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) *
                                     np.linalg.norm(target, axis=-1))
  assert int(n) == 15
  # 15 positive terms, each a few float32 roundings (~1e-7 relative): 1e-5 in any order.
  np.testing.assert_allclose(float(s), (1 - cos)[0, 1:].sum(), rtol=1e-5)


def _outputs_and_batch(seed, all_ignored=False):
  logits, labels, pred, target = _random_batch(seed, h=16, w=24)
  if all_ignored:
    labels[:] = 255
    target[:] = 0
  small = {"segm": jnp.asarray(logits[:, ::4, ::4]), "depth": jnp.asarray(pred[:, ::4, ::4])}
  batch = {"segm": jnp.asarray(labels), "depth": jnp.asarray(target)}
  return small, batch


class TestLossTermsJitAndNoJit(chex.TestCase):
  """The masks and the berHu threshold depend on the data: the losses must give the numpy
  values whether traced (jit) or run op by op."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_loss_terms_upsample_predictions_to_label_size(self):
    outputs, batch = _outputs_and_batch(0)
    terms, total = self.variant(
        lambda o, b: (lambda t: (t, losses.combined_loss(t, WEIGHTS)[0]))(
            losses.loss_terms(o, b)))(outputs, batch)
    up_logits = layers.resize_bilinear(outputs["segm"], (16, 24))
    up_depth = layers.resize_bilinear(outputs["depth"][..., None], (16, 24))[..., 0]
    ref_ce = np_cross_entropy(np.asarray(up_logits), np.asarray(batch["segm"]))
    ref_bh = np_berhu(np.asarray(up_depth), np.asarray(batch["depth"]))
    # Sums of positive terms (CE, berHu) and their ratio: ~log2(n) eps, well under 1e-5.
    chex.assert_trees_all_close(terms, {"segm": ref_ce[:2], "depth": ref_bh[:2]}, rtol=1e-5)
    expected = 0.5 * ref_ce[0] / ref_ce[1] + 0.5 * ref_bh[0] / ref_bh[1]
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_all_ignored_batch_gives_zero_loss_and_zero_finite_grads():
  outputs, batch = _outputs_and_batch(1, all_ignored=True)

  def f(outs):
    return losses.combined_loss(losses.loss_terms(outs, batch), WEIGHTS)[0]

  value, grads = jax.value_and_grad(f)(outputs)
  assert float(value) == 0.0
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g) == 0)


def test_depth_only_batch_gives_zero_segm_loss_but_nonzero_depth_grads():
  outputs, batch = _outputs_and_batch(2)
  batch = dict(batch, segm=jnp.full_like(batch["segm"], 255))

  def f(outs):
    return losses.combined_loss(losses.loss_terms(outs, batch), WEIGHTS)[0]

  grads = jax.grad(f)(outputs)
  assert np.all(np.asarray(grads["segm"]) == 0)
  assert np.abs(np.asarray(grads["depth"])).sum() > 0


def test_loss_with_axis_name_equals_single_device_on_global_batch():
  outputs, batch = _outputs_and_batch(3)

  def local(outs, b):
    total, _ = losses.combined_loss(losses.loss_terms(outs, b, axis_name="d"), WEIGHTS,
                                     axis_name="d")
    return jax.lax.psum(total, "d")

  split = lambda t: jax.tree.map(lambda x: x.reshape((2, 1) + x.shape[1:]), t)
  per_device = jax.vmap(local, axis_name="d")(split(outputs), split(batch))
  single = losses.combined_loss(losses.loss_terms(outputs, batch), WEIGHTS)[0]
  # The same positive sums split in two and added: order changes only, ~1e-7 relative.
  np.testing.assert_allclose(np.asarray(per_device), float(single), rtol=1e-5)


def _relative_case(seed=0):
  """Predictions (2, 8, 10) around 1..5 m, a mask with invalid pixels, and image 0 in
  depth space, image 1 in inverse-depth space."""
  rng = np.random.default_rng(seed)
  pred = rng.uniform(1.0, 5.0, (2, 8, 10)).astype(np.float32)
  valid = rng.random((2, 8, 10)) > 0.3
  space = np.array([losses.RELATIVE_DEPTH, losses.RELATIVE_INVERSE_DEPTH], np.uint8)
  return pred, valid, space


def test_ssi_loss_is_zero_for_an_affine_match_and_invariant_to_target_scale_and_shift():
  pred, valid, space = _relative_case()
  in_space = np.stack([pred[0], 1.0 / pred[1]])
  exact = np.where(valid, 3.0 * in_space + 0.5, 0.0)
  s, n = losses.ssi_terms(jnp.asarray(pred), jnp.asarray(exact), jnp.asarray(space))
  assert int(n) == valid.sum()
  # An exact affine match leaves float32 rounding only (~1e-7 per pixel, normalised units).
  assert float(s) / float(n) < 1e-5
  target = np.where(valid, in_space + np.random.default_rng(1).uniform(0, 0.3, pred.shape), 0)
  base = float(losses.ssi_terms(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(space))[0])
  assert base > 0.05 * valid.sum()  # a noisy target is no match
  for a, b in ((7.0, 2.0), (0.1, 3.0)):
    moved = np.where(valid, a * target + b, 0.0)
    s = float(losses.ssi_terms(jnp.asarray(pred), jnp.asarray(moved), jnp.asarray(space))[0])
    # The same loss up to float32 rounding of the moved target (an ulp of 3 is 2.4e-7, 2.4e-6
    # of the 0.1-wide signal) and of its normalisation; a scale-dependent loss is off by 7x.
    np.testing.assert_allclose(s, base, rtol=1e-4)


def test_ssi_loss_ignores_invalid_pixels_and_metric_samples():
  pred, valid, space = _relative_case()
  target = np.where(valid, np.random.default_rng(2).uniform(1, 2, pred.shape), 0.0)
  s, n = losses.ssi_terms(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(space))
  wild = np.where(valid, pred, 1e4 * np.random.default_rng(3).random(pred.shape))
  grad = jax.grad(lambda p: losses.ssi_terms(p, jnp.asarray(target), jnp.asarray(space))[0])(
      jnp.asarray(wild))
  s2, n2 = losses.ssi_terms(jnp.asarray(wild), jnp.asarray(target), jnp.asarray(space))
  assert float(s2) == float(s) and float(n2) == float(n)  # invalid pixels change nothing
  assert np.all(np.asarray(grad)[~valid] == 0) and np.abs(np.asarray(grad)[valid]).max() > 0
  metric = np.array([losses.DEPTH_METRIC, losses.RELATIVE_INVERSE_DEPTH], np.uint8)
  s3, n3 = losses.ssi_terms(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(metric))
  assert int(n3) == valid[1].sum()


def test_loss_terms_score_relative_samples_with_ssi_and_metric_ones_with_berhu():
  pred, valid, _ = _relative_case()
  metric_target = np.where(valid, pred + 0.5, 0.0).astype(np.float32)
  relative_target = np.where(valid, 2.0 * pred + 9.0, 0.0).astype(np.float32)  # affine: ssi 0
  batch = {"depth": jnp.asarray(np.stack([metric_target[0], relative_target[1]])),
           "depth_relative": jnp.asarray(np.array([0, losses.RELATIVE_DEPTH], np.uint8))}
  terms = losses.loss_terms({"depth": jnp.asarray(pred)[..., None]}, batch)
  berhu = losses.berhu_terms(jnp.asarray(pred[:1]), jnp.asarray(metric_target[:1]))
  np.testing.assert_allclose(float(terms["depth"][0]), float(berhu[0]), rtol=1e-5, atol=1e-4)
  assert int(terms["depth"][1]) == valid.sum()
