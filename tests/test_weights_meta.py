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


def _with_meta(src, dst, **fields):
  """A copy of weights file `src` whose meta entry has `fields` replaced (any JSON)."""
  import json
  with np.load(src) as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(arrays["__meta__"].tobytes())
  meta.update(fields)
  arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  np.savez(dst, **arrays)
  return str(dst)


@pytest.mark.parametrize("field,value,rule", [
    ("dataset", [], "must be a dataset name"),
    ("class_names", "floor", "must be a list of strings"),
    ("palette", [[1, 2, 3], [4, 5], [7, 8, 9]], r"must be \[r, g, b\] rows of 0-255"),
    ("intrinsics", {"fx": "500", "fy": 1, "cx": 1, "cy": 1, "width": 2, "height": 2},
     "must have fx, fy, cx, cy, width, height"),
    ("step", "7", "must be an integer >= 0"),
    ("metrics", [0.5], "must be an object of metric name: number"),
    ("align_corners", "yes", "must be true or false"),
    ("tasks", "segm", "must be a list of task names"),
    ("num_classes", 3.5, "must be an integer >= 0"),
    ("version", None, "must be an integer"),
    ("format", 1, "must be a string"),
])
def test_metadata_of_the_wrong_type_is_refused_on_load_naming_the_field(model, tmp_path, field,
                                                                        value, rule):
  weights.save(tmp_path / "good.npz", model, META)
  path = _with_meta(tmp_path / "good.npz", tmp_path / "bad.npz", **{field: value})
  for read in (weights.load, weights.read_meta):
    with pytest.raises(ValueError, match=rf"bad\.npz: metadata {field} {rule}"):
      read(path)


def test_predict_names_a_wrong_metadata_type_in_one_line(model, tmp_path, capsys):
  """`"dataset": []` once raised TypeError (unhashable) deep in predict's colour choice."""
  from hydrajax.inference import predict
  weights.save(tmp_path / "good.npz", model, META)
  path = _with_meta(tmp_path / "good.npz", tmp_path / "bad.npz", dataset=[])
  code = predict.main(["--weights", path, str(tmp_path / "x.png"), "--out",
                       str(tmp_path / "out"), "--no-progress"])
  assert code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {path}: metadata dataset must be a dataset name (a string), got []"]
