"""Weights metadata (class names, palette, intrinsics, dataset, step, metrics): written,
read back, kept through load -> save, checked against the model; --workdir picks a run's
best weights, else its final ones."""
import os

import numpy as np
import pytest

import hydrajax
from hydrajax import weights

META = {"dataset": "folder", "class_names": ["floor", "wall", "chair"],
        "palette": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8),
        "intrinsics": {"fx": 500.0, "fy": 500.0, "cx": 320.0, "cy": 240.0, "width": 640,
                       "height": 480}, "step": 7, "metrics": {"miou": 0.5}}


@pytest.fixture(scope="module")
def model():
  return hydrajax.init(0, num_classes=3)


def test_metadata_is_written_read_and_kept_through_load_and_save(model, tmp_path):
  weights.save(tmp_path / "a.npz", model, META)
  meta = weights.read_meta(tmp_path / "a.npz")
  assert meta["class_names"] == META["class_names"] and meta["palette"][2] == [7, 8, 9]
  assert meta["intrinsics"] == META["intrinsics"] and meta["num_classes"] == 3
  loaded = hydrajax.load(tmp_path / "a.npz")
  assert loaded["meta"]["dataset"] == "folder" and loaded["meta"]["step"] == 7
  hydrajax.save(tmp_path / "b.npz", loaded)
  assert weights.read_meta(tmp_path / "b.npz") == meta
  hydrajax.save(tmp_path / "plain.npz", model)
  assert "meta" not in hydrajax.load(tmp_path / "plain.npz")  # no metadata: as before


@pytest.mark.parametrize("bad,message", [
    ({"class_names": ["a", "b"]}, "class_names must be 3 strings"),
    ({"palette": [[1, 2, 3]]}, r"palette must be 3 \[r, g, b\] rows"),
    ({"intrinsics": {"fx": 1.0}}, "intrinsics must have fx, fy, cx, cy, width, height"),
    ({"colour": 1}, r"unknown weights metadata key\(s\) \['colour'\]"),
])
def test_metadata_that_does_not_fit_the_model_is_refused_naming_the_key(model, tmp_path, bad,
                                                                       message):
  with pytest.raises(ValueError, match=message):
    weights.save(tmp_path / "x.npz", model, bad)
  assert not os.path.exists(tmp_path / "x.npz")


def test_workdir_gives_best_else_final_weights(model, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"weights has no best\.npz or final\.npz"):
    weights.from_workdir(tmp_path)
  hydrajax.save(tmp_path / "weights" / "final.npz", model)
  assert weights.choose(workdir=str(tmp_path)) == str(tmp_path / "weights" / "final.npz")
  hydrajax.save(tmp_path / "weights" / "best.npz", model)
  assert weights.from_workdir(tmp_path) == str(tmp_path / "weights" / "best.npz")
  assert weights.choose(weights="w.npz") == "w.npz"
  with pytest.raises(ValueError, match="either --weights FILE.npz or --workdir"):
    weights.choose("w.npz", str(tmp_path))


def test_export_takes_a_workdir(model, tmp_path, capsys):
  from hydrajax.export import cli
  assert cli.main(["--workdir", str(tmp_path), "--format", "stablehlo", "--height", "32",
                   "--width", "32", "--out", str(tmp_path / "m.hlo")]) == 2
  assert "has no best.npz or final.npz" in capsys.readouterr().err
