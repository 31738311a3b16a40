"""Hard knowledge distillation: a teacher labels what the training samples lack.

The teacher is a hydrajax network (`--weights`, `--workdir`) or any ONNX graph with a card
saying how to call it (`--teacher model.onnx [--teacher-card card.json]`:
hydrajax.train.onnx_teacher; its classes mapped with `--class-map`, its unsure pixels
ignored with `--min-confidence`, its relative depth fitted to metres, or with no metric
depth anywhere and `--depth-relative-ok` written as relative labels: docs/datasets.md).

For every training sample whose segmentation is entirely ignored (255) or whose depth is
entirely invalid (0), the teacher predicts that modality at full resolution (argmax classes,
depth in metres) and the label is written to OUT in hydrajax.data.teacher's format. Training
with `--config.teacher_dir=OUT` then reads them back, filling only the missing parts
(real annotations always win).

  hydrajax-distill --config configs/kitti.py --config.data_dir=/data/kitti \\
      --weights depth_teacher.npz --out /data/kitti_teacher
  hydrajax-distill --config configs/nyud.py --workdir runs/teacher --out DIR
  python -m hydrajax distill --config configs/folder.py --config.data_dir=/data/mine \\
      --weights nyud.npz --only depth --out /data/mine_teacher
  hydrajax-distill --config configs/folder.py --config.data_dir=/data/mine \\
      --teacher depth_anything_v2_vits.onnx --teacher-card da2.json --out /data/mine_teacher
  hydrajax-distill --config configs/folder.py --config.data_dir=/data/mine \\
      --teacher segformer_b5_ade.onnx --class-map ade_to_mine.txt --min-confidence 0.6 \\
      --out /data/mine_teacher
"""
from __future__ import annotations

import os
import sys
from typing import Any

import ml_collections
import numpy as np

import hydrajax
from hydrajax import api
from hydrajax.data import sources
from hydrajax.data import teacher as teacher_lib
from hydrajax.runtime import parallel


def _parts(source: Any) -> list:
  return list(getattr(source, "sources", None) or [source])


def missing_modalities(sample: dict) -> set[str]:
  """Which of "segm", "depth" a sample lacks (fully ignored / invalid)."""
  missing = set()
  if "segm" not in sample or (np.asarray(sample["segm"]) == 255).all():
    missing.add("segm")
  if "depth" not in sample or (np.asarray(sample["depth"]) <= 0).all():
    missing.add("depth")
  return missing


def distill(variables: dict, source: Any, out_dir: str, *, overwrite: bool = False,
            progress: bool = True, only: str = "") -> dict[str, int]:
  """Write teacher labels for the modalities each sample of `source` lacks and the teacher
  predicts (`only` "segm" or "depth": that one alone). Samples already labelled in
  `out_dir` are skipped unless `overwrite`. Returns counts {"segm": n, "depth": n,
  "samples": n}."""
  import tqdm


  tasks = set(api.model_config(variables)["tasks"]) & ({only} if only else {"segm", "depth"})
  if not tasks:
    raise ValueError("the teacher predicts neither 'segm' nor 'depth'" if not only else
                     f"the teacher does not predict {only!r} (--only {only})")
  counts = {"segm": 0, "depth": 0, "samples": 0}
  parts = _parts(source)
  bar = tqdm.tqdm(total=sum(len(p) for p in parts), disable=not progress, unit="img")
  for part in parts:
    for i in range(len(part)):
      bar.update(1)
      sample = part[i]
      key = part.key(i)
      todo = missing_modalities(sample) & tasks
      if not overwrite:
        todo = {m for m in todo if not os.path.exists(
            os.path.join(out_dir, m, teacher_lib._filename(key)))}
      if not todo:
        continue
      pred = hydrajax.apply(variables, sample["image"])
      labels = {}
      if "segm" in todo:
        labels["segm"] = np.asarray(pred["segm"].argmax(-1), np.uint8)
      if "depth" in todo:
        labels["depth"] = np.asarray(pred["depth"], np.float32)
      teacher_lib.write_teacher_labels(out_dir, key, **labels)
      for m in labels:
        counts[m] += 1
      counts["samples"] += 1
  bar.close()
  return counts


