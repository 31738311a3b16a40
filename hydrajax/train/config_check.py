"""Config validation: every field checked once, before anything is loaded or compiled.

`validate(config, purpose)` returns a normalised copy (a single number for an (H, W) field
becomes a square, tasks in canonical order) or raises one `ConfigError` listing every
problem, each naming the field, the value and what is expected. Checked: types, ranges
(positive sizes, rates >= 0, fractions in (0, 1]), known names (dataset, tasks, schedule,
eval crop, best metric and mode), and combinations: batch divisible by the devices,
`best_metric` one that evaluation reports for a task that is trained (loss weight > 0),
`num_classes` covering the dataset's classes where the dataset knows them, paths that must
exist, a schedule that the run's updates can reach (distinct step boundaries, warmup shorter
than the updates, at least one update), and the multi-process fields.

Command-line entry points run inside `exit_on_bad_input()`, which prints `error: ...` for
bad input (no traceback) and exits with status 2.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Iterator, Sequence

import ml_collections

from hydrajax.data import registry
from hydrajax.evaluate.metrics import CROPS
from hydrajax.models import TASKS
from hydrajax.models.ops import IMPLS

SCHEDULES = ("poly", "step", "constant")  # hydrajax.train.loop.learning_rate_fn
# What evaluation reports per task, and which direction is better.
METRICS_MAX = {"segm": ("miou", "pixel_acc", "mean_acc"), "depth": ("delta1", "delta2", "delta3")}
METRICS_MIN = {"segm": (), "depth": ("rmse", "rmse_log", "abs_rel", "sq_rel")}
PURPOSES = ("train", "evaluate", "distill")
_MISSING = object()


class ConfigError(ValueError):
  """The config has a wrong field; the message names each field, its value, what is expected."""


class _Checker:
  """Reads fields by dotted name and collects one problem per bad field."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: list[str] = []
    self.fixed: dict[str, Any] = {}

  def get(self, name: str) -> Any:
    node = self.config
    for part in name.split("."):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        self.problems.append(f"config has no field '{name}' (is it an old config file?)")
        return _MISSING
    return node

  def fail(self, name: str, value: Any, expected: str) -> None:
    self.problems.append(f"config.{name}={value!r}: expected {expected}")

  def number(self, name: str, *, low: float | None = None, low_open: bool = False,
             high: float | None = None, high_open: bool = False, integer: bool = False,
             what: str = "") -> Any:
    """The field if it is a finite number (an int if `integer`) within the bounds, else
    _MISSING (the problem recorded)."""
    value = self.get(name)
    if value is _MISSING:
      return value
    ok = _is_int(value) if integer else _is_number(value) and math.isfinite(value)
    if ok and low is not None:
      ok = value > low if low_open else value >= low
    if ok and high is not None:
      ok = value < high if high_open else value <= high
    if not ok:
      self.fail(name, value, what or _describe_range(integer, low, low_open, high, high_open))
      return _MISSING
    return value

  def typed(self, name: str, kind: type, expected: str) -> Any:
    value = self.get(name)
    if value is not _MISSING and not isinstance(value, kind):
      self.fail(name, value, expected)
      return _MISSING
    return value

  def flag(self, name: str) -> Any:
    return self.typed(name, bool, "True or False")

  def text(self, name: str) -> Any:
    return self.typed(name, str, "a string")

  def choice(self, name: str, choices: Sequence[str]) -> Any:
    value = self.get(name)
    if value is not _MISSING and value not in choices:
      self.fail(name, value, "one of " + ", ".join(repr(c) for c in choices))
      return _MISSING
    return value


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe_range(integer: bool, low, low_open, high, high_open) -> str:
  kind = "an int" if integer else "a number"
  if low is not None and high is not None:
    return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  if low is not None:
    return f"{kind} {'>' if low_open else '>='} {low}"
  if high is not None:
    return f"{kind} {'<' if high_open else '<='} {high}"
  return kind


