"""The training step and loop: learning, device-count invariance, exact resume, NaN stop,
and the NYUD / KITTI configs on fabricated data."""
import os
import shutil

import jax
import numpy as np
import pytest

from tests.helpers import fabricate
from tests.helpers.configs import stop_after_checkpoint, tiny_config

from hydrajax.train import checkpoint
from hydrajax.evaluate import loop as evaluate
from hydrajax.train import loop as train_lib


@pytest.fixture(scope="module")
def batch():
  """One global batch (4, 64, 96) from the synthetic pipeline."""
  config = tiny_config()
  return jax.tree.map(np.asarray, next(iter(train_lib._train_pipeline(config, None))))


def _run_steps(config, batch, num_devices, steps, cast=lambda tree: tree):
  """`steps` train steps of `config` on `batch` split over `num_devices`: (host state,
  losses). `cast` maps the fresh state (e.g. to float64)."""
  devices = jax.local_devices()[:num_devices]
  step_fn = train_lib.pmapped_train_step(config, devices)
  loss_weights = train_lib.task_loss_weights(config)
  state = train_lib.replicate(cast(train_lib.create_train_state(config)), devices)
  split = {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}
  losses = []
  for i in range(steps):
    state, m = step_fn(state, split, loss_weights)
    losses.append(float(m["loss"][0]))
  return train_lib.unreplicate(state), losses


def test_training_steps_reduce_the_loss(batch):
  _, losses = _run_steps(tiny_config(), batch, 1, 6)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses


def _to_float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64)
                      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tree)


@pytest.fixture(scope="module")
def float64_one_device(batch):
  """Two float64 steps on one device (BN statistics move at both, params and momentum at the
  second: warm-up gives lr 0 at the first). The config is test_multiprocess's, so the
  4-device step compiled there serves here too."""
  config = tiny_config(dtype="float64")
  with jax.enable_x64(True):
    one, losses = _run_steps(config, batch, 1, 2, _to_float64)
  return config, one, losses


# 4 devices; 2 processes x 2 devices against 1 x 4 is tests/test_multiprocess.py.
@pytest.mark.parametrize("num_devices", [4])
def test_step_on_several_devices_matches_one_device_in_float64(batch, float64_one_device,
                                                               num_devices):
  """N devices (global BN statistics, psummed gradients, counts summed over devices) give
  the one-device steps. Checked in float64: in float32 the stem kernel's gradient under
  BatchNorm cancels to ~1e-2 of itself on these flat scenes, and its digits depend on the
  summation order, i.e. on the CPU and the device count. In float64 that same cancellation
  costs ~1e-11; a wrong reduction (pmean for psum, per-device BN statistics, a per-device
  berHu threshold) is off by 1e-3 or more."""
  config, one, losses_one = float64_one_device
  with jax.enable_x64(True):
    many, losses_many = _run_steps(config, batch, num_devices, 2, _to_float64)
  np.testing.assert_allclose(losses_many, losses_one, rtol=1e-12)  # float64 sums, 1e4x eps
  for name in ("params", "batch_stats", "opt_state"):
    ours = jax.tree_util.tree_leaves_with_path(getattr(many, name))
    for (path, x), y in zip(ours, jax.tree.leaves(getattr(one, name))):
      x, y = np.asarray(x), np.asarray(y)
      if not np.issubdtype(y.dtype, np.floating):  # step counters
        np.testing.assert_array_equal(x, y)
        continue
      assert x.dtype == np.float64, (name, jax.tree_util.keystr(path), x.dtype)
      # Relative to the tensor's largest value (or 1e-6 if it is ~0): float64 rounding
      # times the worst cancellation (~1e5-1e6 here) stays far below 1e-9.
      scale = max(float(np.abs(y).max()), 1e-6)
      assert float(np.abs(x - y).max()) <= 1e-9 * scale, (name, jax.tree_util.keystr(path))


class _Killed(Exception):
  pass


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
  """A run killed right after its step-2 checkpoint (as a crash would leave it)."""
  workdir = str(tmp_path_factory.mktemp("killed"))
  with pytest.raises(_Killed), stop_after_checkpoint(2, _Killed):
    train_lib.train_and_evaluate(tiny_config(), workdir)
  return workdir


def _final_state(workdir, config):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  state = ckpt.restore(step, train_lib.create_train_state(config))
  ckpt.close()
  return step, state


def test_resumed_run_matches_uninterrupted_run(killed_run, tmp_path):
  config = tiny_config()
  straight = str(tmp_path / "straight")
  train_lib.train_and_evaluate(config, straight)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(killed_run, resumed)
  # A save killed mid-write leaves an Orbax temporary directory: it must be ignored.
  os.makedirs(os.path.join(resumed, "checkpoints", "4.orbax-checkpoint-tmp-1234", "state"))
  result = train_lib.train_and_evaluate(config, resumed)
  step_a, a = _final_state(straight, config)
  step_b, b = _final_state(resumed, config)
  assert step_a == step_b == 4 and int(b.step) == 4
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))
  assert "miou" in result and "rmse" in result
  ev = evaluate.run(config, resumed)
  assert os.path.isfile(os.path.join(resumed, "eval", "samples.png"))
  assert os.path.isfile(os.path.join(resumed, "eval", "metrics.json"))
  np.testing.assert_allclose(ev["rmse"], result["rmse"], rtol=1e-6)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(killed_run, tmp_path,
                                                                   monkeypatch):
  workdir = str(tmp_path / "nan")
  shutil.copytree(killed_run, workdir)
  config = tiny_config()
  before = _final_state(workdir, config)[1]
  # A NaN loss weight makes the loss NaN; a config holding one is refused, so it goes
  # straight into the step's loss_weights input.
  normal = train_lib.task_loss_weights
  monkeypatch.setattr(train_lib, "task_loss_weights",
                      lambda c: {**normal(c), "depth": float("nan")})
  with pytest.raises(FloatingPointError, match="non-finite loss at step 3.*step 2"):
    train_lib.train_and_evaluate(config, workdir)
  step, after = _final_state(workdir, config)
  assert step == 2
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)
    assert np.all(np.isfinite(y))


def test_nyud_and_kitti_configs_train_and_evaluate_on_fabricated_data(tmp_path):
  from configs import kitti, nyud
  fabricate.nyud(tmp_path / "nyud")
  fabricate.kitti(tmp_path / "kitti")
  # What is tested is each config's data side (reader, scaling, crops, evaluation protocol).
  # NYUD's 40 classes are tiny_config's: with its learning rates and run length, which fix
  # the compiled step, the NYUD run reuses the step (and the 64x96 evaluation) compiled above.
  tiny = tiny_config()
  for name, module in (("nyud", nyud), ("kitti", kitti)):
    config = module.get_config("runlocal")
    if name == "nyud":
      config.update({k: tiny[k] for k in ("lr_encoder", "lr_decoder", "num_train_steps")})
    config.data_dir = str(tmp_path / name)
    config.eval.max_examples = 4
    result = train_lib.train_and_evaluate(config, str(tmp_path / f"run_{name}"))
    assert np.isfinite(result["rmse"]) and 0.0 <= result["miou"] <= 1.0, (name, result)
    assert result["depth_pixels"] > 0 and result["segm_pixels"] > 0
    assert os.path.isdir(tmp_path / f"run_{name}" / "checkpoints" / str(config.num_train_steps))
