"""KITTI: KITTI-6 segmentation (6 classes) + depth, with asymmetric annotations.

Training mixes the KITTI-6 images (segmentation only) with KITTI depth frames (depth only);
`teacher_dir` fills each one's missing modality with a teacher's hard labels
(`python -m hydrajax.train.distill`). Lists are relative to data_dir (see hydrajax/data/kitti.py).

  python train.py --config configs/kitti.py --workdir runs/kitti --config.data_dir=/data/kitti \\
      --config.teacher_dir=/data/kitti_teacher --config.init_from=weights/nyud.npz
  python evaluate.py --config configs/kitti.py --workdir runs/kitti --config.data_dir=/data/kitti
"""
import ml_collections

from configs import default
from hydrajax.data import registry


def get_config(arg: str | None = None):
  c = default.get_config()
  c.dataset = "kitti"
  c.num_classes = 6
  c.kitti = ml_collections.ConfigDict()
  c.kitti.segm_train = "kitti6_train.txt"   # "rgb colour_label" lines
  c.kitti.segm_val = "kitti6_val.txt"
  c.kitti.depth_train = "eigen_train.txt"   # "rgb depth_png" lines
  c.kitti.depth_val = "eigen_test.txt"
  c.kitti.segm_weight = 1.0                 # sampling weights of the two parts in training
  c.kitti.depth_weight = 1.0
  c.depth_divisor = 256.0                   # KITTI benchmark PNGs (the authors' files: 800)
  c.crop_size = (352, 704)
  c.scale_range = (0.5, 1.5)
  c.batch_size = 4
  c.num_train_steps = 60000
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 1000
  c.num_workers = 2
  c.eval.batch_size = 2
  c.eval.max_depth = registry.DATASETS["kitti"].max_depth  # the protocol's cap, metres
  c.eval.crop = registry.DATASETS["kitti"].eval_crop
  if arg == "runlocal":
    default.shrink(c)
  return c