def _size_pair(c: _Checker, name: str) -> None:
  """An (H, W) field: two positive ints; one int (or a 1-tuple) means a square."""
  value = c.get(name)
  if value is _MISSING:
    return
  pair = (value, value) if _is_int(value) else tuple(value) if isinstance(
      value, (tuple, list)) else None
  if pair is not None and len(pair) == 1:
    pair = pair * 2
  if pair is None or len(pair) != 2 or not all(_is_int(v) and v > 0 for v in pair):
    c.fail(name, value, "(height, width) in pixels: one or two positive ints")
    return
  c.fixed[name] = pair


def _check_data(c: _Checker, purpose: str) -> None:
  dataset = c.choice("dataset", tuple(registry.DATASETS))
  data_dir = c.text("data_dir")
  if (dataset is not _MISSING and registry.DATASETS[dataset].needs_data_dir
      and data_dir is not _MISSING):
    if not data_dir:
      c.fail("data_dir", data_dir, f"the {dataset} directory (--config.data_dir=PATH)")
    elif not os.path.isdir(data_dir):
      c.fail("data_dir", data_dir, "an existing directory")
  teacher_dir = c.text("teacher_dir")
  if purpose == "train" and teacher_dir and not os.path.isfile(
      os.path.join(teacher_dir, "teacher.json")):
    c.fail("teacher_dir", teacher_dir, "a directory written by `python -m hydrajax.train.distill` "
           "(with teacher.json), or ''")
  _size_pair(c, "crop_size")
  scale = c.get("scale_range")
  if scale is not _MISSING:
    if not (isinstance(scale, (tuple, list)) and len(scale) == 2 and all(
        _is_number(s) and math.isfinite(s) and s > 0 for s in scale) and scale[0] <= scale[1]):
      c.fail("scale_range", scale, "(min, max) factors with 0 < min <= max, e.g. (0.5, 2.0); "
             "(1.0, 1.0) for no scaling")
  c.flag("flip")
  c.number("num_workers", low=0, integer=True)
  c.number("prefetch_to_device", low=0, integer=True,
           what="an int >= 0 (batches copied to the devices ahead; 0 = none)")
  c.number("depth_divisor", low=0)
  if dataset == "synthetic":
    for field in ("num_train", "num_val", "height", "width"):
      c.number(f"synthetic.{field}", low=0, low_open=True, integer=True)
    c.number("synthetic.seed", low=0, integer=True)
  if dataset == "nyud_raw":
    c.text("nyud_raw.tfds_split")
    c.text("nyud_raw.tfds_dir")
    weights = [c.number(f"nyud_raw.{f}", low=0) for f in ("labelled_weight", "raw_weight")]
    if all(w is not _MISSING for w in weights) and sum(weights) <= 0:
      c.fail("nyud_raw.labelled_weight", weights[0], "a positive weight for at least one of "
             "nyud_raw.labelled_weight, nyud_raw.raw_weight")
  if dataset == "kitti_semantics":
    for field in ("semantics_train", "semantics_val"):
      c.text(f"kitti.{field}")
  if dataset == "folder":
    _check_folder(c, data_dir)
  if dataset == "kitti":
    for field in ("segm_train", "segm_val", "depth_train", "depth_val"):
      c.text(f"kitti.{field}")
    weights = [c.number(f"kitti.{f}", low=0) for f in ("segm_weight", "depth_weight")]
    if all(w is not _MISSING for w in weights) and sum(weights) <= 0:
      c.fail("kitti.segm_weight", weights[0], "a positive weight for at least one of "
             "kitti.segm_weight, kitti.depth_weight")


def _check_folder(c: _Checker, data_dir: Any) -> None:
  """The folder dataset's fields, its classes file (the class count when num_classes is 0)
  and intrinsics.json: what can be read without scanning the images."""
  from hydrajax.data import folder

  c.number("folder.depth_scale", low=0, low_open=True)
  c.number("folder.val_fraction", low=0, high=1, high_open=True)
  c.number("folder.split_seed", low=0, integer=True)
  c.flag("folder.skip_bad")
  if data_dir is _MISSING or not data_dir or not os.path.isdir(data_dir):
    return
  try:
    info = folder.read_classes(data_dir)
    folder.read_intrinsics(data_dir)
  except ValueError as e:
    c.problems.append(str(e))
    return
  if info is not None and c.get("num_classes") == 0:
    c.fixed["num_classes"] = len(info.names)


