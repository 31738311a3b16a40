"""PyTorch reference of the official multi-task network (Nekrasov et al., ICRA 2019), for
parity tests and benchmarks. Test-only: hydrajax itself never imports torch.

Written from the published architecture (docs/architecture.md) so that
`OfficialNet(...).state_dict()` has exactly the keys of the official checkpoints (`layer1.0.weight`,
`layer2.0.output.0.0.weight`, `crp1.0.1_outvar_dimred.weight`, `pre_segm.weight`, ...).
`densetorch_state_dict` renames such a state dict to the layout of the authors' DenseTorch
MTLWRefineNet training script (`module.0.layer1...`, `module.1.stem_convs.0...`); a model
with `align_corners=True` computes what that DenseTorch model computes.

    from tests.helpers.torch_reference import OfficialNet
    net = OfficialNet(num_classes=40, tasks=("segm", "depth")).eval()
    out = net(torch.zeros(1, 3, 240, 320))   # {"segm": (1,40,60,80), "depth": (1,1,60,80)}
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

MOBILENET_V2_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
HEADS = {"segm": "segm", "depth": "depth", "normals": "normal"}  # task -> official name
DECODER_CONVS = ("conv8", "conv7", "conv6", "conv5", "conv4", "conv3")  # stem_convs order
CRPS = ("crp4", "crp3", "crp2", "crp1")  # crp_blocks order
ADAPTS = ("conv_adapt4", "conv_adapt3", "conv_adapt2")  # adapt_convs order


def conv1x1(cin: int, cout: int, groups: int = 1, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride=1, padding=0, groups=groups, bias=bias)


def conv3x3(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=bias)


def convbnrelu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
               act: bool = True) -> nn.Sequential:
  mods = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
          nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]
  if act:
    mods.append(nn.ReLU6(inplace=True))
  return nn.Sequential(*mods)


class InvertedResidualBlock(nn.Module):
  def __init__(self, cin: int, cout: int, expansion: int, stride: int = 1):
    super().__init__()
    hidden = cin * expansion
    self.residual = cin == cout and stride == 1
    self.output = nn.Sequential(convbnrelu(cin, hidden, 1),
                                convbnrelu(hidden, hidden, 3, stride=stride, groups=hidden),
                                convbnrelu(hidden, cout, 1, act=False))

  def forward(self, x):
    out = self.output(x)
    return out + x if self.residual else out


class CRPBlock(nn.Module):
  """Chained residual pooling; stage convs are named `{i}_outvar_dimred` as in the official code."""

  def __init__(self, planes: int, n_stages: int = 4, groups: bool = False):
    super().__init__()
    for i in range(n_stages):
      setattr(self, f"{i + 1}_outvar_dimred", conv1x1(planes, planes, planes if groups else 1))
    self.n_stages = n_stages
    self.maxpool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)

  def forward(self, x):
    top = x
    for i in range(self.n_stages):
      top = getattr(self, f"{i + 1}_outvar_dimred")(self.maxpool(top))
      x = top + x
    return x


class OfficialNet(nn.Module):
  """The official network; forward returns raw 1/4-resolution outputs by task (NCHW):
  "segm" (N, K, h, w) logits, "depth" (N, 1, h, w), "normals" (N, 3, h, w)."""

  def __init__(self, num_classes: int = 40, tasks: Sequence[str] = ("segm", "depth"),
               align_corners: bool = False):
    super().__init__()
    self.tasks = tuple(tasks)
    self.align_corners = align_corners
    self.layer1 = convbnrelu(3, 32, 3, stride=2)
    cin = 32
    for idx, (t, c, n, s) in enumerate(MOBILENET_V2_CONFIG):
      blocks = []
      for j in range(n):
        blocks.append(InvertedResidualBlock(cin, c, t, s if j == 0 else 1))
        cin = c
      setattr(self, f"layer{idx + 2}", nn.Sequential(*blocks))
    for name, c in zip(DECODER_CONVS, (320, 160, 96, 64, 32, 24)):
      setattr(self, name, conv1x1(c, 256))
    for name in CRPS:
      setattr(self, name, nn.Sequential(CRPBlock(256, 4, groups=name == "crp1")))
    for name in ADAPTS:
      setattr(self, name, conv1x1(256, 256))
    # Registration order of the official model: depth head, then segm, then normals.
    for task in ("depth", "segm", "normals"):
      if task in self.tasks:
        out = {"segm": num_classes, "depth": 1, "normals": 3}[task]
        setattr(self, f"pre_{HEADS[task]}", conv1x1(256, 256, groups=256))
        setattr(self, HEADS[task], conv3x3(256, out, bias=True))
    self.relu = nn.ReLU6(inplace=True)

  def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
    """Normalised NCHW image -> outputs of layer3..layer8."""
    x = self.layer2(self.layer1(x))
    feats = []
    for i in range(3, 9):
      x = getattr(self, f"layer{i}")(x)
      feats.append(x)
    return feats

  def _up(self, x, ref):
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear",
                         align_corners=self.align_corners)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    l3, l4, l5, l6, l7, l8 = self.encode(x)
    l7 = self.relu(self.conv8(l8) + self.conv7(l7))
    l7 = self._up(self.conv_adapt4(self.crp4(l7)), l6)
    l5 = self.relu(self.conv5(l5) + self.conv6(l6) + l7)
    l5 = self._up(self.conv_adapt3(self.crp3(l5)), l4)
    l4 = self.relu(l5 + self.conv4(l4))
    l4 = self._up(self.conv_adapt2(self.crp2(l4)), l3)
    l3 = self.crp1(self.relu(self.conv3(l3) + l4))
    out = {}
    for task in self.tasks:
      name = HEADS[task]
      out[task] = getattr(self, name)(self.relu(getattr(self, f"pre_{name}")(l3)))
    return out


def berhu_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """Masked inverse Huber (the hydrajax loss): pixels with target > 0, on relu(pred),
  c = 0.2 x the largest error (no gradient); the mean over valid pixels. (N, H, W)."""
  valid = target > 0
  diff = torch.where(valid, torch.relu(pred) - target, torch.zeros_like(pred))
  err = diff.abs()
  c = 0.2 * err.max().detach()
  c_safe = torch.where(c > 0, c, torch.ones_like(c))
  loss = torch.where(err <= c, err, (diff ** 2 + c ** 2) / (2 * c_safe))
  return torch.where(valid, loss, torch.zeros_like(loss)).sum() / valid.sum().clamp(min=1)


def randomize(net: nn.Module, seed: int = 0, batches: int = 3, size=(32, 48)) -> nn.Module:
  """Random weights with non-trivial BN statistics: perturb BN affine params, then run a few
  train-mode batches so running_mean/var move away from 0/1. Returns `net` in eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        m.momentum = 0.5
    net.train()
    for _ in range(batches):
      net(torch.randn(2, 3, *size, generator=g))
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.momentum = 0.1
  return net.eval()


