"""Distillation writes labels that a source reads back and that fill only the missing parts:
fabricated KITTI (2 segm-only + 2 depth-only frames at 64x96) and random-weight teachers."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import fabricate
from tests.helpers.configs import kitti_config, nyud_config

import hydrajax
from hydrajax.train import distill
from hydrajax.data import sources
from hydrajax.data import pngio, teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGM_ONLY = ("img/s0", "img/s1")   # KITTI-6 frames: real segm, no depth
DEPTH_ONLY = ("img/d0", "img/d1")  # Eigen frames: real depth, no segm


def _files(out_dir, modality):
  path = os.path.join(out_dir, modality)
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _names(keys):
  return sorted(teacher._filename(k) for k in keys)


@pytest.fixture(scope="module")
def teacher_npz(tmp_path_factory):
  """A segm+depth teacher with KITTI's 6 classes, random weights."""
  path = str(tmp_path_factory.mktemp("teacher") / "teacher.npz")
  hydrajax.save(path, hydrajax.init(0, num_classes=6))
  return path


@pytest.fixture(scope="module")
def distilled(kitti_dir, teacher_npz, tmp_path_factory):
  """(counts, out_dir) of one distillation run over the fabricated training split."""
  out = str(tmp_path_factory.mktemp("distilled"))
  return distill.run(kitti_config(kitti_dir), out, weights=teacher_npz), out


def test_distill_writes_each_sample_only_the_modality_it_lacks(distilled):
  counts, out = distilled
  assert counts == {"segm": 2, "depth": 2, "samples": 4}
  assert _files(out, "segm") == _names(DEPTH_ONLY)
  assert _files(out, "depth") == _names(SEGM_ONLY)
  assert os.path.isfile(os.path.join(out, "teacher.json"))


def test_distilled_labels_are_the_teacher_argmax_and_depth(distilled, kitti_dir, teacher_npz):
  _, out = distilled
  variables = hydrajax.load(teacher_npz)
  raw = sources.build_source(kitti_config(kitti_dir), "train", with_teacher=False)
  checked = 0
  for part in raw.sources:
    for i in range(len(part)):
      image, key = part[i]["image"], part.key(i)
      pred = hydrajax.apply(variables, image)
      name = teacher._filename(key)
      if key in DEPTH_ONLY:
        segm = pngio.read_label(os.path.join(out, "segm", name), image.shape[:2])
        # Same compiled apply, same image: identical logits, so identical argmax anywhere.
        np.testing.assert_array_equal(segm, np.asarray(pred["segm"]).argmax(-1), err_msg=key)
      else:
        depth = pngio.read_depth(os.path.join(out, "depth", name), 256.0, image.shape[:2])
        # distill runs the same compiled apply on the same image (bit-identical); stored as
        # uint16 metres * 256, rounding moves a value by half a step (+ float32 rounding).
        np.testing.assert_allclose(depth, np.asarray(pred["depth"]), rtol=0,
                                   atol=0.5 / 256 + 1e-6, err_msg=key)
        assert (depth > 0).any(), key  # not a blank (all-invalid) label
      checked += 1
  assert checked == 4


def test_training_source_reads_teacher_labels_back_and_real_annotations_win(distilled, kitti_dir,
                                                                           tmp_path):
  out = str(tmp_path / "teacher")
  shutil.copytree(distilled[1], out)
  raw = sources.build_source(kitti_config(kitti_dir), "train", with_teacher=False)
  # Labels for the modalities samples do have (another teacher, sharing the directory):
  # the source must ignore them.
  for key in SEGM_ONLY:
    teacher.write_teacher_labels(out, key, segm=np.zeros((64, 96), np.uint8))
  for key in DEPTH_ONLY:
    teacher.write_teacher_labels(out, key, depth=np.full((64, 96), 3.0))
  filled = sources.build_source(kitti_config(kitti_dir, out), "train")
  assert [len(p) for p in filled.sources] == [len(p) for p in raw.sources] == [2, 2]
  for raw_part, part in zip(raw.sources, filled.sources):
    for i in range(len(part)):
      key, before, after = part.key(i), raw_part[i], part[i]
      np.testing.assert_array_equal(after["image"], before["image"])
      real, taught = ("segm", "depth") if key in SEGM_ONLY else ("depth", "segm")
      np.testing.assert_array_equal(after[real], before[real], err_msg=f"{key} {real}")
      ignored = 255 if taught == "segm" else 0
      assert (before[taught] == ignored).all(), key
      path = os.path.join(out, taught, teacher._filename(key))
      hw = before["image"].shape[:2]
      label = (pngio.read_label(path, hw) if taught == "segm"
               else pngio.read_depth(path, 256.0, hw))
      np.testing.assert_array_equal(after[taught], label, err_msg=f"{key} {taught}")


def test_second_run_without_overwrite_writes_nothing(distilled, kitti_dir, teacher_npz):
  _, out = distilled
  stamps = {(m, n): os.stat(os.path.join(out, m, n)).st_mtime_ns
            for m in ("segm", "depth") for n in _files(out, m)}
  counts = distill.run(kitti_config(kitti_dir), out, weights=teacher_npz)
  assert counts == {"segm": 0, "depth": 0, "samples": 0}
  assert {(m, n): os.stat(os.path.join(out, m, n)).st_mtime_ns for m, n in stamps} == stamps


def test_overwrite_relabels_the_same_missing_modalities(distilled, kitti_dir, teacher_npz):
  counts, first = distilled
  again = distill.run(kitti_config(kitti_dir), first, weights=teacher_npz, overwrite=True)
  assert again == counts
  assert _files(first, "segm") == _names(DEPTH_ONLY)
  assert _files(first, "depth") == _names(SEGM_ONLY)


