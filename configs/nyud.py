"""NYUDv2-40: joint segmentation (40 classes) + depth, the paper's indoor setting.

Data: the authors' prepared layout (rgb/, masks/, depth/, train_list_depth.txt,
val_list_depth.txt), e.g. from `python -m hydrajax.data.prepare_nyud`.

  python train.py --config configs/nyud.py --workdir runs/nyud \\
      --config.data_dir=/data/nyud --config.init_from=weights/mobilenetv2_imagenet.npz
  python evaluate.py --config configs/nyud.py --workdir runs/nyud --config.data_dir=/data/nyud

Recipe: the authors' public DenseTorch example (SGD momentum 0.9, weight decay 1e-5,
encoder lr 1e-3, decoder lr 1e-2, batch 4, 400 crops, mirror, loss weights 0.5 / 0.5),
with Light-Weight RefineNet's random scale 0.5-2.0.
`--config configs/nyud.py:runlocal` shrinks it to a few steps.
"""
from configs import default
from hydrajax.data import registry


def get_config(arg: str | None = None):
  c = default.get_config()
  c.dataset = "nyud"
  c.num_classes = 40
  c.crop_size = (400, 400)
  c.scale_range = (0.5, 2.0)
  c.batch_size = 4
  c.num_train_steps = 60000       # ~300 epochs of the 795 training images
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 50
  c.num_workers = 2
  c.eval.batch_size = 4
  c.eval.max_depth = registry.DATASETS["nyud"].max_depth  # the protocol's cap, metres
  c.eval.crop = registry.DATASETS["nyud"].eval_crop
  if arg == "runlocal":
    default.shrink(c)
  return c
