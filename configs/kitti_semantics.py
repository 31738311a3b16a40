"""KITTI semantics benchmark: segmentation into Cityscapes' 19 classes (200 training frames).

Lists (relative to data_dir, lines "image label", labels as Cityscapes label-id PNGs) choose
the training and validation frames; an empty list name reads all of `training/image_2` with
`training/semantic` (see hydrajax/data/kitti.py). For joint training add "depth" to the
tasks with a depth teacher's labels in `teacher_dir` (`python -m hydrajax.train.distill`).

  python train.py --config configs/kitti_semantics.py --workdir runs/kitti_semantics \\
      --config.data_dir=/data/kitti_semantics --config.init_from=weights/kitti.npz
  python evaluate.py --config configs/kitti_semantics.py --workdir runs/kitti_semantics \\
      --config.data_dir=/data/kitti_semantics

`--config configs/kitti_semantics.py:runlocal` shrinks it to a few steps.
"""
import ml_collections

from configs import kitti


def get_config(arg: str | None = None):
  c = kitti.get_config(arg)  # the same camera: crops, scales, evaluation protocol
  c.dataset = "kitti_semantics"
  c.num_classes = 19
  c.tasks = ("segm",)
  c.loss_weights.segm = 1.0
  c.kitti = ml_collections.ConfigDict()
  c.kitti.semantics_train = "semantics_train.txt"
  c.kitti.semantics_val = "semantics_val.txt"
  if arg != "runlocal":
    c.num_train_steps = 20000  # ~400 epochs of the 200 frames at batch 4
  return c
