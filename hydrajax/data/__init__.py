"""Datasets, transforms and Grain pipelines: sources -> transforms -> pipeline -> train step.

Every source is random access (`len`, `[i]`, `key(i)`, `has_normals`) and yields samples
`{"image": uint8 (H, W, 3), "segm": uint8 (H, W) 255 = ignore, "depth": float32 (H, W) metres
0 = invalid[, "normals": float32 (H, W, 3)]}`; a missing modality is present but fully ignored.
"""

from hydrajax.data.pipeline import Mixture, SkipBad, eval_dataset, train_dataset
from hydrajax.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes

__all__ = [
    "SYNTHETIC_CLASSES",
    "Mixture",
    "SkipBad",
    "SyntheticScenes",
    "eval_dataset",
    "train_dataset",
]
