"""Convert PyTorch checkpoints of this network (and ImageNet MobileNet-v2 backbones) to
hydrajax weights, without torch.

    python -m hydrajax.convert.official ExpNYUD_joint.ckpt nyud.npz
    python -m hydrajax.convert.official mobilenetv2-e6e8dd43.pth init.npz --num-classes 40

Layouts, detected from the keys (all PyTorch state dicts; convs OIHW, Flax kernels HWIO):
- "official": multi-task-refinenet's `layer1..8`, `conv3..8`, `crpK.0.{i}_outvar_dimred`,
  `conv_adaptK`, `pre_X`/`X` heads (2 or 3 tasks; classes from `segm.weight`);
- "densetorch": DenseTorch MTLWRefineNet, `0.layer*` / `1.stem_convs.N`, `1.crp_blocks.N`,
  `1.adapt_convs.N`, `1.heads.N.{0,2}` (heads in the order segm, depth, normals); these
  models upsample with align_corners=True, recorded as `variables["meta"]`;
- "lwrefinenet": Light-Weight RefineNet's ImageNet MobileNet-v2 (`layer1..8` only);
- "torchvision": torchvision's `mobilenet_v2` (`features.*`); layer2.0's expansion conv,
  which torchvision lacks, becomes an exact identity.
Backbones give encoder weights plus a fresh decoder and heads from `hydrajax.init`.
Every layout is first renamed to official keys; one table maps those to the Flax tree, and
any missing, unexpected or mis-shaped key fails with the keys named.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hydrajax import api, weights
from hydrajax.convert import torch_pickle
from hydrajax.models import HEAD_NAMES, MOBILENET_V2_SETTINGS, TASKS
from hydrajax.runtime.stored_zip import printable

LAYOUTS = ("official", "densetorch", "lwrefinenet", "torchvision")
BACKBONE_LAYOUTS = ("lwrefinenet", "torchvision")
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_BLOCK_PARTS = ("expand", "depthwise", "project")
# DenseTorch decoder module lists, in order, as official names (this order loads a DenseTorch
# checkpoint 1:1 into the official model).
_DT_STEM = ("conv8", "conv7", "conv6", "conv5", "conv4", "conv3")
_DT_CRP = ("crp4", "crp3", "crp2", "crp1")
_DT_ADAPT = ("conv_adapt4", "conv_adapt3", "conv_adapt2")
_DT_HEADS = ("segm", "depth", "normal")
_MAX_KEY = 300
_TV_DROPPED = re.compile(r"^(features\.18\.|classifier\.)")


class ConversionError(ValueError):
  """The checkpoint does not match the layout it was detected (or declared) as."""


# ----------------------------------------------------------------------------- reading

def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A checkpoint's state dict as {key: array}: unwraps {'state_dict': ...}, strips
  `module.` prefixes (DataParallel) and drops `num_batches_tracked` counters."""
  obj = torch_pickle.load(path)
  for wrapper in ("state_dict", "model_state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state dict (a mapping of names to tensors), "
                          f"got {type(obj).__name__}")
  out, nonfinite = {}, {}
  for key, value in obj.items():
    key = str(key)
    if not key.isprintable() or len(key) > _MAX_KEY:
      # Keys are echoed in messages: a file's control characters must not reach a terminal.
      raise ConversionError(f"{path}: state dict key {printable(key)} is not a printable "
                            f"name of at most {_MAX_KEY} characters")
    while key.startswith("module."):
      key = key[len("module."):]
    if key.endswith("num_batches_tracked"):
      continue
    if not isinstance(value, np.ndarray):
      raise ConversionError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
    if value.dtype.kind not in "biu":  # float, bfloat16
      _check_finite(path, key, value, nonfinite)
    out[key] = value
  if not out:
    raise ConversionError(f"{path}: the state dict holds no tensors")
  return out


def _count_nonfinite(array: np.ndarray) -> int:
  return int(np.size(array) - np.count_nonzero(np.isfinite(array)))


