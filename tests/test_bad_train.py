"""Bad input to training (train.py, train_lib.train_and_evaluate): each mistake stops the
run at once with one message naming the field / file, before anything is loaded or
compiled; labels outside [0, num_classes) stop it naming the file; data worker errors reach
the user once, without teardown tracebacks."""
import os
import subprocess
import sys

import ml_collections
import pytest

from tests.helpers import fabricate
from tests.helpers.configs import ROOT, nyud_config, set_fields, tiny_config

from hydrajax.train import config_check
from hydrajax.train import loop as train_lib
from hydrajax.data import BadSampleError


def loose_config(overrides: dict | None = None):
  """tiny_config with fields set to anything (no ConfigDict type checks), as a hand-written
  config file can hold."""
  c = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
  return set_fields(c, overrides or {})


@pytest.fixture
def nothing_loaded(monkeypatch):
  """Fails the test if training gets as far as building the model state."""
  def refuse(config):
    raise AssertionError("the model state was built before the config was checked")
  monkeypatch.setattr(train_lib, "create_train_state", refuse)


BAD_FIELDS = [
    # The rows.
    ({"batch_size": 0}, "config.batch_size=0: expected an int > 0"),
    ({"lr_encoder": -1.0}, "config.lr_encoder=-1.0: expected a number >= 0"),
    ({"num_classes": 3}, "config.num_classes=3: expected at least 7"),
    # Types, ranges, names, combinations found by trying.
    ({"batch_size": "8"}, "config.batch_size='8': expected an int > 0"),
    ({"batch_size": 6, "num_devices": 4}, "config.batch_size=6 is not divisible by the 4 devices"),
    ({"num_devices": 8}, "config.num_devices=8: expected at most the 4 local devices"),
    ({"dataset": "coco"}, "config.dataset='coco': expected one of 'synthetic', 'nyud'"),
    ({"tasks": ("segm", "edges")}, "config.tasks=('segm', 'edges'): expected distinct names"),
    ({"tasks": ("(depth,)",)}, "expected distinct names from segm, depth, normals"),
    ({"schedule": "cosine"}, "config.schedule='cosine': expected one of 'poly'"),
    ({"eval.crop": "garg2"}, "config.eval.crop='garg2': expected one of 'none', 'garg'"),
    ({"best_metric": "loss"}, "config.best_metric='loss': expected a metric evaluation reports"),
    ({"tasks": ("segm",), "best_metric": "rmse"}, "config.best_metric='rmse'"),
    ({"best_mode": "min"}, "config.best_mode='min': expected 'max': miou is better when higher"),
    ({"step_boundaries": (0.5, 1.5)}, "increasing fractions of the run in (0, 1]"),
    ({"scale_range": (2.0, 0.5)}, "config.scale_range=(2.0, 0.5): expected (min, max)"),
    ({"crop_size": (64, 0)}, "config.crop_size=(64, 0): expected (height, width)"),
    ({"crop_size": (64, 96, 3)}, "config.crop_size=(64, 96, 3): expected (height, width)"),
    ({"momentum": 1.0}, "config.momentum=1.0: expected a number in [0, 1)"),
    ({"weight_decay": float("nan")}, "config.weight_decay=nan: expected a number >= 0"),
    ({"checkpoint_every_steps": 0}, "config.checkpoint_every_steps=0: expected an int >= 1"),
    ({"num_workers": -1}, "config.num_workers=-1: expected an int >= 0"),
    ({"flip": "yes"}, "config.flip='yes': expected True or False"),
    ({"loss_weights.segm": 0.0, "loss_weights.depth": 0.0}, "a positive weight for at least"),
    ({"synthetic.height": 0}, "config.synthetic.height=0: expected an int > 0"),
    ({"eval.min_depth": 0.0}, "config.eval.min_depth=0.0: expected a number > 0"),
    ({"eval.batch_size": 0}, "config.eval.batch_size=0: expected an int >= 1"),
    ({"dataset": "nyud"}, "config.data_dir='': expected the nyud directory"),
    ({"dataset": "nyud", "data_dir": "/no/such/dir"}, "expected an existing directory"),
    ({"init_from": "/no/such/weights.npz"}, "config.init_from='/no/such/weights.npz'"),
    ({"tasks": ("segm", "depth", "normals"), "dataset": "kitti", "num_classes": 6,
      "data_dir": ROOT}, "it has no surface normals"),
    # Schedules the run cannot follow, and fields that would be silently ignored.
    ({"schedule": "step", "step_boundaries": (0.5, 0.5)},
     "config.step_boundaries=(0.5, 0.5): expected strictly increasing fractions"),
    ({"grad_accum_steps": 5}, "config.grad_accum_steps=5: expected at most num_train_steps=4"),
    ({"warmup_steps": 4}, "config.warmup_steps=4: expected fewer than the run's 4 updates"),
    ({"grad_accum_steps": 2, "warmup_steps": 2},
     "config.warmup_steps=2: expected fewer than the run's 2 updates"),
    ({"prefetch_to_device": -1}, "config.prefetch_to_device=-1: expected an int >= 0"),
    ({"loss_weights.segm": 0.0}, "config.best_metric='miou': expected a metric of a trained "
                                 "task: loss_weights.segm is 0"),
    ({"coordinator_address": "10.0.0.1"}, "config.coordinator_address='10.0.0.1': expected "
                                          "'host:port'"),
    ({"coordinator_address": "10.0.0.1:1234"}, "config.coordinator_address='10.0.0.1:1234': "
                                               "expected '' without distributed=True"),
    ({"num_processes": 2}, "config.num_processes=2: expected 0 without distributed=True"),
    ({"num_processes": -1}, "config.num_processes=-1: expected an int >= 0"),
    ({"distributed": True, "num_processes": 2, "process_id": 2},
     "config.process_id=2: expected -1 (auto-detect) or 0..1"),
    ({"initialization_timeout": 0}, "config.initialization_timeout=0: expected an int >= 1"),
    ({"heartbeat_timeout": 2.5}, "config.heartbeat_timeout=2.5: expected an int >= 1"),
]


