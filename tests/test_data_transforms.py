"""Transforms keep image and labels aligned and correct depth and normals."""

import numpy as np

from hydrajax.data import transforms


def _pattern(h=48, w=64):
    # Image, segm and depth all encode the same pixel coordinates, so alignment is checkable.
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy * 4, xx * 3, np.zeros_like(xx)], -1).astype(np.uint8)
    segm = ((yy // 8) * 8 + xx // 8).astype(np.uint8)
    depth = (1.0 + (yy // 8) * 8 + xx // 8).astype(np.float32)
    normals = np.zeros((h, w, 3), np.float32)
    normals[..., 0], normals[..., 2] = 0.6, -0.8
    return {"image": image, "segm": segm, "depth": depth, "normals": normals}


def test_scale_divides_depth_and_keeps_labels_nearest():
    out = transforms.scale(_pattern(), 2.0)
    assert out["image"].shape == (96, 128, 3) and out["segm"].shape == (96, 128)
    assert set(np.unique(out["segm"])) <= set(np.unique(_pattern()["segm"]))
    np.testing.assert_allclose(out["depth"] * 2.0, out["segm"].astype(np.float32) + 1.0)


def test_scale_crop_flip_keep_image_and_labels_aligned():
    transform = transforms.TrainTransform(40, scale_range=(0.7, 1.6), flip=True)
    for seed in range(6):
        out = transform(_pattern(), np.random.default_rng(seed))
        valid = out["segm"] != 255
        # Block id recovered from the image's bilinear coordinates must match segm (nearest)
        # away from block edges.
        y, x = out["image"][..., 0] / 4.0, out["image"][..., 1] / 3.0
        interior = valid & (np.abs((y % 8) - 3.5) < 2.5) & (np.abs((x % 8) - 3.5) < 2.5)
        expected = (y // 8) * 8 + x // 8
        assert interior.sum() > 50
        np.testing.assert_array_equal(out["segm"][interior], expected[interior])


def test_random_crop_pads_small_images_with_ignore_values():
    out = transforms.random_crop(_pattern(20, 30), np.random.default_rng(0), 32, 40)
    assert out["image"].shape == (32, 40, 3)
    assert (out["segm"] == 255).sum() == 32 * 40 - 20 * 30
    assert (out["depth"] == 0).sum() == 32 * 40 - 20 * 30
    assert (out["image"][out["segm"] == 255] == 0).all()
    assert (out["normals"][out["segm"] == 255] == 0).all()


def test_hflip_mirrors_and_negates_normals_x():
    sample = _pattern()
    out = transforms.hflip(sample)
    np.testing.assert_array_equal(out["segm"], sample["segm"][:, ::-1])
    np.testing.assert_array_equal(out["image"], sample["image"][:, ::-1])
    np.testing.assert_allclose(out["normals"][..., 0], -0.6)
    np.testing.assert_allclose(out["normals"][..., 2], -0.8)


def test_pad_to_multiple_pads_bottom_right_with_ignore():
    out = transforms.pad_to_multiple(_pattern(40, 50), 32)
    assert out["image"].shape == (64, 64, 3)
    np.testing.assert_array_equal(out["segm"][:40, :50], _pattern(40, 50)["segm"])
    assert (out["segm"][40:] == 255).all() and (out["depth"][:, 50:] == 0).all()


def test_train_transform_outputs_uint8_image_of_crop_size():
    out = transforms.TrainTransform((24, 36))(_pattern(), np.random.default_rng(1))
    assert out["image"].dtype == np.uint8 and out["image"].shape == (24, 36, 3)
    assert out["depth"].dtype == np.float32 and out["segm"].dtype == np.uint8


def test_scale_and_crop_matches_scale_then_crop():
    sample = _pattern()
    for factor, top, left in ((1.7, 10, 20), (0.6, 0, 0), (2.0, 40, 60)):
        fused = transforms.scale_and_crop(sample, factor, top, left, 30, 40)
        scaled = transforms.scale(sample, factor)
        reference = transforms.pad_to(transforms.crop(scaled, top, left, 30, 40), 30, 40)
        np.testing.assert_array_equal(fused["segm"], reference["segm"])
        np.testing.assert_array_equal(fused["depth"], reference["depth"])
        np.testing.assert_array_equal(fused["normals"], reference["normals"])
        diff = np.abs(fused["image"].astype(int) - reference["image"].astype(int))
        assert diff.mean() < 1.0