def _check_finite(path: str, key: str, value: np.ndarray, nonfinite: dict[int, int]) -> None:
  """Refuse NaN or Inf in the storage `value` views: the legacy format has no checksum, and
  damaged bytes show up, at best, as NaN or Inf. Each storage is scanned once (`nonfinite`:
  id -> count), however many tensors view it."""
  storage = value
  while isinstance(storage.base, np.ndarray):
    storage = storage.base
  if id(storage) not in nonfinite:
    nonfinite[id(storage)] = _count_nonfinite(storage)
  if nonfinite[id(storage)]:
    bad = _count_nonfinite(value)
    where = (f"has {bad} non-finite value(s) (NaN or Inf)" if bad else
             f"views a storage that holds {nonfinite[id(storage)]} non-finite value(s) (NaN or "
             f"Inf) outside it")
    raise ConversionError(f"{path}: tensor '{key}' {where}: the file is corrupt or the model "
                          f"diverged")


def detect_layout(keys: Sequence[str], source: str = "checkpoint") -> str:
  """Name the layout of a (prefix-stripped) state dict from its keys."""
  keys = set(keys)
  if any(k.startswith("1.stem_convs.") for k in keys):
    return "densetorch"
  if any(k.startswith("features.") for k in keys):
    return "torchvision"
  if "layer1.0.weight" in keys:
    return "official" if "conv8.weight" in keys else "lwrefinenet"
  raise ConversionError(f"{source}: cannot detect the checkpoint layout: expected keys like "
                        "'layer1.0.weight' (official / Light-Weight RefineNet), "
                        "'module.1.stem_convs.0.weight' (DenseTorch) or 'features.0.0.weight' "
                        f"(torchvision); first keys are {sorted(keys)[:8]}")


# ------------------------------------------------------------ renaming to official keys

def densetorch_to_official(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`0.layer*` -> `layer*`; `1.stem_convs.N` etc. -> `convK`, `crpK`, `conv_adaptK`,
  `pre_X`/`X`. Keys outside these lists stay as they are (and are reported later)."""
  table = {}
  for lst, names in (("stem_convs", _DT_STEM), ("crp_blocks", _DT_CRP),
                     ("adapt_convs", _DT_ADAPT)):
    table.update({f"1.{lst}.{i}": name for i, name in enumerate(names)})
  for i, name in enumerate(_DT_HEADS):
    table[f"1.heads.{i}.0"] = f"pre_{name}"
    table[f"1.heads.{i}.2"] = name
  out = {}
  for key, value in sd.items():
    module, _, leaf = key.rpartition(".")
    if module.startswith("0."):
      out[key[2:]] = value
    elif module in table:
      out[f"{table[module]}.{leaf}"] = value
    elif module.startswith("1.crp_blocks.") and module.rsplit(".", 2)[0] in table:
      block, inner, conv = module.rsplit(".", 2)  # 1.crp_blocks.N . 0 . {i}_outvar_dimred
      out[f"{table[block]}.{inner}.{conv}.{leaf}"] = value
    else:
      out[key] = value
  return out


def torchvision_to_official(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision `features.*` -> official `layer*` keys. features.18 and the classifier are
  dropped; layer2.0's expansion conv (absent in torchvision) is set to the identity: eye
  kernel, BN gamma 1, beta 0, mean 0, var 1 - eps, so BN is x / sqrt(1) = x and the ReLU6
  after it is exact because its input, the stem's ReLU6 output, is already in [0, 6]."""
  renames = {"features.0.0": "layer1.0", "features.0.1": "layer1.1",
             "features.1.conv.0.0": "layer2.0.output.1.0",
             "features.1.conv.0.1": "layer2.0.output.1.1",
             "features.1.conv.1": "layer2.0.output.2.0",
             "features.1.conv.2": "layer2.0.output.2.1"}
  feature = 2
  for idx, (_, _, n, _) in enumerate(MOBILENET_V2_SETTINGS[1:]):
    for j in range(n):
      block = f"layer{idx + 3}.{j}.output"
      for src, dst in (("0.0", "0.0"), ("0.1", "0.1"), ("1.0", "1.0"), ("1.1", "1.1"),
                       ("2", "2.0"), ("3", "2.1")):
        renames[f"features.{feature}.conv.{src}"] = f"{block}.{dst}"
      feature += 1
  out = {}
  for key, value in sd.items():
    if _TV_DROPPED.match(key):
      continue
    module, _, leaf = key.rpartition(".")
    out[f"{renames[module]}.{leaf}" if module in renames else key] = value
  c = 32
  out["layer2.0.output.0.0.weight"] = np.eye(c, dtype=np.float32)[:, :, None, None]
  for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                      ("running_var", 1.0 - 1e-5)):
    out[f"layer2.0.output.0.1.{name}"] = np.full((c,), value, np.float32)
  return out