def run(config: ml_collections.ConfigDict, out_dir: str, weights: str = "",
        workdir: str = "", overwrite: bool = False, only: str = "", *, teacher: str = "",
        teacher_card: str = "", class_map: str = "", min_confidence: float = 0.0,
        fill: str = "missing", progress: bool = True,
        depth_relative_ok: bool = False) -> dict[str, Any]:
  """Load the teacher (an ONNX graph with its card; a weights file; or WORKDIR's best / final
  weights, else its latest checkpoint under `config`) and label the training split of
  `config`'s dataset (`only`: "segm" or "depth", e.g. the depth of a joint teacher with
  other classes; `depth_relative_ok`: a relative depth teacher with no metric depth to fit
  it to writes relative labels). Returns counts {"segm", "depth", "samples"[, "fit" |
  "relative_depth"]}."""
  from hydrajax.train import config_check
  from hydrajax.evaluate import loop as evaluate

  config = config_check.validate(config, "distill")
  launched = parallel.launcher_tasks()
  if launched is not None:
    raise ValueError(f"started as one of {launched[1]} tasks ({launched[0]}={launched[1]}): "
                     f"distillation runs as one process (each task would label the same "
                     f"samples); launch a single task")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise NotADirectoryError(f"--out {out_dir} is a file; give a directory for the labels")
  if only not in ("", "segm", "depth"):
    raise ValueError(f"--only must be segm or depth, got {only!r}")
  if teacher:
    return _run_onnx(config, out_dir, teacher, teacher_card, class_map, min_confidence, fill,
                     overwrite, only, progress, depth_relative_ok)
  if teacher_card or class_map or min_confidence or fill != "missing" or depth_relative_ok:
    raise ValueError("--teacher-card, --class-map, --min-confidence, --fill and "
                     "--depth-relative-ok go with --teacher MODEL.onnx")
  if not (weights or workdir):
    raise ValueError("pass --teacher MODEL.onnx, --weights TEACHER.npz or --workdir of a "
                     "teacher run")
  if workdir and not weights and any(os.path.isfile(os.path.join(workdir, "weights", n))
                                     for n in hydrajax.weights.WORKDIR_WEIGHTS):
    weights = hydrajax.weights.from_workdir(workdir)  # the run's best, else final weights
  variables, origin = evaluate.load_variables(config, workdir, weights)
  teacher = api.model_config(variables)
  if (only != "depth" and "segm" in teacher["tasks"]
      and teacher["num_classes"] != config.num_classes):
    # Its argmax ids would be another label space: ids >= num_classes are silently ignored
    # by the loss, smaller ones read as the wrong classes.
    raise ValueError(f"teacher {origin} predicts {teacher['num_classes']} classes but "
                     f"config.num_classes={config.num_classes} (dataset {config.dataset!r}); "
                     f"use a teacher trained on these classes, or --only depth for its depth")
  source = sources.build_source(config, "train", with_teacher=False)
  counts = distill(variables, source, out_dir, overwrite=overwrite, only=only,
                   progress=progress)
  # Always a label directory, so that training with teacher_dir=OUT runs (on real labels
  # alone when the teacher had nothing to fill).
  teacher_lib.create_label_dir(out_dir)
  _report(counts, origin, out_dir, config, teacher["tasks"] if not only else (only,))
  return counts


def _report(counts: dict, origin: str, out_dir: str, config: Any, tasks: Any) -> None:
  print(f"teacher {origin}: wrote {counts['segm']} segm and {counts['depth']} depth labels "
        f"for {counts['samples']} samples to {out_dir}")
  if counts["segm"] + counts["depth"] == 0:
    print(f"nothing to label: every sample of {config.dataset!r}'s training split already has "
          f"the {' and '.join(tasks)} the teacher predicts")


