"""NYUDv2 prepared layout, the .mat preparation script, and the real sample frame."""

import os

import h5py
import numpy as np
import pytest
import scipy.io

from hydrajax.data import NYUDv2, pngio, prepare_nyud
from tests.helpers import fabricate

SAMPLES = os.path.join(os.path.dirname(__file__), "data", "nyud")


def test_nyud_reads_layout_with_depth_in_metres_and_ignore(tmp_path):
    fabricate.nyud(tmp_path, n=3, h=12, w=16, first=1, splits=("train",))
    source = NYUDv2(str(tmp_path), "train")
    assert len(source) == 3 and source.key(1) == "000002" and not source.has_normals
    s = source[1]
    assert s["image"].shape == (12, 16, 3) and s["image"].dtype == np.uint8
    assert (s["segm"][0] == 255).all() and s["segm"][2:].max() < 40
    assert s["depth"].dtype == np.float32
    np.testing.assert_allclose(s["depth"][2:], 3.0)  # frame 2: 3 m
    assert (s["depth"][1] == 0).all()


def test_nyud_reads_optional_normals_column(tmp_path):
    fabricate.nyud(tmp_path, n=3, h=12, w=16, first=1, normals=True, splits=("train",))
    s = NYUDv2(str(tmp_path), "train")[0]
    # 8-bit PNG normals: (v / 255) * 2 - 1 is within one 2/255 step of the written vector.
    np.testing.assert_allclose(s["normals"][0], [[0, 0, -1.0]] * 16, atol=0.01)
    assert (s["normals"][2] == 0).all()  # black = invalid


def test_nyud_lists_all_missing_files_at_construction(tmp_path):
    fabricate.nyud(tmp_path, n=3, h=12, w=16, first=1, splits=("train",))
    os.remove(tmp_path / "rgb" / "000001.png")
    os.remove(tmp_path / "depth" / "000003.png")
    with pytest.raises(FileNotFoundError) as e:
        NYUDv2(str(tmp_path), "train")
    assert "rgb/000001.png" in str(e.value) and "depth/000003.png" in str(e.value)


def test_nyud_real_sample_frame():
    image = pngio.read_rgb(f"{SAMPLES}/000464_rgb.png")
    depth = pngio.read_depth(f"{SAMPLES}/000464_depth.png", 5000.0, image.shape)
    segm = pngio.read_label(f"{SAMPLES}/000464_masks.png", image.shape)
    assert image.shape == (480, 640, 3)
    valid = depth > 0
    assert 0.2 < 1 - valid.mean() < 0.5  # about a third has no measurement
    assert 0.3 < depth[valid].min() and depth[valid].max() < 10.0
    labelled = segm[segm != 255]
    assert labelled.max() < 40 and 0.5 < labelled.size / segm.size


def _write_mats(tmp_path, n=4, h=6, w=8, v73_splits=False):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 3, w, h), dtype=np.uint8)  # MATLAB order as h5py sees it
    depths = rng.uniform(0.5, 9.0, (n, w, h))
    labels = rng.integers(0, 895, (n, w, h)).astype(np.uint16)
    with h5py.File(tmp_path / "labeled.mat", "w") as f:
        f["images"], f["depths"], f["labels"] = images, depths, labels
    train, test = np.array([[1], [3]]), np.array([[2], [4]])
    if v73_splits:
        with h5py.File(tmp_path / "splits.mat", "w") as f:
            f["trainNdxs"], f["testNdxs"] = train.T, test.T
    else:
        scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": train, "testNdxs": test})
    map_class = (np.arange(894) % 40 + 1)[None]
    scipy.io.savemat(tmp_path / "map.mat", {"mapClass": map_class})
    return images, depths, labels


def test_prepare_nyud_writes_layout_from_mat_files(tmp_path):
    images, depths, labels = _write_mats(tmp_path)
    out = tmp_path / "nyud"
    prepare_nyud.main(["--mat", str(tmp_path / "labeled.mat"), "--splits", str(tmp_path / "splits.mat"),
                       "--mapping", str(tmp_path / "map.mat"), "--out", str(out)])
    train, val = NYUDv2(str(out), "train"), NYUDv2(str(out), "val")
    assert len(train) == 2 and len(val) == 2 and train.key(1) == "000003"
    s = train[1]  # frame 3 -> index 2
    np.testing.assert_array_equal(s["image"], images[2].transpose(2, 1, 0))
    # Stored as uint16 metres * 5000: half a 2e-4 m step (elementwise numpy, any CPU alike).
    np.testing.assert_allclose(s["depth"], depths[2].T, atol=1e-4)
    raw = labels[2].T.astype(int)
    expected = np.where(raw == 0, 255, (raw - 1) % 40)
    np.testing.assert_array_equal(s["segm"], expected)


def test_prepare_nyud_reads_hdf5_splits_too(tmp_path):
    _write_mats(tmp_path, v73_splits=True)
    counts = prepare_nyud.prepare(str(tmp_path / "labeled.mat"), str(tmp_path / "splits.mat"),
                                  str(tmp_path / "map.mat"), str(tmp_path / "out"), progress=False)
    assert counts == {"train": 2, "val": 2}


def test_prepare_nyud_failure_leaves_nothing(tmp_path):
    _write_mats(tmp_path)
    with h5py.File(tmp_path / "bad.mat", "w") as f:  # labels out of range fail mid-way
        f["images"] = np.zeros((4, 3, 8, 6), np.uint8)
        f["depths"] = np.ones((4, 8, 6))
        f["labels"] = np.full((4, 8, 6), 2000, np.uint16)
    with pytest.raises(ValueError):
        prepare_nyud.prepare(str(tmp_path / "bad.mat"), str(tmp_path / "splits.mat"),
                             str(tmp_path / "map.mat"), str(tmp_path / "out"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["bad.mat", "labeled.mat", "map.mat", "splits.mat"]
