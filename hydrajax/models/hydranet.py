"""The multi-task network: MobileNet-v2 encoder, Light-Weight RefineNet decoder, one head
per task (Nekrasov et al., ICRA 2019)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hydrajax.models import layers, ops
from hydrajax.models.mobilenet_v2 import MobileNetV2Encoder
from hydrajax.models.refinenet import RefineNetDecoder

TASKS = ("segm", "depth", "normals")
# Official head names: pre_segm/segm, pre_depth/depth, pre_normal/normal.
HEAD_NAMES = {"segm": "segm", "depth": "depth", "normals": "normal"}


def task_channels(task: str, num_classes: int) -> int:
  return {"segm": num_classes, "depth": 1, "normals": 3}[task]


class Head(nn.Module):
  """depthwise 1x1 (no bias) -> ReLU6 -> 3x3 conv with bias. Official `pre_X` and `X`."""
  features: int
  name_: str
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.DepthwiseConv(1, dtype=self.dtype, impl=self.impl, name=f"pre_{self.name_}")(x)
    x = layers.relu6(x)
    return layers.Conv(self.features, 3, use_bias=True, dtype=self.dtype, impl=self.impl,
                       name=self.name_)(x)


class HydraNet(nn.Module):
  """Normalised NHWC image -> dict of raw task outputs at 1/4 resolution (ceil(H/4)).

  Outputs: "segm" (N, h, w, num_classes) logits; "depth" (N, h, w) raw (make it
  non-negative before use); "normals" (N, h, w, 3) unnormalised.
  `align_corners` selects the decoder's bilinear upsampling: False as in the official
  models, True as in the authors' DenseTorch library. `bn_axis_name` (training under
  pmap) takes BatchNorm statistics over the global batch, so N devices equal one.
  `impl` picks the layers' form (hydrajax.models.ops: "native", "xla_cpu", "ffi", "auto");
  the numbers agree to float rounding.
  """
  num_classes: int = 40
  tasks: Sequence[str] = ("segm", "depth")
  align_corners: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  impl: str = "auto"

  def setup(self):
    unknown = set(self.tasks) - set(TASKS)
    if unknown or not self.tasks:
      raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(self.tasks)}")
    if "segm" in self.tasks and self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1 with a 'segm' task, got {self.num_classes}")
    ops.check(self.impl)
    kw = dict(dtype=self.dtype, impl=self.impl)
    self.encoder = MobileNetV2Encoder(bn_axis_name=self.bn_axis_name, **kw)
    self.decoder = RefineNetDecoder(align_corners=self.align_corners, **kw)
    self.heads = {t: Head(task_channels(t, self.num_classes), HEAD_NAMES[t],
                          name=f"head_{HEAD_NAMES[t]}", **kw) for t in self.tasks}

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    feats = self.encoder(x, train)
    y = self.decoder(feats)
    out = {}
    for task in self.tasks:
      # Outputs at least float32 (bfloat16 compute returns float32; float64 stays float64).
      o = self.heads[task](y).astype(jnp.promote_types(self.dtype, jnp.float32))
      out[task] = o[..., 0] if task == "depth" else o
    return out


def upsample_outputs(outputs: Mapping[str, jax.Array], size: tuple[int, int],
                     align_corners: bool = False, impl: str = "auto") -> dict[str, jax.Array]:
  """Raw outputs (N, h, w[, C]) -> (N, H, W[, C]) at `size` (bilinear): the one resize to
  image / label size, used by the losses, `hydrajax.apply` and the exported graph."""
  out = {}
  for task, value in outputs.items():
    if task == "depth":
      # A channel axis for the resize, and off again; -1 keeps a symbolic batch (jax.export).
      h, w = value.shape[1:3]
      up = layers.resize_bilinear(value.reshape(-1, h, w, 1), size, align_corners, impl)
      out[task] = up.reshape(-1, *size)
    else:
      out[task] = layers.resize_bilinear(value, size, align_corners, impl)
  return out
