"""Every config's `runlocal` variant builds its data sources on files fabricated in the real
formats (TFDS `nyu_depth_v2` mocked), and each source yields well-formed samples."""
import importlib
import inspect
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from hydrajax.train import config_check
from hydrajax.data import sources
from hydrajax.data import teacher
from tests.helpers import fabricate

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.dirname(default.__file__))
                 if f.endswith(".py") and f != "__init__.py")
FABRICATE = {"nyud": fabricate.nyud, "nyud_raw": fabricate.nyud, "kitti": fabricate.kitti,
             "kitti_semantics": fabricate.kitti_semantics, "folder": fabricate.folder}


def _config(name, tmp_path):
  get_config = importlib.import_module(f"configs.{name}").get_config
  if inspect.signature(get_config).parameters:
    config = get_config("runlocal")
  else:  # configs/default.py: the base every other config starts from
    config = default.shrink(get_config())
  assert config.dataset in sources.DATASETS, (name, config.dataset)
  if config.dataset in FABRICATE:
    FABRICATE[config.dataset](tmp_path)
    config.data_dir = str(tmp_path)
  return config


def _check_sample(sample, where):
  h, w = sample["image"].shape[:2]
  assert sample["image"].dtype == np.uint8 and sample["image"].shape == (h, w, 3), where
  assert sample["segm"].dtype == np.uint8 and sample["segm"].shape == (h, w), where
  assert sample["depth"].dtype == np.float32 and sample["depth"].shape == (h, w), where


def test_every_dataset_has_a_config():
  used = set()
  for name in CONFIGS:
    get_config = importlib.import_module(f"configs.{name}").get_config
    used.add(get_config().dataset)
  assert used == set(sources.DATASETS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_sources_on_fabricated_data(name, tmp_path):
  config = _config(name, tmp_path)
  config_check.validate(config, "train")  # the checks train.py runs first
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in ("train", "val"):
      source = sources.build_source(config, split)
      for i, part in enumerate(getattr(source, "sources", None) or [source]):
        assert len(part) > 0, (name, split, i)
        _check_sample(part[0], (name, split, i))


def test_nyud_raw_frames_take_segmentation_from_the_teacher(tmp_path):
  config = _config("nyud_raw", tmp_path / "data")
  config.teacher_dir = str(tmp_path / "teacher")
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    plain = sources.build_source(config, "train", with_teacher=False)
    raw = plain.sources[1]
    label = np.full(raw[0]["depth"].shape, 7, np.uint8)
    teacher.write_teacher_labels(config.teacher_dir, raw.key(0), segm=label)
    mixed = sources.build_source(config, "train")
    assert mixed.weights == [config.nyud_raw.labelled_weight, config.nyud_raw.raw_weight]
    assert (plain.sources[1][0]["segm"] == 255).all()  # raw frames: no segmentation
    np.testing.assert_array_equal(mixed.sources[1][0]["segm"], label)
    np.testing.assert_array_equal(mixed.sources[1][0]["depth"], raw[0]["depth"])
