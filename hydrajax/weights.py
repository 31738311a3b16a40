"""Weights files: a variables dict as one .npz of '/'-joined keys plus a JSON meta entry.

Written atomically (temp file + rename), read back with a full check against the tree the
architecture expects, so a wrong or truncated file fails with the offending keys named.
"""
from __future__ import annotations

import functools
import json
import os
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hydrajax import api
from hydrajax.runtime import atomic

_META_ENTRY = "__meta__"
_CONVERT_HINT = " (PyTorch checkpoints: convert with `python -m hydrajax.convert.official SRC DST.npz`)"
FORMAT_VERSION = 1


def flatten(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def save(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
  """Write {"params", "batch_stats"[, "meta"]} to `path` (.npz) atomically."""
  path = os.fspath(path)
  check(variables, what=path)
  arrays = flatten({"params": variables["params"], "batch_stats": variables["batch_stats"]})
  meta = {"format": "hydrajax-weights", "version": FORMAT_VERSION, **api.model_config(variables)}
  meta["tasks"] = list(meta["tasks"])
  arrays[_META_ENTRY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  atomic.write_atomic(path, lambda f: np.savez(f, **arrays))


def load(path: str | os.PathLike) -> dict:
  """Read a weights file written by `save` (or `python -m hydrajax.convert.official`)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a hydrajax weights file (.npz): not a zip archive (a "
                     f"truncated file?){_CONVERT_HINT}")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
    raise ValueError(f"{path} is not a hydrajax weights file (.npz): {e}") from e
  if _META_ENTRY not in arrays:
    raise ValueError(f"{path} has no '{_META_ENTRY}' entry: not a hydrajax weights "
                     f"file{_CONVERT_HINT}")
  try:
    meta = json.loads(arrays.pop(_META_ENTRY).tobytes().decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: its '{_META_ENTRY}' entry is not JSON ({e}): a damaged "
                     f"weights file") from e
  if not isinstance(meta, dict):
    raise ValueError(f"{path}: its '{_META_ENTRY}' entry is not a JSON object: a damaged "
                     f"weights file")
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in arrays.items()})
  variables = {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}
  if meta.get("align_corners"):
    variables[api.META_KEY] = {"align_corners": True}
  check(variables, what=path)
  return variables


def check(variables: Mapping[str, Any], what: str = "variables") -> None:
  """Raise ValueError listing missing, unexpected and mis-shaped keys, comparing
  `variables` with the tree of the architecture it claims (classes, tasks)."""
  cfg = api.model_config(variables)
  want = expected_shapes(cfg["num_classes"], cfg["tasks"])
  have = flatten_shapes({"params": variables["params"], "batch_stats": variables["batch_stats"]})
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  wrong = sorted(f"{k}: expected {want[k]}, got {have[k]}"
                 for k in set(want) & set(have) if want[k] != have[k])
  if missing or unexpected or wrong:
    parts = [f"{title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else "")
             for title, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("wrong shape", wrong)) if keys]
    raise ValueError(f"{what} does not match the {cfg['tasks']} model with "
                     f"{cfg['num_classes']} classes: " + "; ".join(parts))


@functools.lru_cache(maxsize=16)
def expected_shapes(num_classes: int, tasks: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
  """{"params/..." or "batch_stats/...": shape} of the architecture; traced once per
  (classes, tasks), since tracing the model takes seconds on a small CPU."""
  model = api.model_from_config({"num_classes": num_classes, "tasks": tasks,
                                 "align_corners": False}, impl="cpu")  # shapes: any impl
  tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return flatten_shapes({"params": tree["params"], "batch_stats": tree["batch_stats"]})


def flatten_shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  return {"/".join(k): tuple(getattr(v, "shape", None) or np.shape(v))
          for k, v in traverse_util.flatten_dict(tree).items()}