def _dataset_classes(c: _Checker, dataset: Any) -> int:
  """How many classes the dataset's labels use (0: unknown or none)."""
  if dataset is _MISSING or dataset not in registry.DATASETS:
    return 0
  try:
    names = registry.class_names(c.config)
  except ValueError:  # a bad classes file: reported by _check_folder
    return 0
  return len(names) if names else 0


def _check_model(c: _Checker, purpose: str) -> tuple:
  """Checks model fields; returns the (canonically ordered) tasks, or () if they are bad."""
  tasks = c.get("tasks")
  if tasks is not _MISSING:
    names = (tasks,) if isinstance(tasks, str) else tuple(tasks) if isinstance(
        tasks, (tuple, list)) else None
    if (names is None or not names or len(set(names)) != len(names)
        or not set(names) <= set(TASKS)):
      c.fail("tasks", tasks, f"distinct names from {', '.join(TASKS)}, e.g. segm,depth "
             f"(--config.tasks=segm,depth)")
      tasks = ()
    else:
      tasks = tuple(t for t in TASKS if t in names)
      c.fixed["tasks"] = tasks
  else:
    tasks = ()
  num_classes = c.fixed.get("num_classes", c.get("num_classes"))
  dataset = c.get("dataset")
  known = _dataset_classes(c, dataset)
  if num_classes is not _MISSING:
    if not _is_int(num_classes) or num_classes < ("segm" in tasks):
      hint = (f" (or {c.config.get('data_dir') or 'ROOT'}/classes.txt, one class name per "
              f"line; --config.tasks=depth --config.best_metric=rmse --config.best_mode=min for depth "
              f"only)" if dataset == "folder" else "")
      c.fail("num_classes", num_classes, f"an int >= 1 (segmentation classes){hint}"
             if "segm" in tasks else "an int >= 0")
    elif "segm" in tasks and known > num_classes:
      # Fewer classes than the labels use would silently ignore the others. More loses
      # nothing (every label is learnt and scored; e.g. keeping a 40-class head).
      c.fail("num_classes", num_classes, f"at least {known}, the classes "
             f"of dataset {dataset!r} (labels >= num_classes would be ignored)")
  if ("normals" in tasks and dataset in registry.DATASETS
      and registry.DATASETS[dataset].has_normals is False):
    c.fail("tasks", c.get("tasks"), f"tasks the dataset {dataset!r} has labels for: it has "
           f"no surface normals")
  c.flag("align_corners")
  c.choice("impl", IMPLS)
  init_from = c.text("init_from")
  if purpose == "train" and init_from and not os.path.isfile(init_from):
    c.fail("init_from", init_from, "an existing weights .npz file, or ''")
  c.number("init_seed", low=0, integer=True)
  return tasks


