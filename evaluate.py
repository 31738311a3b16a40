"""Evaluate hydrajax: python evaluate.py --config configs/synthetic.py --workdir runs/demo

Uses WORKDIR's latest checkpoint (--which=best for the best one) or --weights FILE.npz.
Writes WORKDIR/eval/metrics.json and WORKDIR/eval/samples.png and prints a table.
--onnx FILE.onnx (or an OpenVINO IR FILE.xml) evaluates an exported graph (float or int8)
instead, with the same metrics (hydrajax/evaluate/onnx_eval.py), into
WORKDIR/eval/FILE.onnx.json; --runtime picks onnxruntime or OpenVINO (default: by the file).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Dataset and eval settings.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints in, eval/ out).")
flags.DEFINE_string("weights", "", "A weights .npz instead of the workdir's checkpoint.")
flags.DEFINE_string("onnx", "", "An exported graph to evaluate instead of weights: FILE.onnx "
                    "(onnxruntime) or an OpenVINO IR FILE.xml (OpenVINO).")
flags.DEFINE_enum("runtime", "file", ["file", "auto", "onnxruntime", "openvino"],
                  "--onnx: the runtime (file: by the suffix; auto: the fastest installed).")
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
    if FLAGS.onnx:
      if FLAGS.weights:
        raise ValueError("give either --onnx or --weights, not both")
      from hydrajax.evaluate import onnx_eval
      onnx_eval.run(FLAGS.config, FLAGS.workdir, FLAGS.onnx, FLAGS.runtime)
      return
    evaluate.run(FLAGS.config, FLAGS.workdir, FLAGS.weights, FLAGS.which)


if __name__ == "__main__":
  from hydrajax.runtime import cpu
  cpu.tune_tool()  # huge pages, malloc reuse, C++ kernels (hydrajax/runtime/cpu.py)
  from hydrajax.train import config_file
  config_file.make_importable(config_file.spec_in_argv(sys.argv[1:]) or "")
  app.run(main)