@pytest.mark.parametrize("overrides,message", BAD_FIELDS,
                         ids=[",".join(o) for o, _ in BAD_FIELDS])
def test_bad_field_stops_training_before_anything_is_built(overrides, message, nothing_loaded,
                                                           tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(config_check.ConfigError) as err:
    train_lib.train_and_evaluate(loose_config(overrides), str(workdir))
  assert message in str(err.value)
  assert "\n" not in str(err.value)
  assert not workdir.exists()


def test_teacher_dir_without_teacher_labels_is_named(nothing_loaded, tmp_path):
  with pytest.raises(config_check.ConfigError, match="config.teacher_dir=.*distill"):
    train_lib.train_and_evaluate(loose_config({"teacher_dir": str(tmp_path)}),
                                 str(tmp_path / "r"))


def test_every_bad_field_is_named_in_one_error():
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(loose_config({"batch_size": 0, "lr_decoder": -2.0, "eval.crop": "x"}))
  message = str(err.value)
  assert all(f in message for f in ("batch_size=0", "lr_decoder=-2.0", "eval.crop='x'"))


def test_missing_field_is_named():
  config = loose_config()
  with config.unlocked():
    del config.eval["crop"]
  with pytest.raises(config_check.ConfigError, match="config has no field 'eval.crop'"):
    config_check.validate(config)


@pytest.mark.parametrize("crop", [64, (64,)])
def test_one_number_for_an_hw_pair_means_a_square(crop):
  config = config_check.validate(loose_config({"crop_size": crop, "tasks": ("depth", "segm"),
                                               "step_boundaries": 0.5}))
  assert config.crop_size == (64, 64)
  assert config.tasks == ("segm", "depth") and config.step_boundaries == (0.5,)
  batch = next(iter(train_lib._train_pipeline(config, None)))
  assert batch["image"].shape == (4, 64, 64, 3)


def test_shipped_configs_are_valid(tmp_path):
  from configs import default, kitti, nyud, nyud_depth_teacher, synthetic
  for module in (synthetic, nyud, kitti, nyud_depth_teacher):
    for arg in (None, "runlocal"):
      config = module.get_config(arg)
      config.data_dir = str(tmp_path)
      config_check.validate(config, "train")
  config_check.validate(default.get_config(), "train")


def test_labels_outside_the_classes_stop_training_naming_the_file(tmp_path):
  fabricate.nyud_with_bad_labels(str(tmp_path))
  config = config_check.validate(nyud_config(tmp_path, {"num_workers": 0}))
  with pytest.raises(BadSampleError) as err:
    next(iter(train_lib._train_pipeline(config, None)))  # what train_and_evaluate reads
  message = str(err.value)
  assert "masks/000002.png" in message and "labels 41, 45 are outside [0, 40)" in message


def _run_train_py(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "train.py", "--workdir", str(tmp_path / "run")] + args,
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr


def test_command_line_config_error_is_one_line_and_exit_2(tmp_path):
  code, err = _run_train_py(["--config", "configs/synthetic.py", "--config.batch_size=0"],
                            tmp_path)
  assert code == 2
  assert err.strip().splitlines()[-1] == "error: config.batch_size=0: expected an int > 0"
  assert "Traceback" not in err
  assert not (tmp_path / "run").exists()


def test_command_line_worker_error_is_the_underlying_error_once(tmp_path):
  """The issue's first row on bad data: a one-number crop, 2 Grain workers, a corrupt PNG."""
  fabricate.nyud(tmp_path / "nyud", n=6, h=16, w=20, splits=("train",))
  fabricate.corrupt_nyud(tmp_path / "nyud")
  code, err = _run_train_py(
      ["--config", "configs/nyud.py:runlocal", f"--config.data_dir={tmp_path / 'nyud'}",
       "--config.crop_size=64", "--config.num_workers=2", "--config.batch_size=6"], tmp_path)
  assert code == 2
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and ("rgb/000001.png" in last or "masks/000003.png" in last)
  assert "Traceback" not in err and "Exception ignored" not in err, err


def test_unexpected_read_error_names_the_sample_files(tmp_path, monkeypatch):
  from hydrajax.data import pngio
  fabricate.nyud(tmp_path, n=6, h=16, w=20, splits=("train",))

  def broken(path, divisor, shape):
    raise RuntimeError("decoder crashed")
  monkeypatch.setattr(pngio, "read_depth", broken)
  config = config_check.validate(nyud_config(tmp_path, {"num_workers": 0}))
  with pytest.raises(BadSampleError, match=r"depth/0000\d\d.png: cannot read the sample "
                                           r"\(RuntimeError: decoder crashed\)"):
    next(iter(train_lib._train_pipeline(config, None)))


def test_normals_task_on_data_without_normals_is_refused_for_training(tmp_path):
  from hydrajax.data import sources
  fabricate.nyud(tmp_path, n=6, h=16, w=20, splits=("train",))  # list files without a normals column
  (tmp_path / "val_list_depth.txt").write_text((tmp_path / "train_list_depth.txt").read_text())
  config = config_check.validate(
      nyud_config(tmp_path, {"tasks": ("segm", "depth", "normals")}))
  with pytest.raises(ValueError, match="includes 'normals'.*has no surface normals"):
    sources.build_source(config, "train")
  assert len(sources.build_source(config, "val")) == 6  # evaluation does not score normals
