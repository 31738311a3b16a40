"""Labels, depth and normals at the input size for images of any size, in row blocks: memory
bounded by the network's 1/4-resolution outputs plus one block.

    out = full_res.dense_predictions(variables, image)   # image (H, W, 3) uint8, any size
    out["segm"]    (H, W) class ids        out["depth"]   (H, W) metres
    out["normals"] (H, W, 3) unit vectors (3-task models)

`hydrajax.apply` returns float32 logits at the input size, (H, W, C): 1.9 GB for a 4000x3000
photo and 40 classes, before the argmax. Here the network runs once, on the image or, above
`max_side`, on a copy shrunk with PIL (bilinear, aspect kept); its raw 1/4-resolution outputs
are then upsampled straight to the input size (the same bilinear convention and sizes as
`api.postprocess` for the network's outputs) a block of rows at a time, each block reduced
(argmax, abs, normalisation) before the next one is computed.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from hydrajax import api
from hydrajax.models import ops
from hydrajax.models.ops import common as ops_common

DEFAULT_MAX_SIDE = 1280  # pixels on the long side the network sees; 0 = the input's own size
DEFAULT_BLOCK_ROWS = 256  # output rows per upsampling step


class OutOfMemory(RuntimeError):
  """The network ran out of memory; the message names the input size that caused it."""


def is_out_of_memory(error: BaseException) -> bool:
  """True for Python's MemoryError, XLA's RESOURCE_EXHAUSTED and onnxruntime's failed
  allocations (a buffer it cannot allocate, for the network or an exported graph)."""
  if isinstance(error, MemoryError):
    return True
  if isinstance(error, jax.errors.JaxRuntimeError):
    return "RESOURCE_EXHAUSTED" in str(error)
  return (type(error).__module__.startswith("onnxruntime")
          and any(s in str(error) for s in ("Failed to allocate memory", "bad_alloc",
                                            "bad allocation")))


def working_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
  """(H, W) -> the (h, w) the network runs at: unchanged if max(H, W) <= max_side or
  max_side <= 0, else scaled so the long side is max_side (aspect kept, short side >= 1)."""
  h, w = size
  if max_side <= 0 or max(h, w) <= max_side:
    return h, w
  scale = max_side / max(h, w)
  return ((max_side, max(1, round(w * scale))) if h >= w
          else (max(1, round(h * scale)), max_side))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, 3) uint8 or float [0, 255] -> (h, w, 3) of the same dtype, PIL bilinear (which
  widens its filter when shrinking, so a large photo is averaged, not decimated)."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image
  if image.dtype == np.uint8:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  channels = [np.asarray(Image.fromarray(np.asarray(image[..., c], np.float32), mode="F")
                         .resize((w, h), Image.BILINEAR)) for c in range(image.shape[-1])]
  return np.stack(channels, axis=-1).astype(image.dtype)


@functools.partial(jax.jit, static_argnames=("num_classes", "tasks", "align_corners"))
def _raw_outputs(net_vars, image, *, num_classes, tasks, align_corners):
  """(h, w, 3) image -> the network's raw outputs for it, task -> (ceil(h/4), ceil(w/4)[, C])."""
  model = api.model_from_config(
      {"num_classes": num_classes, "tasks": tasks, "align_corners": align_corners},
      impl=ops.resolve("auto"))
  raw = model.apply(net_vars, api.normalize(image[None]), train=False)
  return {task: value[0] for task, value in raw.items()}


def _blend(x: jax.Array, taps: tuple[jax.Array, ...], axis: int) -> jax.Array:
  """Two-tap linear interpolation along axis 0 or 1 of (rows, cols, C)."""
  i0, i1, w0, w1 = taps
  shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
  return (jnp.take(x, i0, axis, mode="clip") * w0.reshape(shape)
          + jnp.take(x, i1, axis, mode="clip") * w1.reshape(shape))


