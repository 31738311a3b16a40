"""A depth-only teacher on NYUDv2, for hard knowledge distillation (the paper's recipe).

  python train.py --config configs/nyud_depth_teacher.py --workdir runs/teacher \\
      --config.data_dir=/data/nyud
  python -m hydrajax.distill --config configs/nyud.py --config.data_dir=/data/nyud \\
      --weights runs/teacher/teacher.npz --out /data/nyud_teacher
  python train.py --config configs/nyud.py --config.teacher_dir=/data/nyud_teacher ...

(`python -m hydrajax.distill --export` writes the checkpoint as a weights file.)
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