def test_depth_only_teacher_writes_depth_for_segm_only_samples(kitti_dir, tmp_path):
  weights = str(tmp_path / "depth_teacher.npz")
  hydrajax.save(weights, hydrajax.init(1, num_classes=0, tasks=("depth",)))
  out = str(tmp_path / "out")
  counts = distill.run(kitti_config(kitti_dir), out, weights=weights)
  assert counts == {"segm": 0, "depth": 2, "samples": 2}
  assert _files(out, "depth") == _names(SEGM_ONLY)
  assert not os.path.exists(os.path.join(out, "segm"))
  filled = sources.build_source(kitti_config(kitti_dir, out), "train")
  for part in filled.sources:
    for i in range(len(part)):
      sample = part[i]
      assert (sample["segm"] == 255).all() == (part.key(i) in DEPTH_ONLY), part.key(i)
      assert (sample["depth"] > 0).any(), part.key(i)


def test_teacher_predicting_neither_segm_nor_depth_raises(kitti_dir, tmp_path):
  normals_only = hydrajax.init(2, num_classes=0, tasks=("normals",))
  source = sources.build_source(kitti_config(kitti_dir), "train", with_teacher=False)
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match="neither 'segm' nor 'depth'"):
    distill.distill(normals_only, source, out, progress=False)
  assert not os.path.exists(out)


def test_teacher_with_other_classes_than_the_config_is_refused(kitti_dir, variables, tmp_path):
  weights = str(tmp_path / "nyud40.npz")
  hydrajax.save(weights, variables)  # 40 NYUD classes; KITTI has 6
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match="40 classes but config.num_classes=6"):
    distill.run(kitti_config(kitti_dir), out, weights=weights)
  assert not os.path.exists(out)


def test_run_without_weights_or_workdir_raises(kitti_dir, tmp_path):
  with pytest.raises(ValueError, match="--weights"):
    distill.run(kitti_config(kitti_dir), str(tmp_path / "out"))


def test_command_line_writes_the_same_labels_as_run(distilled, kitti_dir, teacher_npz, tmp_path):
  _, expected = distilled
  out = str(tmp_path / "cli")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "hydrajax.train.distill", "--config", "configs/kitti.py:runlocal",
       f"--config.data_dir={kitti_dir}", "--weights", teacher_npz, "--out", out],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote 2 segm and 2 depth labels for 4 samples" in proc.stdout
  for modality in ("segm", "depth"):
    assert _files(out, modality) == _files(expected, modality)
    for name in _files(out, modality):
      a, b = (pngio.read_png(os.path.join(d, modality, name)) for d in (out, expected))
      np.testing.assert_array_equal(a, b, err_msg=f"{modality}/{name}")


def test_two_teachers_fill_a_folder_and_real_labels_win(variables, tmp_path):
  """A joint NYUD-40 teacher gives depth only (--only depth: its classes are not the
  folder's), a 3-class segmentation teacher the masks; one label directory."""
  from configs import folder as folder_config
  fabricate.folder(tmp_path / "data")  # f2: no depth, f3: no segm, f0 and f1: both
  config = folder_config.get_config("runlocal")
  config.data_dir, config.folder.val_fraction = str(tmp_path / "data"), 0.0
  depth_teacher, segm_teacher = str(tmp_path / "nyud40.npz"), str(tmp_path / "segm3.npz")
  hydrajax.save(depth_teacher, variables)
  hydrajax.save(segm_teacher, hydrajax.init(1, num_classes=3, tasks=("segm",)))
  out = str(tmp_path / "teacher")
  with pytest.raises(ValueError, match="or --only depth for its depth"):
    distill.run(config, out, weights=depth_teacher)
  assert distill.run(config, out, weights=depth_teacher, only="depth") == {
      "segm": 0, "depth": 1, "samples": 1}
  assert distill.run(config, out, weights=segm_teacher) == {"segm": 1, "depth": 0, "samples": 1}
  assert _files(out, "depth") == ["train__f2.png"] and _files(out, "segm") == ["train__f3.png"]
  config.teacher_dir = out
  raw = sources.build_source(config, "train", with_teacher=False)
  filled = sources.build_source(config, "train")
  keys = [filled.key(i) for i in range(len(filled))]
  assert keys == ["train/f0", "train/f1", "train/f2", "train/f3"]
  f2, f3 = filled[2], filled[3]
  assert (f2["depth"] > 0).any() and (raw[2]["depth"] == 0).all()
  np.testing.assert_array_equal(f2["segm"], raw[2]["segm"])        # its real mask
  assert (f3["segm"] != 255).all() and (raw[3]["segm"] == 255).all()
  np.testing.assert_array_equal(f3["depth"], raw[3]["depth"])      # its real depth
  for i in (0, 1):
    np.testing.assert_array_equal(filled[i]["segm"], raw[i]["segm"])
    np.testing.assert_array_equal(filled[i]["depth"], raw[i]["depth"])


def test_nothing_to_label_says_so_and_leaves_a_label_dir_training_accepts(weights_file,
                                                                          tmp_path, capsys):
  # Every fabricated NYUD frame has segmentation and depth: the teacher fills nothing.
  fabricate.nyud(tmp_path / "nyud", n=6, h=16, w=20)
  out = tmp_path / "teacher"
  counts = distill.run(nyud_config(tmp_path / "nyud"), str(out), weights=weights_file)
  assert counts["segm"] == counts["depth"] == 0
  assert "nothing to label" in capsys.readouterr().out
  config = nyud_config(tmp_path / "nyud")
  config.teacher_dir = str(out)
  assert len(sources.build_source(config, "train")) == 6  # a teacher_dir training reads
