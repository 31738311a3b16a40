"""Bad data: errors name the file; skip_bad drops and counts bad samples."""

import os

import numpy as np
import pytest
from PIL import Image

from hydrajax.data import BadSampleError, NYUDv2, SkipBad, train_dataset


def _layout(root, n=6, h=16, w=20):
    for sub in ("rgb", "masks", "depth"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lines = []
    for i in range(n):
        name = f"{i:06d}.png"
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(f"{root}/rgb/{name}")
        Image.fromarray(np.full((h, w), i, np.uint8)).save(f"{root}/masks/{name}")
        Image.fromarray(np.full((h, w), 5000, np.uint16)).save(f"{root}/depth/{name}")
        lines.append(f"rgb/{name}\tmasks/{name}\tdepth/{name}\n")
    with open(f"{root}/train_list_depth.txt", "w") as f:
        f.writelines(lines)


def _corrupt(root):
    with open(f"{root}/rgb/000001.png", "r+b") as f:  # truncated PNG
        f.truncate(40)
    Image.fromarray(np.zeros((8, 20), np.uint8)).save(f"{root}/masks/000003.png")  # wrong size


def test_corrupt_image_error_names_the_file(tmp_path):
    _layout(str(tmp_path))
    _corrupt(str(tmp_path))
    source = NYUDv2(str(tmp_path))
    with pytest.raises(BadSampleError, match="rgb/000001.png"):
        source[1]


def test_label_size_mismatch_error_names_the_file(tmp_path):
    _layout(str(tmp_path))
    _corrupt(str(tmp_path))
    with pytest.raises(BadSampleError, match=r"masks/000003.png: size \(8, 20\) differs"):
        NYUDv2(str(tmp_path))[3]


def test_pipeline_raises_on_bad_sample_by_default(tmp_path):
    _layout(str(tmp_path))
    _corrupt(str(tmp_path))
    it = iter(train_dataset(NYUDv2(str(tmp_path)), global_batch_size=6, crop_size=8))
    with pytest.raises(BadSampleError, match="000001.png|000003.png"):
        next(it)


def test_skip_bad_drops_and_counts_bad_samples(tmp_path):
    _layout(str(tmp_path))
    _corrupt(str(tmp_path))
    source = SkipBad(NYUDv2(str(tmp_path)))
    ds = train_dataset(source, global_batch_size=4, crop_size=8, scale_range=(1.0, 1.0), skip_bad=True,
                       num_epochs=1, drop_remainder=False)
    batches = list(ds)
    labels = sorted(int(s[0, 0]) for b in batches for s in b["segm"])
    assert labels == [0, 2, 4, 5]
    assert source.num_skipped == 2
