"""Bad data: errors name the file; skip_bad drops and counts bad samples."""

import pytest

from hydrajax.data import BadSampleError, NYUDv2, SkipBad, train_dataset
from tests.helpers import fabricate


def test_corrupt_image_error_names_the_file(tmp_path):
    fabricate.nyud(tmp_path, n=6, h=16, w=20, splits=("train",))
    fabricate.corrupt_nyud(tmp_path)
    source = NYUDv2(str(tmp_path))
    with pytest.raises(BadSampleError, match="rgb/000001.png"):
        source[1]


def test_label_size_mismatch_error_names_the_file(tmp_path):
    fabricate.nyud(tmp_path, n=6, h=16, w=20, splits=("train",))
    fabricate.corrupt_nyud(tmp_path)
    with pytest.raises(BadSampleError, match=r"masks/000003.png: size \(8, 20\) differs"):
        NYUDv2(str(tmp_path))[3]


def test_pipeline_raises_on_bad_sample_by_default(tmp_path):
    fabricate.nyud(tmp_path, n=6, h=16, w=20, splits=("train",))
    fabricate.corrupt_nyud(tmp_path)
    it = iter(train_dataset(NYUDv2(str(tmp_path)), global_batch_size=6, crop_size=8))
    with pytest.raises(BadSampleError, match="000001.png|000003.png"):
        next(it)


def test_skip_bad_drops_and_counts_bad_samples(tmp_path):
    fabricate.nyud(tmp_path, n=6, h=16, w=20, splits=("train",))
    fabricate.corrupt_nyud(tmp_path)
    source = SkipBad(NYUDv2(str(tmp_path)))
    ds = train_dataset(source, global_batch_size=4, crop_size=8, scale_range=(1.0, 1.0), skip_bad=True,
                       num_epochs=1, drop_remainder=False)
    batches = list(ds)
    labels = sorted(int(s[s < 255].max()) for b in batches for s in b["segm"])  # frame m: class m
    assert labels == [0, 2, 4, 5]
    assert source.num_skipped == 2
