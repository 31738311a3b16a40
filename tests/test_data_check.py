"""`hydrajax-data check`: the report of a fabricated folder, its problems by file, its exit
status, and the depth-scale hint."""
import subprocess
import sys

import numpy as np
from PIL import Image

from hydrajax.data import check
from tests.helpers import fabricate


def _run(root, *args):
  return subprocess.run([sys.executable, "-m", "hydrajax.data.check", str(root), *args],
                        capture_output=True, text=True, timeout=120)


def test_a_good_folder_reports_counts_classes_depth_and_exits_0(tmp_path, capsys):
  fabricate.folder(tmp_path, n=5)
  (tmp_path / "classes.txt").write_text("floor\nwall\nchair\nlamp\n")
  assert check.main(["check", str(tmp_path)]) == 0
  out = capsys.readouterr()
  assert "train      4 images: 3 with segm, 3 with depth, 2 both, 0 neither" in out.out
  assert "val        1 images" in out.out
  assert "never seen: lamp" in out.out  # fabricate.folder uses ids 0, 1, 2
  assert "depth (m): min" in out.out and "hint" not in out.out
  assert "no problems: ready to train" in out.out


def test_every_problem_is_named_and_exits_1(tmp_path):
  fabricate.folder(tmp_path, n=4)
  t = tmp_path / "train"
  (t / "images" / "f0.png").write_bytes(b"not a png")
  Image.fromarray(np.zeros((5, 5), np.uint16)).save(t / "depth" / "f1.png")  # wrong size
  Image.fromarray(np.ones((64, 96), np.uint16)).save(t / "depth" / "ghost.png")  # orphan
  Image.fromarray(np.full((64, 96), 9, np.uint8)).save(t / "segm" / "f2.png")  # id 9 of 3
  out = _run(tmp_path)
  assert out.returncode == 1
  assert "4 problem(s) that stop training" in out.stdout, out.stdout
  assert f"{t}/images/f0.png: unreadable" in out.stdout
  assert f"{t}/depth/f1.png: size 5x5 differs from its image {t}/images/f1.png" in out.stdout
  assert f"{t}/depth/ghost.png: a label without an image" in out.stdout
  assert f"{t}/segm/f2.png: class id 9" in out.stdout


def test_depth_in_the_wrong_unit_gets_a_hint(tmp_path):
  fabricate.folder(tmp_path, n=3)  # millimetre PNGs up to 9 m
  report = check.inspect(str(tmp_path), depth_scale=1.0)
  text = check.format_report(report, 1.0)
  assert "hint: median depth" in text and "is depth_scale 1 right?" in text
  assert report.ok  # a hint, not an error: the data may really be far away


def test_a_missing_root_is_a_problem_not_a_traceback(tmp_path, capsys):
  assert check.main(["check", str(tmp_path / "nope")]) == 1
  out = capsys.readouterr()
  assert "not a directory" in out.out and not out.err


def test_symlinks_out_of_the_root_and_millimetre_float_depth_are_named(tmp_path):
  root = tmp_path / "data"
  fabricate.folder(root, n=3)
  (tmp_path / "outside.png").write_bytes((root / "train" / "images" / "f0.png").read_bytes())
  (root / "train" / "images" / "f9.png").symlink_to(tmp_path / "outside.png")
  np.save(root / "train" / "depth" / "f0.npy", np.full((64, 96), 2500.0, np.float32))
  (root / "train" / "depth" / "f0.png").unlink()
  report = check.inspect(str(root))
  messages = [m for _, m in report.problems]
  assert any(m.startswith(f"{root}/train/images/f9.png: a symbolic link out of the dataset "
                          f"root") for m in messages), messages
  assert any(m.startswith(f"{root}/train/depth/f0.npy: float depth of median 2500")
             for m in messages), messages