@jax.jit
def _upsample_block(raw, row_taps, col_taps):
  """Raw outputs (h, w[, C]) -> one block of image-resolution predictions (B, W[, 3]):
  rows first, then columns (resize_bilinear's order), then api.postprocess's reductions."""
  out = {}
  for task, value in raw.items():
    x = value[..., None] if task == "depth" else value
    x = _blend(_blend(x, row_taps, 0), col_taps, 1)
    if task == "segm":
      out[task] = jnp.argmax(x, axis=-1)
    elif task == "depth":
      out[task] = jnp.abs(x[..., 0])
    else:
      out[task] = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return out


def _taps(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, ...]:
  i0, i1, w0, w1 = ops_common.interp_taps(n_in, n_out, align_corners)
  return (i0.astype(np.int32), i1.astype(np.int32), w0.astype(np.float32),
          w1.astype(np.float32))


def upsample_in_blocks(raw: Mapping[str, Any], size: tuple[int, int], align_corners: bool,
                       block_rows: int = DEFAULT_BLOCK_ROWS) -> dict[str, np.ndarray]:
  """Raw outputs of one image (task -> (h, w[, C])) -> numpy predictions at `size` (H, W):
  "segm" class ids (uint8, uint16 above 256 classes), "depth" |metres| float32, "normals"
  unit vectors float32. Blocks of `block_rows` rows (the last one padded), so one compiled
  step serves the image and only one (block_rows, W, C) block of logits exists at a time."""
  height, width = size
  rows_in, cols_in = np.shape(next(iter(raw.values())))[:2]
  row_taps = _taps(rows_in, height, align_corners)
  col_taps = tuple(jnp.asarray(t) for t in _taps(cols_in, width, align_corners))
  block = min(block_rows, height)
  out = {}
  for task, value in raw.items():
    if task == "segm":
      out[task] = np.empty((height, width), np.uint8 if value.shape[-1] <= 256 else np.uint16)
    else:
      out[task] = np.empty((height, width, 3) if task == "normals" else (height, width),
                           np.float32)
  for start in range(0, height, block):
    n = min(block, height - start)
    # Padding rows read row 0 with weight 0; they are computed and dropped.
    taps = tuple(np.pad(t[start:start + n], (0, block - n)) for t in row_taps)
    result = _upsample_block(raw, taps, col_taps)
    for task, value in result.items():
      out[task][start:start + n] = np.asarray(value)[:n]
  return out


def dense_predictions(variables: Mapping[str, Any], image: Any, *,
                      max_side: int = DEFAULT_MAX_SIDE,
                      block_rows: int = DEFAULT_BLOCK_ROWS) -> dict[str, np.ndarray]:
  """Predictions for one RGB image at its own resolution, without full-size logits.

  Args:
    variables: from `hydrajax.init`, `load` or training.
    image: (H, W, 3) RGB uint8 (or float 0-255), any size.
    max_side: the network runs on a copy whose long side is `max_side` pixels when the
      image is larger (PIL bilinear); 0 runs it on the image itself. Images up to
      max_side give the same predictions as `hydrajax.apply` (labels = argmax of its logits
      up to float rounding at ties).
    block_rows: output rows upsampled per step (memory ~ block_rows * W * C * 4 bytes).
  Returns:
    numpy arrays at (H, W): "segm" class ids (uint8, uint16 above 256 classes), "depth"
    float32 metres >= 0, "normals" (H, W, 3) float32 unit vectors; the model's tasks only.
  """
  api.check_image(image)
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"dense_predictions takes one image (H, W, 3), got shape {image.shape}")
  if block_rows < 1:
    raise ValueError(f"block_rows must be >= 1, got {block_rows}")
  cfg = api.model_config(variables)
  size = image.shape[:2]
  work = resize_image(image, working_size(size, max_side))
  net_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  raw = _raw_outputs(net_vars, jnp.asarray(work), num_classes=cfg["num_classes"],
                     tasks=cfg["tasks"], align_corners=cfg["align_corners"])
  return upsample_in_blocks(raw, size, cfg["align_corners"], block_rows)
