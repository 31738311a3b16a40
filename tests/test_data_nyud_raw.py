"""NYUDv2 raw frames through TFDS (mock data, no TensorFlow) as depth-only samples."""

import numpy as np
import tensorflow_datasets as tfds

from hydrajax.data import Mixture, NYUDv2Raw, SyntheticScenes, train_dataset


def test_nyud_raw_reads_tfds_data_source_as_depth_only_samples():
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        source = NYUDv2Raw("train")
        assert len(source) == 3 and source.key(2) == "train_000002"
        s = source[1]
    assert s["image"].shape == (480, 640, 3) and s["image"].dtype == np.uint8
    assert s["depth"].shape == (480, 640) and s["depth"].dtype == np.float32
    assert (s["depth"] >= 0).all() and (s["segm"] == 255).all()


def test_nyud_raw_accepts_any_sequence_and_zeroes_bad_depth():
    depth = np.array([[1.5, np.nan], [-1.0, np.inf]], np.float16)
    raw = NYUDv2Raw("validation", data_source=[{"image": np.zeros((2, 2, 3), np.uint8), "depth": depth}])
    np.testing.assert_allclose(raw[0]["depth"], [[1.5, 0.0], [0.0, 0.0]])


def test_nyud_raw_mixes_with_labelled_frames():
    frames = [{"image": np.zeros((48, 64, 3), np.uint8), "depth": np.ones((48, 64), np.float16)}] * 4
    mix = Mixture([SyntheticScenes(4, height=48, width=64), NYUDv2Raw(data_source=frames)], [0.5, 0.5])
    batch = next(iter(train_dataset(mix, global_batch_size=8, crop_size=16, seed=0)))
    depth_only = (batch["segm"] == 255).all(axis=(1, 2))
    assert 0 < depth_only.sum() < 8
