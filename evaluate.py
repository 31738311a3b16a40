"""Evaluate hydrajax: python evaluate.py --config configs/synthetic.py --workdir runs/demo

Uses WORKDIR's latest checkpoint (--which=best for the best one) or --weights FILE.npz.
Writes WORKDIR/eval/metrics.json and WORKDIR/eval/samples.png and prints a table.
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Dataset and eval settings.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints in, eval/ out).")
flags.DEFINE_string("weights", "", "A weights .npz instead of the workdir's checkpoint.")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "Which checkpoint of WORKDIR.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  # Orbax logs every checkpoint step at INFO (~30 lines per save); progress is on the bar.
  # --verbosity=0 brings those logs back.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from hydrajax.train import config_check
  from hydrajax.evaluate import loop as evaluate
  with config_check.exit_on_bad_input():
    evaluate.run(FLAGS.config, FLAGS.workdir, FLAGS.weights, FLAGS.which)


if __name__ == "__main__":
  from hydrajax.runtime import hugepages
  hugepages.relaunch()  # huge pages for XLA's per-step buffers (hydrajax/runtime/hugepages.py)
  app.run(main)
