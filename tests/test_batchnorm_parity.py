"""BatchNorm as PyTorch's BatchNorm2d (mobilenet_v2.BatchNorm), and the whole training step
against the authors' network trained in PyTorch (tests/helpers/train_parity.py), in float64.

Both frameworks normalise with the biased batch variance and move the running variance
toward the unbiased one (times n / (n - 1)); at 8 images of 64x96, n = 48 values per channel
at stride 32, a 2% difference per update if either used the biased variance there.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydrajax.models.mobilenet_v2 import BatchNorm  # noqa: E402
from tests.helpers import train_parity  # noqa: E402

# One torch thread: on a shared 2-core machine more threads only contend.
torch.set_num_threads(1)


def _input(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (3.0 * rng.standard_normal(shape) + 1.5).astype(np.float32)


def _fresh(x, **kw):
  bn = BatchNorm(use_running_average=False, **kw)
  return bn, bn.init(jax.random.key(0), x)


def test_running_variance_moves_toward_the_unbiased_variance_normalising_with_the_biased():
  x = _input((2, 3, 4, 5))  # n = 24 per channel
  bn, variables = _fresh(x, dtype=jnp.float32)
  y, updated = bn.apply(variables, x, mutable=["batch_stats"])
  flat = x.reshape(-1, 5).astype(np.float64)
  stats = updated["batch_stats"]
  np.testing.assert_allclose(stats["var"], 0.9 * 1.0 + 0.1 * flat.var(0, ddof=1), rtol=1e-6)
  np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-6, atol=1e-7)
  # n / (n - 1) = 24 / 23 would put the biased variance 4% off: well outside 1e-6.
  assert not np.allclose(stats["var"], 0.9 + 0.1 * flat.var(0), rtol=1e-3)
  want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), want, rtol=1e-5, atol=1e-5)


def test_synchronised_running_variance_uses_the_count_over_all_devices():
  """2 devices of 1x2x2 values each: n = 8 globally (n / (n - 1) = 8/7), not 4 (4/3)."""
  x = _input((2, 1, 2, 2, 3), seed=1)  # (device, N, H, W, C)
  bn = BatchNorm(use_running_average=False, dtype=jnp.float32, axis_name="b")
  variables = bn.init(jax.random.key(0), x[0])
  stats = jax.pmap(lambda v, x: bn.apply(v, x, mutable=["batch_stats"])[1],
                   axis_name="b", in_axes=(None, 0), devices=jax.local_devices()[:2])(
                       variables, x)["batch_stats"]
  flat = x.reshape(-1, 3).astype(np.float64)
  for device in range(2):
    np.testing.assert_allclose(stats["var"][device], 0.9 + 0.1 * flat.var(0, ddof=1),
                               rtol=1e-6)


def test_bfloat16_batch_norm_keeps_float32_statistics_and_bfloat16_output():
  x = jnp.asarray(_input((2, 3, 4, 5)), jnp.bfloat16)
  bn, variables = _fresh(x, dtype=jnp.bfloat16)
  y, updated = bn.apply(variables, x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  assert {v.dtype for v in jax.tree.leaves((variables, updated))} == {np.dtype(np.float32)}


def test_training_batch_norm_on_one_value_per_channel_names_the_layer_and_shape():
  x = _input((1, 1, 1, 5))
  bn = BatchNorm(use_running_average=False, name="bn")
  variables = bn.init(jax.random.key(0), x)  # init does not update: no error
  with pytest.raises(ValueError, match=r"BatchNorm bn: training needs more than 1 value per "
                                       r"channel, got input shape \(1, 1, 1, 5\)"):
    bn.apply(variables, x, mutable=["batch_stats"])


# ----------------------------------------------------------------- the whole training step

BATCH = dict(count=8, height=64, width=96)


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
  """hydrajax and PyTorch from the same converted weights on the same 8 rooms: 2 devices
  with synchronised BatchNorm, two updates at the recipe's rates: ((ours, losses), (ref,
  losses)). One compiled step; that 1 device gives what 2 and 4 devices give is
  tests/test_train.py's device-count check."""
  net, npz = train_parity.official_weights(str(tmp_path_factory.mktemp("official")))
  batch = train_parity.rooms(**BATCH)
  config = train_parity.recipe(npz, 2, 1.0, BATCH["count"])
  with jax.enable_x64(True):
    ours = train_parity.run_hydrajax(config, batch, 2)
  return ours, train_parity.run_torch(net, config, batch)


def test_first_update_with_synchronised_batch_norm_equals_pytorch(side_by_side):
  (after, losses), (ref_after, ref_losses) = side_by_side
  # Float64 through ~60 layers and their gradients: measured ~1e-14. A biased running
  # variance is off by 0.1 / n = 2e-3 of the variance at stride 32 (n = 48); a missing
  # weight decay by lr x 1e-5 = 1e-7 of a decoder parameter.
  assert abs(losses[0] - ref_losses[0]) <= 1e-9 * abs(ref_losses[0]), (losses, ref_losses)
  diffs = train_parity.relative_differences(after[0], ref_after[0])
  worst = max(diffs, key=diffs.get)
  assert diffs[worst] < 1e-8, (worst, diffs[worst])


def test_second_update_with_momentum_and_the_poly_schedule_equals_pytorch(side_by_side):
  (after, losses), (ref_after, ref_losses) = side_by_side
  assert abs(losses[1] - ref_losses[1]) <= 1e-9 * abs(ref_losses[1]), (losses, ref_losses)
  # The second update: momentum (0.9 x the first step's buffer), weight decay and the poly
  # schedule's second rate (0.5 ** 0.9 of the peak). Measured ~1e-13 here; 1e-5 allows for
  # train-mode BatchNorm on small maps amplifying rounding several hundred times per step on
  # other CPUs, yet a wrong momentum or schedule changes the update by >= 5% (>= 1e-3 of
  # the decoder's parameters).
  diffs = train_parity.relative_differences(after[1], ref_after[1])
  params = {k: v for k, v in diffs.items() if k.startswith("params/")}
  worst = max(params, key=params.get)
  assert params[worst] < 1e-5, (worst, params[worst])
  # The running statistics of update 2 are moved again by 0.1 x (batch statistic): a biased
  # variance is off by 0.1 / n of the variance, still > 1e-4 at stride 32.
  stats = {k: v for k, v in diffs.items() if k.startswith("batch_stats/")}
  worst = max(stats, key=stats.get)
  assert stats[worst] < 1e-8, (worst, stats[worst])
