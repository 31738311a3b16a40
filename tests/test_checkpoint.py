"""Checkpointer: which steps are kept (latest N plus the best), exact restore of arrays and
of the data iterator's position, and the errors a wrong target or option gives."""
import os
import re

import grain
import numpy as np
import pytest

from hydrajax.train import checkpoint


def _state(seed=0):
  """A small pytree with the dtypes a train state holds, plus uint8 and float64."""
  rng = np.random.default_rng(seed)
  return {
      "params": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                 "bias": rng.standard_normal(4).astype(np.float32)},
      "step": np.int32(7 + seed),
      "counts": rng.integers(0, 255, 5).astype(np.uint8),
      "ema": rng.standard_normal(2),  # float64
  }


def _iterator():
  return iter(grain.MapDataset.range(10).to_iter_dataset())


def _save_steps(ckpt, name, values):
  """Save steps 1.. with `{name: value}` metrics."""
  for step, value in enumerate(values, 1):
    ckpt.save(step, _state(), metrics={name: value, "other": 0.5})


def test_keeps_latest_two_plus_best_miou(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, best_metric="miou")
  _save_steps(ckpt, "miou", [0.1, 0.9, 0.2, 0.3, 0.4])
  assert ckpt.all_steps() == [2, 4, 5]
  assert sorted(os.listdir(tmp_path)) == ["2", "4", "5"]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  assert ckpt.metrics(2) == {"miou": 0.9, "other": 0.5}
  ckpt.close()


def test_best_mode_min_keeps_lowest_rmse(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, best_metric="rmse", best_mode="min")
  _save_steps(ckpt, "rmse", [3.0, 1.0, 2.0, 4.0, 5.0])
  assert ckpt.all_steps() == [2, 4, 5]
  assert ckpt.best_step() == 2
  ckpt.close()


def test_best_checkpoint_survives_reopening_the_directory(tmp_path):
  """A resumed run reads the kept steps' metrics back, so it does not drop the best."""
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, best_metric="miou")
  _save_steps(ckpt, "miou", [0.1, 0.9, 0.2])
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, best_metric="miou")
  ckpt.save(4, _state(), metrics={"miou": 0.3})
  ckpt.save(5, _state(), metrics={"miou": 0.4})
  assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2
  ckpt.close()


def test_nan_metric_is_dropped_and_never_becomes_best(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=1, best_metric="miou")
  ckpt.save(1, _state(), metrics={"miou": 0.2, "rmse": 1.0})
  ckpt.save(2, _state(), metrics={"miou": float("nan"), "rmse": 2.0})
  assert ckpt.metrics(2) == {"rmse": 2.0}
  assert ckpt.best_step() == 1
  ckpt.save(3, _state(), metrics={"miou": np.float32("nan"), "rmse": float("inf")})
  assert ckpt.metrics(3) is None  # nothing finite left: no metrics item at all
  assert ckpt.all_steps() == [1, 3]
  assert ckpt.best_step() == 1
  ckpt.close()


def test_best_metric_absent_from_metrics_does_not_break_saving(tmp_path):
  """A depth-only run evaluated without miou still saves, keeping only the latest steps."""
  ckpt = checkpoint.Checkpointer(tmp_path, keep=1, best_metric="miou")
  for step in (1, 2, 3):
    ckpt.save(step, _state(), metrics={"rmse": float(step)})
  assert ckpt.all_steps() == [3] and ckpt.best_step() is None
  ckpt.close()


def test_restore_round_trips_values_dtypes_and_iterator_position(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  state, data = _state(), _iterator()
  for _ in range(3):
    next(data)
  ckpt.save(3, state, data)
  expected_next = next(data)  # what a resumed run must see first
  next(data)
  fresh = _iterator()
  restored = ckpt.restore(3, _state(seed=1), fresh)
  assert next(fresh) == expected_next == 3
  ckpt.restore(3, _state(seed=1), data)  # an iterator that ran on is moved back too
  assert next(data) == expected_next
  flat = {"kernel": restored["params"]["kernel"], "bias": restored["params"]["bias"],
          "step": restored["step"], "counts": restored["counts"], "ema": restored["ema"]}
  want = {"kernel": state["params"]["kernel"], "bias": state["params"]["bias"],
          "step": state["step"], "counts": state["counts"], "ema": state["ema"]}
  for name, value in want.items():
    assert np.asarray(flat[name]).dtype == np.asarray(value).dtype, name
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  ckpt.close()


def test_restore_without_iterator_leaves_data_alone(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, _state())  # no iterator saved
  data = _iterator()
  next(data)
  ckpt.restore(1, _state(), data)
  assert next(data) == 1
  ckpt.close()


def test_orbax_tmp_dir_of_killed_save_is_ignored_and_removed(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(5, _state())
  ckpt.close()
  leftover = tmp_path / "7.orbax-checkpoint-tmp-123"
  os.makedirs(leftover / "state")
  ckpt = checkpoint.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 5 and ckpt.all_steps() == [5]
  ckpt.save(6, _state())  # waits for the cleanup started when the directory was opened
  assert not leftover.exists()
  assert ckpt.latest_step() == 6
  ckpt.close()


def test_restore_into_wrong_shape_raises_naming_checkpoint_and_leaf(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, _state())
  target = _state()
  target["params"]["kernel"] = np.zeros((3, 5), np.float32)  # e.g. another num_classes
  pattern = re.escape(f"checkpoint {tmp_path}/1 does not match") + r".*'kernel'.*\(3, 4\)"
  with pytest.raises(ValueError, match=pattern):
    ckpt.restore(1, target)
  ckpt.close()


def test_restore_into_wrong_structure_raises_naming_checkpoint(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, _state())
  target = _state()
  target["params"]["scale"] = np.ones(4, np.float32)
  with pytest.raises(ValueError, match=re.escape(f"checkpoint {tmp_path}/1 does not match")):
    ckpt.restore(1, target)
  ckpt.close()


def test_invalid_best_mode_raises(tmp_path):
  with pytest.raises(ValueError, match="best_mode must be 'max' or 'min'"):
    checkpoint.Checkpointer(tmp_path, best_metric="rmse", best_mode="lowest")


def test_restore_variables_reads_params_and_batch_stats_without_a_target(tmp_path):
  """Evaluation restores the network alone: no optimizer to build, values and dtypes kept."""
  state = dict(_state(), batch_stats={"mean": np.arange(3, dtype=np.float32)},
               opt_state=[{"trace": np.ones(4, np.float32)}])
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(3, state)
  got = ckpt.restore_variables(3)
  assert sorted(got) == ["batch_stats", "params"]
  for key in ("kernel", "bias"):
    np.testing.assert_array_equal(got["params"][key], state["params"][key])
    assert got["params"][key].dtype == np.float32
  np.testing.assert_array_equal(got["batch_stats"]["mean"], state["batch_stats"]["mean"])
  ckpt.close()


def test_restore_variables_of_a_state_without_params_names_the_checkpoint(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, {"step": np.int32(1)})
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path}/1") + ".*no params or batch_stats"):
    ckpt.restore_variables(1)
  ckpt.close()
