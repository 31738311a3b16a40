"""A depth-only teacher trained on NYUDv2's labelled frames, for hard knowledge distillation
of depth into frames that have none (e.g. your own folder of indoor photos):

  python train.py --config configs/nyud_depth_teacher.py --workdir runs/teacher \\
      --config.data_dir=/data/nyud
  hydrajax-distill --config configs/folder.py --config.data_dir=data/mine \\
      --workdir runs/teacher --only depth --out data/mine_teacher
  python train.py --config configs/folder.py --config.data_dir=data/mine \\
      --config.teacher_dir=data/mine_teacher ...

Every NYUDv2 labelled frame has depth, so distilling into NYUD itself labels nothing (the
command says so and writes an empty label directory).
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
