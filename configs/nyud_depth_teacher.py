"""A depth-only teacher on NYUDv2, for hard knowledge distillation (the paper's recipe).

  python train.py --config configs/nyud_depth_teacher.py --workdir runs/teacher \\
      --config.data_dir=/data/nyud
  python -m hydrajax.train.distill --config configs/nyud_depth_teacher.py \\
      --config.data_dir=/data/nyud --workdir runs/teacher --out /data/nyud_teacher
  python train.py --config configs/nyud.py --config.teacher_dir=/data/nyud_teacher ...

The distill step labels this config's training split (NYUD's: the same images) with the
teacher of runs/teacher's latest checkpoint; `--weights FILE.npz` instead reads a weights file.
"""
from configs import nyud


def get_config(arg: str | None = None):
  c = nyud.get_config(arg)
  c.tasks = ("depth",)
  c.num_classes = 0
  c.loss_weights.depth = 1.0
  c.best_metric = "rmse"
  c.best_mode = "min"
  return c
