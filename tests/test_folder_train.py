"""From a folder to a photo: synthetic rooms written as a folder train exactly as the
synthetic source does (same seed, same losses), the run leaves weights with the folder's
classes, evaluation names classes, and predict takes the run's --workdir."""
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

import hydrajax
from hydrajax.data import synthetic
from hydrajax.evaluate import loop as evaluate
from hydrajax.inference import predict
from hydrajax.train import loop as train_lib
from tests.helpers.configs import tiny_config


def _write_folder(root, config):
  """The config's synthetic train and val scenes as ROOT/{train,val}: PNG images, id masks,
  float metres .npy depth (lossless: the same samples), classes.txt and intrinsics.json."""
  s = config.synthetic
  for split, num, seed in (("train", s.num_train, s.seed), ("val", s.num_val, s.seed + 1)):
    scenes = synthetic.SyntheticScenes(num, s.height, s.width, seed=seed)
    for d in ("images", "segm", "depth"):
      os.makedirs(root / split / d)
    for i in range(num):
      sample = scenes[i]
      Image.fromarray(sample["image"]).save(root / split / "images" / f"{i:06d}.png")
      Image.fromarray(sample["segm"]).save(root / split / "segm" / f"{i:06d}.png")
      np.save(root / split / "depth" / f"{i:06d}.npy", sample["depth"])
  (root / "classes.txt").write_text("\n".join(synthetic.SYNTHETIC_CLASSES) + "\n")
  (root / "intrinsics.json").write_text('{"fx": 83.1, "fy": 83.1, "cx": 48, "cy": 32}')


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("folder_runs")
  # tiny_config's 4 steps: its compiled step, which other files compile too (the run's
  # compilation cache), serves both runs.
  plain = tiny_config(checkpoint_every_steps=4)
  _write_folder(base / "data", plain)
  mine = tiny_config(checkpoint_every_steps=4, dataset="folder", data_dir=str(base / "data"))
  mine.folder = ml_collections.ConfigDict({"depth_scale": 1000.0, "val_fraction": 0.1,
                                           "split_seed": 0, "skip_bad": False})
  result_plain = train_lib.train_and_evaluate(plain, str(base / "synthetic"))
  result_mine = train_lib.train_and_evaluate(mine, str(base / "folder"))
  return base, mine, result_plain, result_mine


def test_folder_of_synthetic_rooms_trains_like_the_synthetic_source(runs):
  base, _, result_plain, result_mine = runs
  plain, mine = _losses(base / "synthetic"), _losses(base / "folder")
  assert len(plain) == 4 and plain == mine
  for key in ("miou", "rmse", "delta1"):
    assert result_mine[key] == result_plain[key], key
  assert list(result_mine["per_class_iou"])[:7] == list(synthetic.SYNTHETIC_CLASSES)


def test_run_leaves_final_and_best_weights_with_the_folders_metadata(runs):
  base, mine, _, _ = runs
  directory = base / "folder" / "weights"
  assert sorted(os.listdir(directory)) == ["best.npz", "final.npz"]
  meta = hydrajax.weights.read_meta(directory / "final.npz")
  names = list(synthetic.SYNTHETIC_CLASSES) + [str(i) for i in range(7, 40)]
  assert meta["dataset"] == "folder" and meta["class_names"] == names and meta["step"] == 4
  assert np.shape(meta["palette"]) == (40, 3)
  assert meta["intrinsics"] == {"fx": 83.1, "fy": 83.1, "cx": 48.0, "cy": 32.0, "width": 96,
                                "height": 64}
  assert "miou" in hydrajax.weights.read_meta(directory / "best.npz")["metrics"]
  loaded = hydrajax.load(directory / "final.npz")
  assert loaded["meta"]["class_names"] == names
  assert hydrajax.weights.from_workdir(base / "folder") == str(directory / "best.npz")


def test_evaluate_names_classes_and_draws_a_legend(runs):
  base, mine, _, result = runs
  ev = evaluate.run(mine, str(base / "folder"))
  with open(base / "folder" / "eval" / "metrics.json") as f:
    stored = json.load(f)
  assert "floor" in stored["per_class_iou"] and stored["miou"] == ev["miou"]
  grid = np.asarray(Image.open(base / "folder" / "eval" / "samples.png"))[..., :3]
  floor = hydrajax.weights.read_meta(base / "folder" / "weights" / "final.npz")["palette"][0]
  legend = grid[-24:]  # the legend strip under the rows: a swatch of each class shown
  assert (legend == np.asarray(floor, np.uint8)).all(-1).any()


def test_predict_takes_the_runs_workdir(runs, tmp_path):
  base = runs[0]
  photo = tmp_path / "photo.jpg"
  Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(photo)
  code = predict.main(["--workdir", str(base / "folder"), str(photo), "--out",
                       str(tmp_path / "out"), "--no-progress"])
  assert code == 0
  assert os.path.isfile(tmp_path / "out" / "photo_vis.png")
  assert predict.main(["--workdir", str(tmp_path), str(photo), "--out",
                       str(tmp_path / "o2")]) == 2  # no weights there: named, exit 2


def test_fine_tuning_from_40_classes_keeps_all_but_the_segmentation_heads_last_conv(tmp_path):
  from configs import folder as folder_config
  from hydrajax.train import config_check
  from tests.helpers import fabricate
  fabricate.folder(tmp_path / "data")
  official = hydrajax.init(0, num_classes=40)
  hydrajax.save(tmp_path / "nyud.npz", official)
  config = folder_config.get_config("runlocal")
  config.data_dir, config.init_from = str(tmp_path / "data"), str(tmp_path / "nyud.npz")
  config = config_check.validate(config)
  assert config.num_classes == 3
  start = hydrajax.weights.flatten(train_lib.initial_variables(config))
  kept = hydrajax.weights.flatten({k: official[k] for k in ("params", "batch_stats")})
  fresh = sorted(k for k in start if not np.array_equal(start[k], kept[k]))
  assert fresh == ["params/head_segm/segm/bias", "params/head_segm/segm/kernel"]
  assert start["params/head_segm/segm/kernel"].shape[-1] == 3
