"""The embedded default: joint segmentation (7 classes) + depth on procedurally generated
indoor scenes. No download; trains and evaluates in minutes on a laptop CPU.

  python train.py --config configs/synthetic.py --workdir runs/demo
  python evaluate.py --config configs/synthetic.py --workdir runs/demo

`--config configs/synthetic.py:runlocal` shrinks it to a few steps (a smoke test).
"""
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.dataset = "synthetic"
  c.num_classes = 7
  c.synthetic.num_train = 4000
  c.synthetic.num_val = 64
  c.synthetic.height, c.synthetic.width = 72, 96
  c.crop_size = (64, 96)
  c.scale_range = (0.8, 1.25)
  c.batch_size = 8
  c.num_train_steps = 2000  # a few minutes on 2 CPU cores (docs/performance.md)
  c.lr_encoder = 2e-3
  c.lr_decoder = 8e-3   # 2e-2 diverged here (the depth head died: relu(pred) = 0)
  c.warmup_steps = 20
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 250
  c.log_every_steps = 20
  c.eval.batch_size = 16
  if arg == "runlocal":
    default.shrink(c)
  return c