def densetorch_state_dict(official: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
  """Rename an official state dict to DenseTorch's `DataParallel(Sequential(enc, dec))` layout:
  encoder keys under `module.0.`, decoder as `module.1.stem_convs.N` (conv8..conv3),
  `crp_blocks.N` (crp4..crp1), `adapt_convs.N` (conv_adapt4..2), `heads.N.{0,2}` (segm,
  depth, normals in that order). Paired with `OfficialNet(align_corners=True)` it reproduces
  the DenseTorch model's outputs."""
  table = {}
  for i, name in enumerate(DECODER_CONVS):
    table[name] = f"stem_convs.{i}"
  for i, name in enumerate(CRPS):
    table[name] = f"crp_blocks.{i}"
  for i, name in enumerate(ADAPTS):
    table[name] = f"adapt_convs.{i}"
  head_idx = 0
  for task in ("segm", "depth", "normals"):
    name = HEADS[task]
    if f"{name}.weight" in official:
      table[f"pre_{name}"] = f"heads.{head_idx}.0"
      table[name] = f"heads.{head_idx}.2"
      head_idx += 1
  out = OrderedDict()
  for key, value in official.items():
    first, rest = key.split(".", 1)
    if first.startswith("layer"):
      out[f"module.0.{key}"] = value
    else:
      out[f"module.1.{table[first]}.{rest}"] = value
  return out


def torchvision_state_dict(official: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
  """Rename the encoder part of an official state dict to torchvision's `mobilenet_v2`
  `features.*` layout (layer2.0's expansion conv has no torchvision counterpart and is
  dropped; features.18 and the classifier are added with random values, as a real
  torchvision file has them)."""
  out = OrderedDict()
  for key, value in official.items():
    if key.startswith("layer1."):
      out["features.0." + key[len("layer1."):]] = value
  feature = 1
  for idx, (_, _, n, _) in enumerate(MOBILENET_V2_CONFIG):
    for j in range(n):
      prefix = f"layer{idx + 2}.{j}.output."
      # (official sub-module, torchvision sub-module) pairs.
      if feature == 1:
        pairs = (("1.0", "0.0"), ("1.1", "0.1"), ("2.0", "1"), ("2.1", "2"))
      else:
        pairs = (("0.0", "0.0"), ("0.1", "0.1"), ("1.0", "1.0"), ("1.1", "1.1"),
                 ("2.0", "2"), ("2.1", "3"))
      for src, dst in pairs:
        for key, value in official.items():
          if key.startswith(prefix + src + "."):
            out[f"features.{feature}.conv.{dst}." + key[len(prefix + src) + 1:]] = value
      feature += 1
  g = torch.Generator().manual_seed(1)
  out["features.18.0.weight"] = torch.randn(1280, 320, 1, 1, generator=g)
  for name, val in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
    out[f"features.18.1.{name}"] = torch.full((1280,), val)
  out["features.18.1.num_batches_tracked"] = torch.tensor(0)
  out["classifier.1.weight"] = torch.randn(1000, 1280, generator=g)
  out["classifier.1.bias"] = torch.zeros(1000)
  return out
