"""Shared tiny training setup: one config whose compiled step most tests reuse."""
import contextlib
import os

# `configs` is the checkout's folder (pytest runs from the checkout root); it is not installed.
from configs import default, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def tiny_config(**overrides):
  """Synthetic scenes at 64x96, batch 4 on one device, 40 classes (the NYUD head, so the
  NYUD config test shares this compiled step), 4 steps, checkpoint every 2."""
  c = default.shrink(synthetic.get_config())
  c.num_classes = 40
  c.synthetic.height, c.synthetic.width = 64, 96
  c.synthetic.num_train, c.synthetic.num_val = 16, 2
  c.num_train_steps = 4
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 5
  return set_fields(c, overrides)


def set_fields(config, overrides: dict):
  """Sets {"a.b": value} fields of `config` in place; returns it."""
  for k, v in overrides.items():
    target = config
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return config


@contextlib.contextmanager
def stop_after_checkpoint(step: int, error: type[BaseException]):
  """Within the block, Checkpointer.save raises `error` right after writing `step`: a run
  stopped as a crash would leave it."""
  from hydrajax.train import checkpoint

  original = checkpoint.Checkpointer.save

  def save_then_stop(self, at, *args, **kwargs):
    original(self, at, *args, **kwargs)
    if at == step:
      raise error()

  checkpoint.Checkpointer.save = save_then_stop
  try:
    yield
  finally:
    checkpoint.Checkpointer.save = original


def nyud_config(root, overrides=None):
  """configs/nyud.py's runlocal variant on a fabricated NYUD layout at `root`, batch 6."""
  from configs import nyud
  config = nyud.get_config("runlocal")
  config.data_dir = str(root)
  config.batch_size = 6
  return set_fields(config, overrides or {})


def kitti_config(data_dir, teacher_dir=""):
  """configs/kitti.py's runlocal variant on a fabricated KITTI layout."""
  from configs import kitti
  config = kitti.get_config("runlocal")
  config.data_dir, config.teacher_dir = str(data_dir), str(teacher_dir)
  return config
