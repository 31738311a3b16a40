"""Teacher labels fill only the missing modality, in the shared on-disk format."""

import numpy as np
import pytest

from hydrajax.data import TeacherLabels, write_teacher_labels


class _Source:
    """Sample 0 has segm only, sample 1 depth only, sample 2 both."""

    def __len__(self):
        return 3

    def key(self, i):
        return f"seq/{i:04d}"

    def __getitem__(self, i):
        segm = np.full((4, 6), 255 if i == 1 else 3, np.uint8)
        depth = np.full((4, 6), 0.0 if i == 0 else 7.0, np.float32)
        return {"image": np.zeros((4, 6, 3), np.uint8), "segm": segm, "depth": depth}


def test_teacher_fills_only_fully_ignored_modalities(tmp_path):
    for i in range(3):
        write_teacher_labels(str(tmp_path), f"seq/{i:04d}", segm=np.full((4, 6), 9, np.uint8),
                             depth=np.full((4, 6), 12.5))
    source = TeacherLabels(_Source(), str(tmp_path))
    s0, s1, s2 = source[0], source[1], source[2]
    assert (s0["segm"] == 3).all()
    # Teacher depth is stored as uint16 metres * 256: within one step.
    np.testing.assert_allclose(s0["depth"], 12.5, atol=1 / 256)
    assert (s1["segm"] == 9).all() and (s1["depth"] == 7.0).all()
    assert (s2["segm"] == 3).all() and (s2["depth"] == 7.0).all()  # real labels win
    assert source.key(1) == "seq/0001"


def test_teacher_without_file_keeps_modality_ignored(tmp_path):
    write_teacher_labels(str(tmp_path), "seq/0000", depth=np.ones((4, 6)))
    source = TeacherLabels(_Source(), str(tmp_path))
    assert (source[1]["segm"] == 255).all()
    assert source.missing() == {"segm": 1, "depth": 0}


def test_teacher_label_of_wrong_size_names_the_file(tmp_path):
    write_teacher_labels(str(tmp_path), "seq/0001", segm=np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match="seq__0001.png"):
        TeacherLabels(_Source(), str(tmp_path))[1]


def test_teacher_directory_needs_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        TeacherLabels(_Source(), str(tmp_path))
