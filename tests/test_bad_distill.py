"""Bad input to `python -m hydrajax.train.distill`: a bad config, an output path that is a file,
missing or mismatched teacher weights and labels outside the classes each stop it with one
`error:` line naming the culprit (exit 2) before any label is written."""
import pytest

from tests.helpers import fabricate
from tests.helpers.configs import kitti_config, nyud_config

from hydrajax.train import config_check
from hydrajax.train import distill
from hydrajax.data import BadSampleError


def cli(capsys, config, out, **kwargs):
  """distill.run as its command line runs it -> (exit code, stderr)."""
  with pytest.raises(SystemExit) as exit_:
    with config_check.exit_on_bad_input():
      distill.run(config, str(out), **kwargs)
  return exit_.value.code, capsys.readouterr().err


def assert_one_error_line(err, *words):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert all(str(w) in lines[0] for w in words), err


def test_config_is_checked_before_the_teacher_is_read(kitti_dir, tmp_path, capsys):
  config = kitti_config(kitti_dir)
  config.num_classes = 4
  config.kitti.depth_weight = -1.0
  code, err = cli(capsys, config, tmp_path / "out", weights=str(tmp_path / "missing.npz"))
  assert code == 2
  assert_one_error_line(err, "config.num_classes=4: expected at least 6",
                        "config.kitti.depth_weight=-1.0")
  assert not (tmp_path / "out").exists()


def test_output_that_is_a_file(kitti_dir, tmp_path, capsys):
  (tmp_path / "out").write_text("x")
  code, err = cli(capsys, kitti_config(kitti_dir), tmp_path / "out",
                  weights=str(tmp_path / "missing.npz"))
  assert code == 2
  assert_one_error_line(err, tmp_path / "out", "is a file")


def test_missing_teacher_weights_and_checkpoints(kitti_dir, tmp_path, capsys):
  code, err = cli(capsys, kitti_config(kitti_dir), tmp_path / "out",
                  weights=str(tmp_path / "missing.npz"))
  assert code == 2
  assert_one_error_line(err, "weights file not found", tmp_path / "missing.npz")
  code, err = cli(capsys, kitti_config(kitti_dir), tmp_path / "out", workdir=str(tmp_path))
  assert code == 2
  assert_one_error_line(err, f"no checkpoint in {tmp_path}/checkpoints")
  assert not (tmp_path / "out").exists()


def test_teacher_of_other_classes_names_both(kitti_dir, weights_file, tmp_path,
                                             capsys):
  code, err = cli(capsys, kitti_config(kitti_dir), tmp_path / "out", weights=weights_file)
  assert code == 2
  assert_one_error_line(err, weights_file, "40 classes but config.num_classes=6")
  assert not (tmp_path / "out").exists()


def test_labels_outside_the_classes_name_the_file(weights_file, tmp_path):
  fabricate.nyud_with_bad_labels(str(tmp_path / "nyud"))
  with pytest.raises(BadSampleError, match=r"masks/000002.png.*: segmentation labels 41, 45"):
    distill.run(nyud_config(tmp_path / "nyud"), str(tmp_path / "out"), weights=weights_file)
  assert not (tmp_path / "out").exists()
