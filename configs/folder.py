"""Your own frames: joint segmentation + depth on a folder (hydrajax/data/folder.py's layout),
fine-tuned from converted official weights. The class count comes from ROOT/classes.txt
(num_classes = 0) unless given; the segmentation head's last conv starts fresh when it differs
from the weights', everything else is kept.

  hydrajax-data check /data/mine
  python train.py --config configs/folder.py --workdir runs/mine --config.data_dir=/data/mine \\
      --config.init_from=weights/ExpNYUD_joint.npz
  python evaluate.py --config configs/folder.py --workdir runs/mine --config.data_dir=/data/mine
  hydrajax-predict --workdir runs/mine photo.jpg --out preds/

Depth-only folders (no classes file): add --config.tasks=depth --config.best_metric=rmse
--config.best_mode=min. `--config.freeze_bn=True`
keeps the weights' BatchNorm statistics (small batches, few images).
`--config configs/folder.py:runlocal` shrinks it to a few steps.
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.dataset = "folder"
  c.num_classes = 0              # 0 = as many as ROOT/classes.txt names
  c.folder = ml_collections.ConfigDict()
  c.folder.depth_scale = 1000.0  # 16-bit depth PNG value per metre (1000 = millimetres)
  c.folder.val_fraction = 0.1    # without ROOT/val: this fraction of train, chosen by split_seed
  c.folder.split_seed = 0
  c.folder.skip_bad = False      # True: drop unreadable / mismatched frames (counted) instead
                                 # of stopping
  c.crop_size = (256, 256)
  c.scale_range = (0.5, 2.0)
  c.batch_size = 4
  c.num_train_steps = 5000
  c.lr_encoder = 5e-4            # fine-tuning: the pre-trained encoder moves slowly
  c.lr_decoder = 5e-3
  c.warmup_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.eval.batch_size = 4
  c.eval.max_depth = 10.0
  if arg == "runlocal":
    default.shrink(c)
  return c
