"""10% labels + an ONNX teacher against 10% and 100% labels, on the embedded synthetic rooms.

The synthetic rooms are written as a folder; the 10% folder keeps segmentation on one frame
in ten and metric depth on another one in ten. The teacher is a hydrajax model trained on
all labels, exported to ONNX (full resolution) and wrapped in another convention: its depth
as inverse depth 2 / d + 0.5 (`inverse_depth_relative`, so the relative-to-metric fit runs)
and its segmentation logits over the classes in reverse order under other names (so the
class map runs). `hydrajax-distill --teacher` labels the 10% folder; the students train
with the same steps and are evaluated on the same held-out rooms.

The 10%-alone student trains twice: on the whole 10% folder, where 80% of the frames carry
no label (most batches hold at most one labelled frame per task, many none), and on its
labelled frames only (`labels_10_labelled`: the same labels, every batch labelled).

  python benchmarks/distill_onnx_teacher.py --steps 600 --out benchmarks/results/distill_onnx_teacher.json
  python benchmarks/distill_onnx_teacher.py --steps 600 --runs labels_10_labelled  # one run, merged into --out
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import ml_collections
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import synthetic as synthetic_config  # noqa: E402
from hydrajax.data import synthetic  # noqa: E402


def write_folder(root: str, config, keep_every: int | None, labelled_only: bool = False) -> None:
  """The config's train / val rooms as ROOT/{train,val}; with `keep_every` k, only train
  frames i % k == 0 keep segmentation and i % k == 1 keep depth (`labelled_only`: the other
  train frames are left out)."""
  s = config.synthetic
  for split, num, seed in (("train", s.num_train, s.seed), ("val", s.num_val, s.seed + 1)):
    scenes = synthetic.SyntheticScenes(num, s.height, s.width, seed=seed)
    for d in ("images", "segm", "depth"):
      os.makedirs(os.path.join(root, split, d), exist_ok=True)
    for i in range(num):
      hide = split == "train" and keep_every
      if hide and labelled_only and i % keep_every > 1:
        continue
      sample, name = scenes[i], f"{i:06d}"
      Image.fromarray(sample["image"]).save(os.path.join(root, split, "images", name + ".png"))
      if not hide or i % keep_every == 0:
        Image.fromarray(sample["segm"]).save(os.path.join(root, split, "segm", name + ".png"))
      if not hide or i % keep_every == 1:
        np.save(os.path.join(root, split, "depth", name + ".npy"), sample["depth"])
  with open(os.path.join(root, "classes.txt"), "w") as f:
    f.write("\n".join(synthetic.SYNTHETIC_CLASSES) + "\n")


def teacher_graph(weights: str, height: int, width: int, path: str) -> list[str]:
  """The trained model as an ONNX teacher in another convention (see the module docstring);
  returns the teacher's class names (id order)."""
  import onnx
  from onnx import TensorProto, helper

  import hydrajax
  from hydrajax.export import cli as export

  variables = hydrajax.load(weights)
  model = onnx.load_from_string(export.export(variables, "onnx", height, width, batch=1,
                                              full_resolution=True))
  g = model.graph
  k = len(synthetic.SYNTHETIC_CLASSES)
  g.initializer.extend([
      helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
      helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
      helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-3]),
      helper.make_tensor("reverse", TensorProto.INT64, [k], list(range(k - 1, -1, -1)))])
  g.node.extend([
      helper.make_node("Max", ["depth", "eps"], ["safe"]),
      helper.make_node("Div", ["two", "safe"], ["inv"]),
      helper.make_node("Add", ["inv", "half"], ["relative_depth"]),
      helper.make_node("Gather", ["segm", "reverse"], ["class_logits"], axis=3)])
  del g.output[:]
  g.output.extend([helper.make_tensor_value_info("relative_depth", TensorProto.FLOAT, None),
                   helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, None)])
  names = [f"teacher_{c}" for c in reversed(synthetic.SYNTHETIC_CLASSES)]
  card = {"input": {"layout": "NHWC", "dtype": "uint8", "size": [height, width]},
          "outputs": {"relative_depth": {"kind": "inverse_depth_relative"},
                      "class_logits": {"kind": "segm_logits", "layout": "NHWC",
                                       "classes": names}}}
  del model.metadata_props[:]
  helper.set_model_props(model, {"hydrajax_teacher_card": json.dumps(card)})
  onnx.save(model, path)
  return names


