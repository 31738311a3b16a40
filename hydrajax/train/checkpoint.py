"""Checkpoints of a training run: train state, data iterator state and metrics, via Orbax.

Layout: WORKDIR/checkpoints/<step>/{state, data, metrics, config}. Orbax writes each step into
a temporary directory and renames it when complete, so a run killed at any moment (even
`kill -9` mid-save) leaves only complete checkpoints; leftovers are ignored on restart and
removed by the training run. Readers (evaluation, distillation) open the directory
`read_only`: they never delete anything, so a live run's in-flight save survives them.
`config` is the run's config (`parallel.flat_config`): a resume under another config is
refused naming the fields (`check_resume`), except those the new config lists in
`resume_may_change`.
Kept: the latest `keep` steps plus the best one by a validation metric.
Several processes: every process calls `save` and `restore` on the same (shared) directory;
Orbax writes the state once, and each process writes and reads its own data-iterator
position (data/process_<i>-of-<n>.json).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

# Fields that cannot change what a run computes: always free to differ on resume.
RESUME_FREE_FIELDS = ("progress_bar", "prefetch_to_device", "resume_may_change",
                      "coordinator_address", "initialization_timeout", "heartbeat_timeout")


def _finite_metrics(metrics: Mapping[str, Any] | None) -> dict | None:
  if not metrics:
    return None
  return {k: float(v) for k, v in metrics.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)}


class Checkpointer:
  """Save and restore (state, data iterator) at training steps.

  Args:
    directory: where step directories go (created).
    keep: number of latest checkpoints kept.
    best_metric, best_mode: a key of the metrics passed to `save`, "max" or "min"; the best
      checkpoint is kept besides the latest ones.
    read_only: for readers: nothing is created, saved or deleted (no clean-up of the
      temporary directories of a run saving at the same time).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 2, best_metric: str = "",
               best_mode: str = "max", read_only: bool = False):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric, self.best_mode = best_metric, best_mode
    self.read_only = read_only
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0,
          enable_async_checkpointing=False)
      absl_logger = logging.getLogger("absl")
      level = absl_logger.level
      absl_logger.setLevel(logging.ERROR)  # Orbax warns that a read-only directory is read-only
      try:
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "metrics", "config"))
      finally:
        absl_logger.setLevel(level)
      return
    policies = [cm.LatestN(n=max(keep, 1))]
    if best_metric:
      # A step whose metric was non-finite (dropped by `_finite_metrics`) or absent ranks
      # worst: BestN calls this on every kept step's metrics and a KeyError aborts the save.
      worst = -np.inf if best_mode == "max" else np.inf
      policies.append(cm.BestN(get_metric_fn=lambda m: m.get(best_metric, worst),
                               reverse=best_mode == "min", n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        cleanup_tmp_directories=True, enable_async_checkpointing=False, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "metrics", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    """The step with the best `best_metric` among kept checkpoints (None if none has it)."""
    best = None
    for step in self.all_steps():
      value = (self.metrics(step) or {}).get(self.best_metric)
      if value is None:
        continue
      better = best is None or (value > best[1] if self.best_mode == "max" else value < best[1])
      if better:
        best = (step, value)
    return None if best is None else best[0]

  def metrics(self, step: int) -> dict | None:
    path = os.path.join(self.directory, str(step), "metrics")
    if not os.path.isdir(path):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(
        metrics=ocp.args.JsonRestore()))["metrics"]

  def config(self, step: int) -> dict | None:
    """The config recorded with `step` (`parallel.flat_config` form), None if it has none."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "config")):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: Mapping[str, Any] | None = None,
           config: Mapping[str, str] | None = None) -> None:
    """Write `state` (host or device arrays, one copy), the iterator's position and the
    run's `config` (`parallel.flat_config`)."""
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only: cannot save step {step}")
    state = jax.device_get(state)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    clean = _finite_metrics(metrics)
    if clean:
      items["metrics"] = ocp.args.JsonSave(clean)
    if config is not None:
      items["config"] = ocp.args.JsonSave(dict(config))
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=clean, force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, target: Any, data_iterator: Any = None) -> Any:
    """State at `step`, shaped like `target` (arrays or ShapeDtypeStructs); sets the
    iterator (if given and saved) to its position at that step."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                            if not isinstance(x, jax.ShapeDtypeStruct) else x, target)
    items = {"state": ocp.args.StandardRestore(abstract)}
    data_dir = os.path.join(self.directory, str(step), "data")
    if data_iterator is not None and os.path.isdir(data_dir):
      # Grain keeps one file per process: process_<i>-of-<n>.json.
      mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      if not os.path.isfile(os.path.join(data_dir, mine)):
        raise ValueError(f"checkpoint {self.directory}/{step} holds the data positions "
                         f"{sorted(os.listdir(data_dir))}, none for this process ({mine}): "
                         f"resume with the number of processes that wrote it")
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    where = (f"checkpoint {self.directory}/{step} does not match the model and optimizer "
             f"of this config")
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
    except (ValueError, KeyError) as e:
      raise ValueError(f"{where}: {e}") from e
    # Orbax checks the tree structure but returns numpy leaves in the checkpoint's shape,
    # whatever the target's: a changed head (num_classes) would load without complaint.
    wrong = [f"{jax.tree_util.keystr(path)} {np.shape(x)} (target {tuple(t.shape)})"
             for (path, x), t in zip(jax.tree_util.tree_leaves_with_path(state),
                                     jax.tree.leaves(abstract))
             if np.shape(x) != tuple(t.shape)]
    if wrong:
      raise ValueError(f"{where}: shapes differ: " + ", ".join(wrong[:10]))
    return state

  def restore_variables(self, step: int) -> dict:
    """{"params", "batch_stats"} of the state at `step`, as saved (host arrays): what
    evaluation and prediction need, without building the optimizer to restore into."""
    where = f"checkpoint {self.directory}/{step}"
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))["state"]
    except (ValueError, KeyError) as e:
      raise ValueError(f"{where}: {e}") from e
    missing = [k for k in ("params", "batch_stats") if k not in state]
    if missing:
      raise ValueError(f"{where} holds no {' or '.join(missing)}: not a hydrajax train state")
    return {"params": state["params"], "batch_stats": state["batch_stats"]}

  def close(self) -> None:
    self.manager.close()


def _covered(field: str, names: Sequence[str]) -> bool:
  """`field` is one of `names` or under one of them ("eval" covers "eval.crop")."""
  return any(field == n or field.startswith(n + ".") for n in names)


def resume_differences(recorded: Mapping[str, str], current: Mapping[str, str],
                       may_change: Sequence[str] = ()) -> list[str]:
  """"field: recorded -> current" for each field that differs and may not change on resume
  (neither in RESUME_FREE_FIELDS nor covered by `may_change`)."""
  names = tuple(RESUME_FREE_FIELDS) + tuple(may_change)
  return [f"{k}: {recorded.get(k, '<absent>')} -> {current.get(k, '<absent>')}"
          for k in sorted(set(recorded) | set(current))
          if recorded.get(k) != current.get(k) and not _covered(k, names)]


def check_resume(ckpt: Checkpointer, step: int, current: Mapping[str, str],
                 may_change: Sequence[str] = ()) -> None:
  """Raise ValueError naming every field on which `current` differs from the config
  recorded with checkpoint `step` (beyond `may_change`). A checkpoint without a recorded
  config is not compared."""
  recorded = ckpt.config(step)
  if recorded is None:
    return
  diff = resume_differences(recorded, current, may_change)
  if diff:
    names = ",".join(d.split(":")[0] for d in diff)
    raise ValueError(
        f"{ckpt.directory}/{step} was trained under another config ({len(diff)} field"
        f"{'s' if len(diff) > 1 else ''}: {'; '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}"
        f"): resume with the recorded config, use another --workdir, or allow the change with "
        f"--config.resume_may_change={names}")