def _check_optimisation(c: _Checker, tasks: tuple) -> None:
  c.number("batch_size", low=0, low_open=True, integer=True)
  accum = c.number("grad_accum_steps", low=1, integer=True)
  steps = c.number("num_train_steps", low=1, integer=True)
  updates = _MISSING
  if accum is not _MISSING and steps is not _MISSING:
    if accum > steps:
      c.fail("grad_accum_steps", accum, f"at most num_train_steps={steps}: the run would end "
             f"before its first update and save an untrained model")
    else:
      updates = steps // accum
  for name in ("lr_encoder", "lr_decoder", "weight_decay", "poly_power"):
    c.number(name, low=0)
  c.number("momentum", low=0, high=1, high_open=True)
  c.flag("nesterov")
  c.choice("schedule", SCHEDULES)
  bounds = c.get("step_boundaries")
  if bounds is not _MISSING:
    seq = (bounds,) if _is_number(bounds) else tuple(bounds) if isinstance(
        bounds, (tuple, list)) else None
    if seq is None or not all(_is_number(b) and 0 < b <= 1 for b in seq) or any(
        a >= b for a, b in zip(seq, seq[1:])):
      c.fail("step_boundaries", bounds, "strictly increasing fractions of the run in (0, 1], "
             "e.g. (0.5, 0.75) (equal boundaries collapse into one step)")
    else:
      c.fixed["step_boundaries"] = seq
  c.number("step_factor", low=0, low_open=True)
  warmup = c.number("warmup_steps", low=0, integer=True)
  if warmup not in (_MISSING, 0) and updates is not _MISSING and warmup >= updates:
    c.fail("warmup_steps", warmup, f"fewer than the run's {updates} updates (num_train_steps // "
           f"grad_accum_steps), or the learning rate never decays")
  weights = [c.number(f"loss_weights.{t}", low=0) for t in tasks]
  if tasks and all(w is not _MISSING for w in weights) and sum(weights) <= 0:
    c.fail(f"loss_weights.{tasks[0]}", weights[0], f"a positive weight for at least one "
           f"task of {tasks}")
  c.flag("freeze_bn")
  c.flag("sync_bn")


def _check_run(c: _Checker, tasks: tuple, purpose: str) -> None:
  c.number("seed", low=0, integer=True)
  c.number("log_every_steps", low=1, integer=True)
  c.number("eval_every_steps", low=0, integer=True)
  c.number("checkpoint_every_steps", low=1, integer=True)
  c.number("keep_checkpoints", low=1, integer=True)
  mode = c.choice("best_mode", ("max", "min"))
  metric = c.get("best_metric")
  if metric is not _MISSING and tasks:
    ranked = {"max": {m for t in tasks for m in METRICS_MAX.get(t, ())},
              "min": {m for t in tasks for m in METRICS_MIN.get(t, ())}}
    known = sorted(ranked["max"] | ranked["min"])
    if metric not in known:
      c.fail("best_metric", metric, f"a metric evaluation reports for tasks {tasks}: "
             f"{', '.join(known) or 'none (add segm or depth)'}")
    elif mode is not _MISSING and metric not in ranked[mode]:
      better = "max" if mode == "min" else "min"
      c.fail("best_mode", mode, f"{better!r}: {metric} is better when "
             f"{'higher' if better == 'max' else 'lower'}")
    elif purpose == "train":
      task = next(t for t in tasks if metric in METRICS_MAX.get(t, ()) + METRICS_MIN.get(t, ()))
      weight = c.config.get("loss_weights", {}).get(task)
      if weight == 0:
        c.fail("best_metric", metric, f"a metric of a trained task: loss_weights.{task} is 0, "
               f"so {metric} would rank checkpoints by a head that does not learn")
  c.number("num_devices", low=0, integer=True)
  c.flag("progress_bar")
  _check_distributed(c)
  _check_resume_fields(c)


def _check_resume_fields(c: _Checker) -> None:
  """resume_may_change: config field names (a tuple; commas also separate names)."""
  value = c.get("resume_may_change")
  if value is _MISSING:
    return
  # The command line gives `--config.resume_may_change=a,b` as the 1-tuple ("a,b",).
  items = (value,) if isinstance(value, str) else value
  names = None
  if isinstance(items, (tuple, list)) and all(isinstance(n, str) for n in items):
    names = tuple(n.strip() for item in items for n in item.split(",") if n.strip())
  fields = set(_field_names(c.config))
  if names is None:
    c.fail("resume_may_change", value, "config field names, e.g. num_train_steps,eval_every_steps")
    return
  unknown = [n for n in names if n not in fields]
  if unknown:
    c.fail("resume_may_change", value, f"names of config fields; no field {', '.join(unknown)}")
    return
  c.fixed["resume_may_change"] = names