# ------------------------------------------------------- official keys -> Flax variables

def official_key(path: tuple[str, ...]) -> str:
  """The official PyTorch key of one Flax variable path, e.g.
  ('params', 'encoder', 'layer3_1', 'expand', 'bn', 'scale') -> 'layer3.1.output.0.1.weight'."""
  collection, module, *rest = path
  leaf = rest[-1]
  if module == "encoder":
    if rest[0] == "layer1":
      prefix = "layer1"
    else:
      layer, j = rest[0].split("_")
      prefix = f"{layer}.{j}.output.{_BLOCK_PARTS.index(rest[1])}"
    return f"{prefix}.0.weight" if rest[-2] == "conv" else f"{prefix}.1.{_BN[leaf]}"
  if module == "decoder":
    if rest[0].startswith("crp"):
      return f"{rest[0]}.0.{rest[1][len('conv'):]}_outvar_dimred.weight"
    return f"{rest[0]}.weight"
  if module.startswith("head_"):
    return f"{rest[0]}.{'weight' if leaf == 'kernel' else 'bias'}"
  raise KeyError(path)


def _to_flax(value: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
  """OIHW conv weight -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C)); vectors unchanged."""
  value = np.asarray(value, dtype)
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def map_official(sd: Mapping[str, np.ndarray], num_classes: int, tasks: tuple[str, ...],
                 encoder_only: bool = False, source: str = "checkpoint",
                 dtype: Any = np.float32) -> dict:
  """Official-key state dict -> flat {Flax path: array of `dtype`}; raises ConversionError
  naming every missing, unexpected and mis-shaped key. `encoder_only` maps just
  params/encoder. (dtype float64 serves the float64 parity tests.)"""
  expected = {tuple(k.split("/")): shape
              for k, shape in weights.expected_shapes(num_classes, tuple(tasks)).items()}
  if encoder_only:
    expected = {p: s for p, s in expected.items() if p[1] == "encoder"}
  flat, missing, wrong, used = {}, [], [], set()
  for path, shape in expected.items():
    key = official_key(path)
    if key not in sd:
      missing.append(key)
      continue
    used.add(key)
    value = _to_flax(sd[key], dtype)
    if value.shape != shape:
      wrong.append(f"{key}: expected {_torch_shape(shape)}, got {tuple(np.shape(sd[key]))}")
      continue
    flat[path] = value
  unexpected = sorted(set(sd) - used)
  if missing or unexpected or wrong:
    lines = [f"{source} does not match the {'encoder of the ' if encoder_only else ''}"
             f"{tasks} model with {num_classes} classes:"]
    for title, keys in (("missing", sorted(missing)), ("unexpected", unexpected),
                        ("wrong shape", sorted(wrong))):
      if keys:
        lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) +
                     (" ..." if len(keys) > 20 else ""))
    raise ConversionError("\n".join(lines))
  return flat


def _torch_shape(flax_shape: tuple) -> tuple:
  return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1]) if len(
      flax_shape) == 4 else flax_shape


def infer_heads(sd: Mapping[str, np.ndarray], source: str = "checkpoint"
                ) -> tuple[int, tuple[str, ...]]:
  """(num_classes, tasks) of an official-key state dict, from which heads it has."""
  tasks = tuple(t for t in TASKS if f"{HEAD_NAMES[t]}.weight" in sd)
  if not tasks:
    raise ConversionError(f"{source}: the checkpoint has no task head (no 'segm.weight', "
                          "'depth.weight' or 'normal.weight')")
  num_classes = int(np.shape(sd["segm.weight"])[0]) if "segm" in tasks else 0
  return num_classes, tasks


# ----------------------------------------------------------------------------- driver

