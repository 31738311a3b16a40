"""NYUDv2-40 as the paper trains it: the 795 labelled frames mixed with the ~47k depth-only
raw frames of TFDS `nyu_depth_v2`, whose segmentation comes from a teacher (hard knowledge
distillation). Validation: the 654 labelled test frames.

  tfds build nyu_depth_v2          # once, on any machine (needs TensorFlow; reading does not)
  python -m hydrajax.train.distill --config configs/nyud_raw.py --config.data_dir=/data/nyud \\
      --weights segm_teacher.npz --out /data/nyud_raw_teacher
  python train.py --config configs/nyud_raw.py --workdir runs/nyud_raw \\
      --config.data_dir=/data/nyud --config.teacher_dir=/data/nyud_raw_teacher

Without `teacher_dir` the raw frames train depth only (their segmentation is ignored).
Each batch draws labelled and raw frames by the two weights below: equal by default, as
configs/kitti.py mixes its two parts (the paper publishes no NYUD mixing ratio).
`--config configs/nyud_raw.py:runlocal` shrinks it to a few steps.
"""
import ml_collections

from configs import nyud


def get_config(arg: str | None = None):
  c = nyud.get_config(arg)
  c.dataset = "nyud_raw"
  c.nyud_raw = ml_collections.ConfigDict()
  c.nyud_raw.tfds_split = "train"       # TFDS nyu_depth_v2 split of the raw frames
  c.nyud_raw.tfds_dir = ""              # TFDS data_dir ("" = TFDS's default)
  c.nyud_raw.labelled_weight = 1.0      # relative sampling weights of the two parts
  c.nyud_raw.raw_weight = 1.0
  return c