def _field_names(config: Any, prefix: str = "") -> Iterator[str]:
  """Every field and sub-config name, dotted ("eval", "eval.crop")."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    yield name
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      yield from _field_names(value, name + ".")


def _check_distributed(c: _Checker) -> None:
  """The jax.distributed fields: well-formed, and set only for a distributed run."""
  distributed = c.flag("distributed")
  address = c.text("coordinator_address")
  if address not in (_MISSING, ""):
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      c.fail("coordinator_address", address, "'host:port' of process 0 (port 1-65535), or ''")
  count = c.number("num_processes", low=0, integer=True)
  pid = c.number("process_id", low=-1, integer=True)
  if count not in (_MISSING, 0) and pid is not _MISSING and pid >= count:
    c.fail("process_id", pid, f"-1 (auto-detect) or 0..{count - 1} (num_processes={count})")
  for name in ("initialization_timeout", "heartbeat_timeout"):
    c.number(name, low=1, integer=True, what="an int >= 1 (seconds)")
  if distributed is False:
    for name, unset in (("coordinator_address", ""), ("num_processes", 0), ("process_id", -1)):
      value = c.config.get(name, unset)
      if value != unset:
        c.fail(name, value, f"{unset!r} without distributed=True (it would be ignored and the "
               f"process would run alone); set --config.distributed=True")


def _check_eval(c: _Checker) -> None:
  c.number("eval.batch_size", low=1, integer=True)
  c.number("eval.pad_to_multiple", low=0, integer=True)
  min_depth = c.number("eval.min_depth", low=0, low_open=True)
  max_depth = c.number("eval.max_depth", low=0)
  if min_depth is not _MISSING and max_depth not in (_MISSING, 0) and max_depth <= min_depth:
    c.fail("eval.max_depth", max_depth, f"0 (no cap) or more than eval.min_depth={min_depth}")
  c.choice("eval.crop", tuple(CROPS))
  c.number("eval.num_samples", low=0, integer=True)
  c.number("eval.max_examples", low=0, integer=True)


def _check_local_devices(c: _Checker) -> None:
  """Training on this host (no jax.distributed): devices asked for exist, batch splits."""
  if c.problems or c.get("distributed") is True:
    return  # distributed runs check after jax.distributed.initialize (train_lib)
  import jax

  available = jax.local_device_count()
  wanted = c.config.num_devices
  if wanted > available:
    c.fail("num_devices", wanted, f"at most the {available} local devices (0 = all)")
    return
  from hydrajax.runtime import parallel

  try:
    parallel.check_batch(c.config.batch_size, jax.local_devices()[:wanted or available])
  except ValueError as e:
    c.problems.append(str(e))


def validate(config: ml_collections.ConfigDict, purpose: str = "train"
             ) -> ml_collections.ConfigDict:
  """Check every field of `config` for `purpose` ("train", "evaluate" or "distill").

  Returns a normalised copy (locked like the configs of `configs/`). Raises ConfigError
  listing every bad field as `config.FIELD=VALUE: expected ...`.
  """
  if purpose not in PURPOSES:
    raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"expected an ml_collections.ConfigDict, got {type(config).__name__}")
  c = _Checker(config)
  _check_data(c, purpose)
  tasks = _check_model(c, purpose)
  _check_optimisation(c, tasks)
  _check_run(c, tasks, purpose)
  _check_eval(c)
  if purpose == "train":
    _check_local_devices(c)
  if c.problems:
    raise ConfigError("; ".join(c.problems))
  out = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  for name, value in c.fixed.items():
    *parents, leaf = name.split(".")
    node = out
    for p in parents:
      node = node[p]
    node[leaf] = value
  out.lock()
  return out


@contextlib.contextmanager
def exit_on_bad_input() -> Iterator[None]:
  """For command-line entry points: bad input (ConfigError and the other ValueError /
  OSError the library raises for files, data and weights, whose messages name the culprit)
  prints one `error: ...` message, no traceback, and exits with status 2."""
  try:
    yield
  except (ValueError, OSError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
