"""Bad input to evaluation (evaluate.py, hydrajax.evaluate.loop.run): a bad config, weights of
other classes or tasks, unreadable weights and labels outside the classes each stop it with
one message naming what is wrong, before any number is produced."""
import pytest

from tests.helpers import fabricate
from tests.helpers.configs import nyud_config

import hydrajax
from hydrajax.train import config_check
from hydrajax.evaluate import loop as evaluate
from hydrajax.data import BadSampleError


def synthetic_config():
  from configs import synthetic
  return synthetic.get_config("runlocal")


@pytest.fixture
def nothing_evaluated(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("evaluation started despite bad input")
  monkeypatch.setattr(evaluate, "evaluate", refuse)


def test_weights_of_other_classes_are_refused_naming_both(weights_file, nothing_evaluated,
                                                          tmp_path):
  with pytest.raises(ValueError) as err:
    evaluate.run(synthetic_config(), str(tmp_path), weights_file)
  message = str(err.value)
  assert f"{weights_file} is a model with 40 classes" in message
  assert "config has num_classes=7" in message and "'synthetic'" in message
  assert not (tmp_path / "eval").exists()


def test_weights_of_other_tasks_are_refused_naming_both(nothing_evaluated, tmp_path):
  path = str(tmp_path / "depth.npz")
  hydrajax.save(path, hydrajax.init(0, num_classes=0, tasks=("depth",)))
  with pytest.raises(ValueError, match="0 classes and tasks depth, but the config has "
                                       "num_classes=7 and tasks segm,depth"):
    evaluate.run(synthetic_config(), str(tmp_path), path)


def test_config_is_checked_before_the_weights_are_read(nothing_evaluated, tmp_path):
  config = synthetic_config()
  config.eval.crop = "eigen_kitti"
  config.eval.max_depth = -1.0
  with pytest.raises(config_check.ConfigError) as err:
    evaluate.run(config, str(tmp_path), str(tmp_path / "missing.npz"))
  assert "config.eval.crop='eigen_kitti'" in str(err.value)
  assert "config.eval.max_depth=-1.0: expected a number >= 0" in str(err.value)


@pytest.mark.parametrize("content,message", [
    (None, "weights file not found"),
    (b"not weights", "not a hydrajax weights file (.npz): not a zip archive"),
    (b"PK\x03\x04truncated", "not a hydrajax weights file"),
])
def test_unreadable_weights_print_one_line_and_exit_2(content, message, nothing_evaluated,
                                                      tmp_path, capsys):
  path = tmp_path / "w.npz"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(SystemExit) as exit_:
    with config_check.exit_on_bad_input():  # what evaluate.py's main does
      evaluate.run(synthetic_config(), str(tmp_path), str(path))
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
  assert str(path) in err


def test_checkpoint_workdir_without_checkpoints_is_named(nothing_evaluated, tmp_path):
  with pytest.raises(FileNotFoundError, match=f"no checkpoint in {tmp_path}/checkpoints"):
    evaluate.run(synthetic_config(), str(tmp_path))


def test_labels_outside_the_classes_stop_evaluation_naming_the_file(weights_file, tmp_path):
  fabricate.nyud_with_bad_labels(str(tmp_path / "nyud"))
  lists = tmp_path / "nyud"  # the bad mask in the evaluated split too
  (lists / "val_list_depth.txt").write_text((lists / "train_list_depth.txt").read_text())
  with pytest.raises(BadSampleError, match=r"masks/000002.png.*: segmentation labels 41, 45"):
    evaluate.run(nyud_config(tmp_path / "nyud", {"eval.max_examples": 0}),
                 str(tmp_path / "run"), weights_file)
  assert not (tmp_path / "run" / "eval" / "metrics.json").exists()


def test_command_line_prints_one_error_line_without_orbax_info_logs(tmp_path):
  """evaluate.py restores a checkpoint (Orbax logs ~30 INFO lines per restore) of a 6-class
  model against the 40-class synthetic config: stderr is the error alone (train.py and
  evaluate.py lower absl's verbosity unless --verbosity is given)."""
  import os
  import subprocess
  import sys

  from hydrajax.train import checkpoint
  from tests.helpers.configs import ROOT

  ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")
  ckpt.save(1, hydrajax.init(0, num_classes=6))
  ckpt.close()
  proc = subprocess.run([sys.executable, "evaluate.py", "--config", "configs/synthetic.py",
                         "--workdir", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("error: ") and "6 classes" in lines[-1], proc.stderr
  assert not [l for l in lines if "orbax" in l or "checkpoint_manager" in l], proc.stderr
