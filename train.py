"""Train hydrajax: python train.py --config configs/synthetic.py --workdir runs/demo

Any config field can be overridden: --config.batch_size=16 --config.num_train_steps=2000.
A run resumes from WORKDIR/checkpoints when restarted with the same WORKDIR.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Training configuration.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and eval output.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  # Orbax logs every checkpoint step at INFO (~30 lines per save); progress is on the bar.
  # --verbosity=0 brings those logs back.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from hydrajax.train import config_check
  from hydrajax.train import loop as train_lib
  with config_check.exit_on_bad_input():
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  from hydrajax.runtime import cpu
  cpu.tune_tool()  # huge pages, malloc reuse, C++ kernels (hydrajax/runtime/cpu.py)
  from hydrajax.train import config_file
  config_file.make_importable(config_file.spec_in_argv(sys.argv[1:]) or "")
  app.run(main)
