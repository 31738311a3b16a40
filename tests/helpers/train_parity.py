"""hydrajax's training step against the authors' network trained in PyTorch, side by side.

Both start from the same weights (tests/helpers/torch_reference.py OfficialNet, saved as a .pth and
converted with hydrajax-convert), see the same batch of synthetic rooms (normalised by
`hydrajax.normalize` for both) and follow the same recipe in float64: SGD momentum 0.9 with
L2 weight decay 1e-5, encoder / decoder learning rates on the poly schedule, 0.5 CE + 0.5
masked berHu on outputs upsampled to the label size, BatchNorm in train mode. hydrajax runs
its real pmapped step (`train_lib.pmapped_train_step`, `config.dtype = "float64"`); PyTorch
runs torch.optim.SGD on the double network. Used by tests/test_batchnorm_parity.py and
benchmarks/train_parity.py (the table in docs/testing.md).
"""
from __future__ import annotations

import os

import jax
import numpy as np
import torch
import torch.nn.functional as F

import hydrajax
from configs import default
from hydrajax.convert import official as convert
from hydrajax.data import SyntheticScenes
from hydrajax.train import loop as train_lib
from hydrajax import weights
from tests.helpers.torch_reference import OfficialNet, berhu_loss, randomize

TASKS = ("segm", "depth")
NUM_CLASSES = SyntheticScenes.num_classes


def rooms(count: int = 8, height: int = 120, width: int = 160) -> dict[str, np.ndarray]:
  """`count` synthetic rooms as one batch: image uint8 (N, H, W, 3), segm uint8, depth m."""
  source = SyntheticScenes(count, height, width, seed=3)
  samples = [source[i] for i in range(count)]
  return {k: np.stack([s[k] for s in samples]) for k in ("image", "segm", "depth")}


def official_weights(directory: str, seed: int = 0) -> tuple[OfficialNet, str]:
  """A randomised official network and its weights converted by hydrajax-convert:
  (float32 torch network, path of the .npz)."""
  torch.manual_seed(seed)
  net = randomize(OfficialNet(num_classes=NUM_CLASSES, tasks=TASKS), seed=seed)
  pth, npz = os.path.join(directory, "official.pth"), os.path.join(directory, "official.npz")
  torch.save(net.state_dict(), pth)
  if convert.main([pth, npz]) != 0:
    raise RuntimeError(f"hydrajax-convert failed on {pth}")
  return net, npz


def recipe(init_from: str, steps: int, rate: float, batch_size: int) -> dict:
  """The config of the side-by-side run: `steps` updates of the poly schedule, learning
  rates `rate` x (encoder 1e-3, decoder 1e-2), float64, synchronised BatchNorm."""
  c = default.get_config()
  c.update(dict(num_classes=NUM_CLASSES, tasks=TASKS, init_from=init_from, dtype="float64",
                batch_size=batch_size, num_train_steps=steps, lr_encoder=1e-3 * rate,
                lr_decoder=1e-2 * rate, schedule="poly", poly_power=0.9, warmup_steps=0,
                momentum=0.9, nesterov=False, weight_decay=1e-5, grad_accum_steps=1,
                freeze_bn=False, sync_bn=True))
  c.loss_weights.segm, c.loss_weights.depth = 0.5, 0.5
  return c


def _flat64(variables) -> dict[str, np.ndarray]:
  return {k: np.array(v, np.float64) for k, v in weights.flatten(variables).items()}  # copies


def run_hydrajax(config, batch: dict, num_devices: int) -> tuple[list[dict], list[float]]:
  """config.num_train_steps steps of the real pmapped step on `num_devices` devices (the
  batch split between them). Returns (flat float64 variables after each step, losses).
  Needs 64-bit JAX (jax.enable_x64)."""
  devices = jax.local_devices()[:num_devices]
  step = train_lib.pmapped_train_step(config, devices)
  state = train_lib.replicate(train_lib.create_train_state(config), devices)
  split = {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}
  loss_weights = train_lib.task_loss_weights(config)
  after, losses = [], []
  for _ in range(config.num_train_steps):
    state, metrics = step(state, split, loss_weights)
    host = train_lib.unreplicate(state)
    after.append(_flat64(host.variables()))
    losses.append(float(np.asarray(metrics["loss"])[0]))
  return after, losses


def run_torch(net: OfficialNet, config, batch: dict) -> tuple[list[dict], list[float]]:
  """The same recipe in PyTorch (double, train mode) on a copy of `net`: (flat float64
  variables under hydrajax's names after each step, losses)."""
  import copy

  net = copy.deepcopy(net).double().train()
  image = np.asarray(hydrajax.normalize(batch["image"]), np.float64)
  x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch["segm"].astype(np.int64))
  depth = torch.from_numpy(batch["depth"].astype(np.float64))
  enc = [p for n, p in net.named_parameters() if n.startswith("layer")]
  dec = [p for n, p in net.named_parameters() if not n.startswith("layer")]
  opt = torch.optim.SGD([{"params": enc, "lr": config.lr_encoder},
                         {"params": dec, "lr": config.lr_decoder}],
                        momentum=config.momentum, weight_decay=config.weight_decay)
  total = config.num_train_steps
  poly = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: max(1.0 - t / total, 0.0) ** config.poly_power)
  size = labels.shape[1:]
  up = lambda y: F.interpolate(y, size=size, mode="bilinear", align_corners=False)
  after, losses = [], []
  for _ in range(total):
    out = net(x)
    loss = (config.loss_weights.segm * F.cross_entropy(up(out["segm"]), labels,
                                                       ignore_index=255)
            + config.loss_weights.depth * berhu_loss(up(out["depth"])[:, 0], depth))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    poly.step()
    losses.append(float(loss.detach()))
    # Copies: the next step updates the network's tensors in place.
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    flat = convert.map_official(sd, NUM_CLASSES, TASKS, dtype=np.float64)
    after.append({"/".join(p): v for p, v in flat.items()})
  return after, losses


def relative_differences(ours: dict, ref: dict) -> dict[str, float]:
  """{name: max |ours - ref| / max |ref|} per tensor (names as in hydrajax weights files)."""
  if set(ours) != set(ref):
    raise KeyError(f"different tensors: {sorted(set(ours) ^ set(ref))[:5]}")
  return {k: float(np.abs(ours[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-300))
          for k in ref}


def table(diffs: dict[str, float]) -> dict[str, tuple[float, str]]:
  """Worst relative difference (and its tensor) among parameters, running means, running
  variances."""
  groups = {"every parameter": lambda k: k.startswith("params/"),
            "BatchNorm running mean": lambda k: k.endswith("/mean"),
            "BatchNorm running variance": lambda k: k.endswith("/var")}
  out = {}
  for title, member in groups.items():
    name = max((k for k in diffs if member(k)), key=diffs.get)
    out[title] = (diffs[name], name)
  return out