def train(config, data_dir: str, workdir: str, steps: int, teacher_dir: str = "") -> dict:
  from hydrajax.train import loop as train_lib

  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset, c.data_dir, c.teacher_dir = "folder", data_dir, teacher_dir
  c.folder = ml_collections.ConfigDict({"depth_scale": 1000.0, "val_fraction": 0.1,
                                        "split_seed": 0, "skip_bad": False})
  c.num_train_steps, c.eval_every_steps = steps, steps
  c.warmup_steps = min(c.warmup_steps, steps // 4)
  c.checkpoint_every_steps = steps
  c.progress_bar = False
  start = time.time()
  result = train_lib.train_and_evaluate(c, workdir)
  # The constant predictors' scores show a collapsed student (one class everywhere, one depth).
  return {"miou": float(result["miou"]), "rmse": float(result["rmse"]),
          "majority_miou": float(result["majority_miou"]),
          "mean_rmse": float(result["mean_rmse"]), "seconds": round(time.time() - start, 1)}


RUNS = ("labels_100", "labels_10", "labels_10_labelled", "labels_10_teacher")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600, help="training steps of every run")
  parser.add_argument("--train-frames", type=int, default=400)
  parser.add_argument("--out", default="benchmarks/results/distill_onnx_teacher.json")
  parser.add_argument("--workdir", default="", help="kept runs (default: a temporary folder)")
  parser.add_argument("--runs", default=",".join(RUNS),
                      help=f"comma-separated subset of {', '.join(RUNS)}; a subset is merged "
                           f"into --out (labels_10_teacher needs labels_100, its teacher)")
  args = parser.parse_args()
  runs = [r for r in args.runs.split(",") if r]
  if set(runs) - set(RUNS):
    parser.error(f"--runs: unknown {', '.join(sorted(set(runs) - set(RUNS)))}; "
                 f"choose from {', '.join(RUNS)}")
  if "labels_10_teacher" in runs and "labels_100" not in runs:
    parser.error("--runs: labels_10_teacher needs labels_100 (its teacher)")
  config = synthetic_config.get_config()
  config.synthetic.num_train = args.train_frames
  s = config.synthetic
  results = {}
  if set(runs) != set(RUNS) and os.path.isfile(args.out):
    with open(args.out) as f:
      results = json.load(f)
  with tempfile.TemporaryDirectory() as tmp:
    base = args.workdir or tmp
    full, few = os.path.join(base, "full"), os.path.join(base, "few")
    write_folder(full, config, None)
    write_folder(few, config, 10)
    results.update({"steps": args.steps, "train_frames": s.num_train, "val_frames": s.num_val,
                    "size": [s.height, s.width], "batch_size": config.batch_size})
    if "labels_100" in runs:
      results["labels_100"] = train(config, full, os.path.join(base, "run_100"), args.steps)
    if "labels_10" in runs:
      results["labels_10"] = train(config, few, os.path.join(base, "run_10"), args.steps)
    if "labels_10_labelled" in runs:
      labelled = os.path.join(base, "few_labelled")
      write_folder(labelled, config, 10, labelled_only=True)
      results["labels_10_labelled"] = train(config, labelled,
                                            os.path.join(base, "run_10_labelled"), args.steps)
    if "labels_10_teacher" in runs:
      labels, results["distill"] = label_with_teacher(config, base, few)
      results["labels_10_teacher"] = train(config, few, os.path.join(base, "run_10_teacher"),
                                           args.steps, labels)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
    f.write("\n")
  print(json.dumps(results, indent=1))


def label_with_teacher(config, base: str, few: str) -> tuple[str, dict]:
  """The labels_100 model as an ONNX teacher (`teacher_graph`) run by hydrajax-distill over
  the 10% folder: (the teacher labels' directory, the distillation's counts and depth fit)."""
  from hydrajax.train import distill

  s = config.synthetic
  graph = os.path.join(base, "teacher.onnx")
  names = teacher_graph(os.path.join(base, "run_100", "weights", "final.npz"), s.height,
                        s.width, graph)
  class_map = os.path.join(base, "map.json")
  with open(class_map, "w") as f:
    json.dump({n: n[len("teacher_"):] for n in names}, f)
  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset, c.data_dir = "folder", few
  c.folder = ml_collections.ConfigDict({"depth_scale": 1000.0, "val_fraction": 0.1,
                                        "split_seed": 0, "skip_bad": False})
  labels = os.path.join(base, "teacher_labels")
  start = time.time()
  counts = distill.run(c, labels, teacher=graph, class_map=class_map, progress=False)
  return labels, {"segm": counts["segm"], "depth": counts["depth"],
                  "seconds": round(time.time() - start, 1), "depth_fit": counts["fit"]["dataset"]}


if __name__ == "__main__":
  main()