def _run_onnx(config: ml_collections.ConfigDict, out_dir: str, path: str, card: str,
              class_map: str, min_confidence: float, fill: str, overwrite: bool, only: str,
              progress: bool, relative_ok: bool = False) -> dict[str, Any]:
  """hydrajax-distill --teacher: the card, class map and threshold checked before any frame."""
  from hydrajax.train import distill_onnx, onnx_teacher, teacher_targets

  if fill not in teacher_lib.FILLS:
    raise ValueError(f"--fill must be one of {', '.join(teacher_lib.FILLS)}, got {fill!r}")
  if not 0.0 <= min_confidence < 1.0:
    raise ValueError(f"--min-confidence must be in [0, 1), got {min_confidence}")
  model = onnx_teacher.OnnxTeacher(path, card)
  tasks = {only} if only else {"segm", "depth"}
  tasks &= set(config.tasks)
  table, names = None, list(sources.class_names(config) or ())
  if model.segm_output and "segm" in tasks:
    if not names:
      raise ValueError(f"teacher {path} gives segmentation but dataset {config.dataset!r} has "
                       f"no class names (a folder's ROOT/classes.txt); or --only depth")
    names += [str(i) for i in range(len(names), config.num_classes or len(names))]
    mapping = teacher_targets.read_class_map(class_map) if class_map else None
    table = teacher_targets.class_table(model.classes, names, mapping, class_map or "class map")
    if min_confidence and model.segm_kind != "segm_logits":
      raise ValueError(f"--min-confidence needs segm_logits; teacher {path}'s "
                       f"{model.segm_output!r} is {model.segm_kind}")
  elif class_map or min_confidence:
    raise ValueError(f"--class-map / --min-confidence: teacher {path} gives no segmentation "
                     f"used here (card outputs: {model.outputs})")
  labeller = distill_onnx.Labeller(model, tasks, table, len(names), min_confidence)
  if not labeller.tasks:
    raise ValueError(f"teacher {path} gives none of {sorted(tasks)} (its card's outputs: "
                     f"{', '.join(n + ': ' + o['kind'] for n, o in model.outputs.items())})")
  source = sources.build_source(config, "train", with_teacher=False)
  counts = distill_onnx.label_frames(labeller, source, out_dir, fill=fill, overwrite=overwrite,
                                     progress=progress, relative_ok=relative_ok)
  _report(counts, path, out_dir, config, sorted(labeller.tasks))
  line = distill_onnx.summary(counts)
  if line:
    print(line)
  return counts


def main(argv):
  del argv
  from absl import flags

  from hydrajax.train import config_check
  f = flags.FLAGS
  with config_check.exit_on_bad_input():
    run(f.config, f.out, f.weights, f.workdir, f.overwrite, f.only, teacher=f.teacher,
        teacher_card=f["teacher-card"].value, class_map=f["class-map"].value,
        min_confidence=f["min-confidence"].value, fill=f.fill,
        depth_relative_ok=f["depth-relative-ok"].value)


def cli() -> None:
  """The `hydrajax-distill` console script (also `python -m hydrajax distill`)."""
  from hydrajax.runtime import cpu
  # huge pages for XLA's per-step buffers; only when started as this tool, not from a caller
  cpu.tune_tool("hydrajax-distill", "hydrajax.train.distill")
  # absl's --help prints the __main__ module's docstring: this tool's, however it was started
  sys.modules["__main__"].__doc__ = __doc__
  from hydrajax.train import config_file
  spec = config_file.spec_in_argv(sys.argv[1:])
  if spec:  # its `from configs import default` works from this console script too
    config_file.make_importable(spec)
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None,
                                  "Config of the STUDENT's dataset (which samples to label).")
  flags.DEFINE_string("teacher", "", "Teacher ONNX graph (any model; its card says how to "
                      "call it).")
  flags.DEFINE_string("teacher-card", "", "Teacher card JSON (else the graph's metadata "
                      "'hydrajax_teacher_card').")
  flags.DEFINE_string("class-map", "", "Teacher class -> dataset class (JSON object or two "
                      "columns); unmapped classes are ignored (255). Default: same names.")
  flags.DEFINE_float("min-confidence", 0.0, "Ignore pixels whose teacher softmax (summed per "
                     "dataset class) is below this.")
  flags.DEFINE_enum("fill", "missing", ["missing", "all"], "missing: label only what a frame "
                    "lacks; all: every modality (real labels still win where valid).")
  flags.DEFINE_bool("depth-relative-ok", False, "A relative depth teacher with no metric "
                    "depth to fit it to writes relative labels (training scores them with a "
                    "scale-and-shift-invariant loss) instead of stopping.")
  flags.DEFINE_string("weights", "", "Or: hydrajax teacher weights .npz.")
  flags.DEFINE_string("workdir", "", "Or: a teacher training run: its weights/best.npz, else "
                      "final.npz, else its latest checkpoint (--config must then describe "
                      "the teacher's model: tasks, classes).")
  flags.DEFINE_string("out", None, "Teacher label directory to write.")
  flags.DEFINE_bool("overwrite", False, "Relabel samples that already have a label.")
  flags.DEFINE_enum("only", "", ["", "segm", "depth"], "Write this modality only (e.g. the "
                    "depth of a joint teacher trained on other classes).")
  flags.mark_flags_as_required(["config", "out"])
  for name in ("config", "teacher", "teacher-card", "class-map", "min-confidence", "fill",
               "depth-relative-ok", "weights", "workdir", "out", "overwrite", "only"):
    # --help lists the flags of the script being run; as a console script that is a wrapper.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(main)


if __name__ == "__main__":
  sys.argv[0] = "python -m hydrajax.train.distill"
  cli()
