"""The library API: build variables, run the network on images, read the architecture back
from variables. `apply` is compiled once per (architecture, input shape, dtype) and cached."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hydrajax.models import HEAD_NAMES, TASKS, HydraNet, ops
from hydrajax.models.hydranet import task_channels, upsample_outputs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_KEY = "meta"  # optional variables entry: {"align_corners": bool}

# Incremented each time `_apply_jit` traces; tests use it to check that calls hit the cache.
TRACE_COUNT = 0


def normalize(image: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """RGB uint8 or float in [0, 255], (..., 3) -> ImageNet-normalised `dtype`."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
  return ((image.astype(jnp.float32) - mean) / std).astype(dtype)


def init(key: jax.Array | int, *, num_classes: int = 40, tasks: Sequence[str] = ("segm", "depth"),
         align_corners: bool = False) -> dict:
  """Fresh variables {"params", "batch_stats"} (plus "meta" if align_corners) for a model.

  Weights follow PyTorch's default init (uniform +-1/sqrt(fan_in) for conv kernels and
  biases; BN scale 1, bias 0, mean 0, var 1), drawn with numpy from a seed taken from `key`:
  the same key (or int seed) gives the same variables, without XLA compiling ~170 random
  initialisers (which takes far longer than drawing them). Runs on the host (not traceable);
  for a traceable init use `HydraNet(...).init(key, x)`.
  """
  # Shapes only: any impl gives the same tree ("native" traces one form and builds nothing).
  model = HydraNet(num_classes=num_classes, tasks=tuple(tasks), align_corners=align_corners,
                   impl="native")
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  seed = key if isinstance(key, int) else np.asarray(jax.random.key_data(key), np.uint32).ravel()
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict({"params": shapes["params"],
                                     "batch_stats": shapes["batch_stats"]})
  kernel_fan_in = {}
  for path, leaf in flat.items():
    if path[-1] == "kernel":
      kernel_fan_in[path[:-1]] = int(np.prod(leaf.shape[:-1]))
  values = {}
  for path, leaf in sorted(flat.items()):
    name = path[-1]
    if name in ("kernel", "bias") and path[0] == "params" and path[:-1] in kernel_fan_in:
      bound = 1.0 / np.sqrt(kernel_fan_in[path[:-1]])
      value = rng.uniform(-bound, bound, leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:  # BN bias and mean
      value = np.zeros(leaf.shape)
    values[path] = jnp.asarray(value, leaf.dtype)
  variables = dict(traverse_util.unflatten_dict(values))
  if align_corners:
    variables[META_KEY] = {"align_corners": True}
  return variables


def model_config(variables: Mapping[str, Any]) -> dict:
  """Read num_classes, tasks and align_corners from a variables dict."""
  if "params" not in variables or "batch_stats" not in variables:
    raise ValueError(f"variables must have 'params' and 'batch_stats', got keys "
                     f"{sorted(variables)}")
  params = variables["params"]
  tasks = tuple(t for t in TASKS if f"head_{HEAD_NAMES[t]}" in params)
  if not tasks:
    raise ValueError(f"variables have no task head (expected one of "
                     f"{[f'head_{HEAD_NAMES[t]}' for t in TASKS]}), got {sorted(params)}")
  num_classes = 0
  if "segm" in tasks:
    num_classes = int(np.shape(params["head_segm"]["segm"]["bias"])[0])
  meta = variables.get(META_KEY, {})
  return {"num_classes": num_classes, "tasks": tasks,
          "align_corners": bool(meta.get("align_corners", False))}


def model_from_config(cfg: Mapping[str, Any], dtype: Any = jnp.float32,
                      bn_axis_name: str | None = None, impl: str = "auto") -> HydraNet:
  """The HydraNet an architecture describes: `cfg` has num_classes (0 without "segm"),
  tasks and align_corners -- a `model_config` dict or a training config (`impl`: see
  HydraNet)."""
  return HydraNet(num_classes=int(cfg["num_classes"]), tasks=tuple(cfg["tasks"]),
                  align_corners=bool(cfg["align_corners"]), dtype=dtype,
                  bn_axis_name=bn_axis_name, impl=impl)


def model_from_variables(variables: Mapping[str, Any], dtype: Any = jnp.float32,
                         impl: str = "auto") -> HydraNet:
  """The HydraNet whose parameters `variables` holds (`impl`: see HydraNet)."""
  return model_from_config(model_config(variables), dtype, impl=impl)


def postprocess(outputs: Mapping[str, jax.Array], size: tuple[int, int],
                align_corners: bool = False, impl: str = "auto") -> dict[str, jax.Array]:
  """Raw 1/4-resolution outputs -> image-resolution predictions: segm logits, depth in metres
  (abs, as the official notebooks do), normals as unit vectors."""
  out = {}
  for task, value in upsample_outputs(outputs, size, align_corners, impl).items():
    if task == "depth":
      value = jnp.abs(value)
    if task == "normals":
      value = value / jnp.maximum(jnp.linalg.norm(value, axis=-1, keepdims=True), 1e-12)
    out[task] = value.astype(jnp.float32)
  return out


def _apply_impl(variables, image, *, num_classes, tasks, align_corners, dtype, impl="auto"):
  global TRACE_COUNT
  TRACE_COUNT += 1
  model = model_from_config(
      {"num_classes": num_classes, "tasks": tasks, "align_corners": align_corners}, dtype,
      impl=impl)
  raw = model.apply(variables, normalize(image, dtype), train=False)
  out = postprocess(raw, image.shape[1:3], align_corners, impl)
  nhw = image.shape[:3]
  chex.assert_shape([out[t] for t in tasks],
                    [nhw if t == "depth" else nhw + (task_channels(t, num_classes),)
                     for t in tasks])
  chex.assert_type([out[t] for t in tasks], jnp.float32)
  return out


_apply_jit = jax.jit(_apply_impl,
                     static_argnames=("num_classes", "tasks", "align_corners", "dtype", "impl"))


def check_image(image: Any) -> np.ndarray | jax.Array:
  """Validate an RGB image batch or image; raise ValueError naming the expected shape."""
  shape = np.shape(image)
  dtype = np.dtype(getattr(image, "dtype", np.asarray(image).dtype))
  if len(shape) not in (3, 4) or shape[-1] != 3:
    raise ValueError(f"image must have shape (H, W, 3) or (N, H, W, 3) (RGB, NHWC), "
                     f"got shape {tuple(shape)}")
  if min(shape[-3:-1]) < 1 or (len(shape) == 4 and shape[0] < 1):
    raise ValueError(f"image must be non-empty (N, H, W, 3), got shape {tuple(shape)}")
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(f"image must be uint8 or float in [0, 255], got dtype {dtype} "
                     f"(shape {tuple(shape)})")
  return image


def apply(variables: Mapping[str, Any], image: Any, *, dtype: Any = jnp.float32,
          impl: str = "auto") -> dict[str, jax.Array]:
  """Run the network in inference mode on RGB images.

  Args:
    variables: from `init`, `load` or training ({"params", "batch_stats"}[, "meta"]).
    image: RGB uint8 (or float 0-255), (H, W, 3) or (N, H, W, 3), any H, W.
    dtype: compute dtype (float32; bfloat16 for mixed precision on GPU/TPU).
    impl: layer form (hydrajax.models.ops): "auto" (the FFI kernels or the XLA rewrites
      on CPU, XLA's native ops on GPU/TPU), "native", "xla_cpu" or "ffi".
  Returns:
    dict at the input resolution: "segm" logits (..., H, W, C) float32, "depth" (..., H, W)
    metres >= 0, "normals" (..., H, W, 3) unit vectors; only the model's tasks.
  """
  check_image(image)
  impl = ops.resolve(impl)  # one form traced and compiled, for the default backend
  cfg = model_config(variables)
  image = jnp.asarray(image)
  single = image.ndim == 3
  if single:
    image = image[None]
  net_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  out = _apply_jit(net_vars, image, num_classes=cfg["num_classes"], tasks=cfg["tasks"],
                   align_corners=cfg["align_corners"], dtype=jnp.dtype(dtype), impl=impl)
  if single:
    out = {k: v[0] for k, v in out.items()}
  return out
