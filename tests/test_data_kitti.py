"""KITTI depth, semantics and KITTI-6 sources, on written files and the real sample frame."""

import os

import numpy as np
import pytest
from PIL import Image

from hydrajax.data import Kitti6, KittiDepth, KittiSemantics, Mixture, train_dataset
from hydrajax.data.kitti import KITTI6_PALETTE, decode_kitti6

SAMPLES = os.path.join(os.path.dirname(__file__), "data", "kitti")


def _rgb(path, h=10, w=30):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def test_kitti_depth_divides_by_the_configured_divisor(tmp_path):
    drive = "2011_09_26/2011_09_26_drive_0002_sync"
    _rgb(f"{tmp_path}/{drive}/image_02/data/0000000069.png")
    depth = np.zeros((10, 30), np.uint16)
    depth[5:, :] = 256 * 20  # 20 m with the benchmark divisor
    os.makedirs(f"{tmp_path}/gt")
    Image.fromarray(depth).save(f"{tmp_path}/gt/0000000069.png")
    (tmp_path / "eigen.txt").write_text(f"{drive}/image_02/data/0000000069.png gt/0000000069.png\n"
                                        f"{drive}/image_02/data/0000000069.png -\n")
    source = KittiDepth(str(tmp_path), str(tmp_path / "eigen.txt"))
    s = source[0]
    assert (s["segm"] == 255).all() and (s["depth"][:5] == 0).all()
    np.testing.assert_allclose(s["depth"][5:], 20.0)
    assert (source[1]["depth"] == 0).all()
    assert source.key(0) == f"{drive}/image_02/data/0000000069"
    s800 = KittiDepth(str(tmp_path), str(tmp_path / "eigen.txt"), depth_divisor=800.0)[0]
    np.testing.assert_allclose(s800["depth"][5:], 20.0 * 256 / 800)


def test_kitti_semantics_maps_cityscapes_ids_to_train_ids(tmp_path):
    _rgb(f"{tmp_path}/training/image_2/000000_10.png", 2, 4)
    os.makedirs(f"{tmp_path}/training/semantic")
    ids = np.array([[7, 8, 26, 23], [0, 1, 33, 255]], np.uint8)
    Image.fromarray(ids).save(f"{tmp_path}/training/semantic/000000_10.png")
    s = KittiSemantics(str(tmp_path))[0]
    assert s["segm"].tolist() == [[0, 1, 13, 10], [255, 255, 18, 255]]
    assert (s["depth"] == 0).all()


def test_kitti6_decodes_palette_colours_and_void(tmp_path):
    colours = KITTI6_PALETTE[np.array([[0, 1, 2, 3], [4, 5, 6, 0]])]
    assert decode_kitti6(colours).tolist() == [[0, 1, 2, 3], [4, 5, 255, 0]]
    colours[0, 0] = [1, 2, 3]
    with pytest.raises(ValueError, match="label.png"):
        decode_kitti6(colours, "label.png")


def test_kitti6_real_sample_decodes_to_valid_ids(tmp_path):
    (tmp_path / "list.txt").write_text(f"{SAMPLES}/000099_rgb.png\t{SAMPLES}/000099_segm_colour.png\n")
    s = Kitti6("/", str(tmp_path / "list.txt"))[0]
    assert s["image"].shape == (370, 1226, 3) and s["segm"].shape == (370, 1226)
    ids = set(np.unique(s["segm"]).tolist())
    assert ids <= {0, 1, 2, 3, 4, 5, 255} and len(ids) == 7
    assert 0.01 < (s["segm"] == 255).mean() < 0.2
    np.testing.assert_array_equal(np.load(f"{SAMPLES}/cmap_kitti.npy"), KITTI6_PALETTE)


def test_kitti_sources_mix_into_one_stream(tmp_path):
    _rgb(f"{tmp_path}/training/image_2/000000_10.png")
    os.makedirs(f"{tmp_path}/training/semantic")
    Image.fromarray(np.full((10, 30), 7, np.uint8)).save(f"{tmp_path}/training/semantic/000000_10.png")
    Image.fromarray(np.full((10, 30), 2560, np.uint16)).save(f"{tmp_path}/d.png")
    (tmp_path / "depth.txt").write_text("training/image_2/000000_10.png\td.png\n")
    mix = Mixture([KittiSemantics(str(tmp_path)), KittiDepth(str(tmp_path), str(tmp_path / "depth.txt"))])
    batch = next(iter(train_dataset(mix, global_batch_size=4, crop_size=8, scale_range=(1.0, 1.0))))
    segm_only = (batch["depth"] == 0).all(axis=(1, 2))
    depth_only = (batch["segm"] == 255).all(axis=(1, 2))
    assert (segm_only ^ depth_only).all() and segm_only.any() and depth_only.any()