def convert(path: str, *, layout: str = "auto", num_classes: int = 40,
            tasks: Sequence[str] = ("segm", "depth"), seed: int = 0) -> tuple[dict, dict]:
  """Read a PyTorch checkpoint and return (variables, info).

  `num_classes`, `tasks` and `seed` only matter for backbones (fresh decoder and heads).
  info: {"layout", "num_classes", "tasks", "align_corners", "parameters"}.
  """
  sd = read_state_dict(path)
  if layout == "auto":
    layout = detect_layout(sd, path)
  elif layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS} or 'auto'")
  if layout == "densetorch":
    sd = densetorch_to_official(sd)
  elif layout == "torchvision":
    sd = torchvision_to_official(sd)

  if layout in BACKBONE_LAYOUTS:
    tasks = tuple(tasks)
    flat_encoder = map_official(sd, num_classes, tasks, encoder_only=True, source=path)
    variables = api.init(seed, num_classes=num_classes, tasks=tasks)
    flat = traverse_util.flatten_dict({"params": variables["params"],
                                       "batch_stats": variables["batch_stats"]})
    flat.update({p: jnp.asarray(v) for p, v in flat_encoder.items()})
  else:
    num_classes, tasks = infer_heads(sd, path)
    flat = {p: jnp.asarray(v) for p, v in map_official(sd, num_classes, tasks,
                                                        source=path).items()}
  variables = dict(traverse_util.unflatten_dict(flat))
  align_corners = layout == "densetorch"
  if align_corners:
    variables[api.META_KEY] = {"align_corners": True}
  weights.check(variables, what=path)
  info = {"layout": layout, "num_classes": num_classes, "tasks": tasks,
          "align_corners": align_corners,
          "parameters": int(sum(np.size(v) for v in jax.tree.leaves(variables["params"])))}
  return variables, info


def one_line(message: str, path: str) -> str:
  """An error message as one line that names `path` (multi-line key lists joined by ';')."""
  text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
  return text if path in text else f"{path}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(  # prog: the name it was run by
      description="Convert a PyTorch checkpoint (official multi-task-refinenet, DenseTorch, or "
                  "an ImageNet MobileNet-v2) to hydrajax weights (.npz). torch is not needed.")
  parser.add_argument("src", help="PyTorch checkpoint (.ckpt / .pth / .pt, zip or legacy)")
  parser.add_argument("dst", help="output hydrajax weights file (.npz)")
  parser.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS)
  parser.add_argument("--num-classes", type=int, default=40,
                      help="backbones only: classes of the fresh segmentation head")
  parser.add_argument("--tasks", default="segm,depth",
                      help="backbones only: comma-separated tasks from " + ",".join(TASKS))
  parser.add_argument("--seed", type=int, default=0,
                      help="backbones only: seed of the fresh decoder and heads")
  args = parser.parse_args(argv)
  tasks = tuple(t for t in args.tasks.split(",") if t)
  if not tasks or not set(tasks) <= set(TASKS) or len(set(tasks)) != len(tasks):
    parser.error(f"--tasks {args.tasks!r}: expected distinct names from {','.join(TASKS)}")
  if "segm" in tasks and args.num_classes < 1:
    parser.error(f"--num-classes {args.num_classes}: expected at least 1 with the segm task")
  try:
    variables, info = convert(args.src, layout=args.layout, num_classes=args.num_classes,
                              tasks=tasks, seed=args.seed)
    weights.save(args.dst, variables)
  except (OSError, ValueError, torch_pickle.UnsafeCheckpointError) as e:
    print(f"error: {one_line(str(e), args.src)}", file=sys.stderr)
    return 1
  fresh = " (encoder converted; decoder and heads freshly initialised)" if (
      info["layout"] in BACKBONE_LAYOUTS) else ""
  print(f"layout: {info['layout']}{fresh}\nclasses: {info['num_classes']}\n"
        f"tasks: {','.join(info['tasks'])}\nalign_corners: {info['align_corners']}\n"
        f"parameters: {info['parameters']:,}\nwrote {args.dst}")
  return 0


if __name__ == "__main__":
  sys.argv[0] = "python -m hydrajax.convert.official"
  sys.exit(main())
