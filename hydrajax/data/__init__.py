"""Datasets, transforms and Grain pipelines: sources -> transforms -> pipeline -> train step.

Every source is random access (`len`, `[i]`, `key(i)`, `has_normals`) and yields samples
`{"image": uint8 (H, W, 3), "segm": uint8 (H, W) 255 = ignore, "depth": float32 (H, W) metres
0 = invalid[, "normals": float32 (H, W, 3)]}`; a missing modality is present but fully ignored.
"""

from hydrajax.data import pngio
from hydrajax.data.folder import Folder, FolderError
from hydrajax.data.kitti import CITYSCAPES_CLASSES, KITTI6_CLASSES, Kitti6, KittiDepth, KittiSemantics
from hydrajax.data.nyud import NYUD_NUM_CLASSES, NYUDv2
from hydrajax.data.nyud_raw import NYUDv2Raw
from hydrajax.data.pipeline import Mixture, SkipBad, eval_dataset, train_dataset
from hydrajax.data.pngio import BadSampleError
from hydrajax.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from hydrajax.data.teacher import TeacherLabels, write_teacher_labels

__all__ = [
    "BadSampleError",
    "Folder",
    "FolderError",
    "NYUD_NUM_CLASSES",
    "NYUDv2",
    "NYUDv2Raw",
    "CITYSCAPES_CLASSES",
    "KITTI6_CLASSES",
    "Kitti6",
    "KittiDepth",
    "KittiSemantics",
    "TeacherLabels",
    "write_teacher_labels",
    "pngio",
    "SYNTHETIC_CLASSES",
    "Mixture",
    "SkipBad",
    "SyntheticScenes",
    "eval_dataset",
    "train_dataset",
]
