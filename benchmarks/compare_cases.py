"""The workloads of benchmarks/compare.py: one builder per (framework, inference/training).

Each `build_*` returns (run, info): `run()` executes one inference or training step and
returns its wall time in seconds (synchronised); info holds the compile time and, for JAX,
XLA's FLOP count. Same network, same losses, same optimiser in both frameworks:
CE (ignore 255) + berHu (valid = depth > 0, c = 0.2 max error, masked mean), weights 0.5,
outputs upsampled to the label size, SGD momentum 0.9, BatchNorm in train mode.
"""
from __future__ import annotations

import time

import numpy as np

NUM_CLASSES = 40
LR = 1e-3


LAST_COMPILED = None  # the XLA executable build_jax compiled last (for profile_step.py)


def fake_batch(batch: int, h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
  """uint8 RGB images, labels 0..39 with ~5% 255, depth in metres with ~10% zeros."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, (batch, h, w)).astype(np.uint8)
  labels[rng.random((batch, h, w)) < 0.05] = 255
  depth = rng.uniform(0.5, 10.0, (batch, h, w)).astype(np.float32)
  depth[rng.random((batch, h, w)) < 0.1] = 0.0
  image = rng.integers(0, 256, (batch, h, w, 3)).astype(np.uint8)
  return {"image": image, "segm": labels, "depth": depth}


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost["flops"]) if cost and "flops" in cost else None


# ----------------------------------------------------------------------------- JAX

def build_jax(kind: str, batch: int, h: int, w: int, dtype: str = "float32"):
  global LAST_COMPILED
  import jax
  import jax.numpy as jnp
  import optax

  import hydrajax
  from hydrajax import api, losses
  from hydrajax.models import HydraNet

  dtype = jnp.dtype(dtype)
  data = fake_batch(batch, h, w)
  variables = hydrajax.init(0, num_classes=NUM_CLASSES)
  if kind == "infer":
    image = jnp.asarray(data["image"])
    t0 = time.perf_counter()
    compiled = api._apply_jit.lower(variables, image, num_classes=NUM_CLASSES,
                                    tasks=("segm", "depth"), align_corners=False,
                                    dtype=dtype).compile()
    info = {"compile_s": time.perf_counter() - t0, "flops": _flops(compiled)}
    LAST_COMPILED = compiled
    jax.block_until_ready(hydrajax.apply(variables, image, dtype=dtype))  # public path

    def run():
      t = time.perf_counter()
      jax.block_until_ready(hydrajax.apply(variables, image, dtype=dtype))
      return time.perf_counter() - t
    return run, info

  model = HydraNet(num_classes=NUM_CLASSES, dtype=dtype)
  tx = optax.sgd(LR, momentum=0.9)

  def train_step(params, batch_stats, opt_state, image, labels):
    def loss_fn(p):
      out, new_state = model.apply({"params": p, "batch_stats": batch_stats},
                                   hydrajax.normalize(image, dtype), train=True,
                                   mutable=["batch_stats"])
      total, _ = losses.combined_loss(losses.loss_terms(out, labels), {"segm": 0.5, "depth": 0.5})
      return total, new_state["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]
  image = jnp.asarray(data["image"])
  labels = {"segm": jnp.asarray(data["segm"]), "depth": jnp.asarray(data["depth"])}
  t0 = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(*state, image, labels).compile()
  info = {"compile_s": time.perf_counter() - t0, "flops": _flops(compiled)}
  LAST_COMPILED = compiled

  def run():
    t = time.perf_counter()
    *new, loss = compiled(*state, image, labels)
    loss.block_until_ready()
    state[:] = new
    return time.perf_counter() - t
  run()
  return run, info


# ----------------------------------------------------------------------------- PyTorch

def berhu_torch(pred, target):
  import torch
  valid = target > 0
  diff = torch.where(valid, torch.relu(pred) - target, torch.zeros_like(pred))
  err = diff.abs()
  c = 0.2 * err.max().detach()
  c_safe = torch.where(c > 0, c, torch.ones_like(c))
  loss = torch.where(err <= c, err, (diff ** 2 + c ** 2) / (2 * c_safe))
  return torch.where(valid, loss, torch.zeros_like(loss)).sum() / valid.sum().clamp(min=1)


def build_torch(kind: str, batch: int, h: int, w: int, compiled: bool = False):
  import torch
  import torch.nn.functional as F

  from tests.torch_reference import OfficialNet

  torch.manual_seed(0)
  data = fake_batch(batch, h, w)
  net = OfficialNet(num_classes=NUM_CLASSES, tasks=("segm", "depth"))
  net = net.to(memory_format=torch.channels_last)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
  image = torch.from_numpy(data["image"])

  def normalize(img):
    x = (img.permute(0, 3, 1, 2).float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last)

  def up(x):
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

  if kind == "infer":
    net.eval()

    def forward(img):
      out = net(normalize(img))
      return up(out["segm"]), up(out["depth"])[:, 0].abs()
    fn = torch.compile(forward) if compiled else forward
    t0 = time.perf_counter()
    with torch.inference_mode():
      fn(image)
    info = {"compile_s": time.perf_counter() - t0 if compiled else None, "flops": None}

    def run():
      t = time.perf_counter()
      with torch.inference_mode():
        fn(image)
      return time.perf_counter() - t
    return run, info

  if compiled:
    raise ValueError("torch.compile is benchmarked for inference only")
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
  labels = torch.from_numpy(data["segm"]).long()
  depth = torch.from_numpy(data["depth"])

  def run():
    t = time.perf_counter()
    out = net(normalize(image))
    ce = F.cross_entropy(up(out["segm"]), labels, ignore_index=255)
    loss = 0.5 * ce + 0.5 * berhu_torch(up(out["depth"])[:, 0], depth)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t
  run()
  return run, {"compile_s": None, "flops": None}


def build(variant: str, kind: str, batch: int, h: int, w: int):
  if variant == "jax":
    return build_jax(kind, batch, h, w)
  if variant == "jax_bf16":  # mixed precision: bf16 compute, f32 params and BN statistics
    return build_jax(kind, batch, h, w, "bfloat16")
  if variant == "torch_eager":
    return build_torch(kind, batch, h, w)
  if variant == "torch_compile":
    return build_torch(kind, batch, h, w, compiled=True)
  raise ValueError(f"unknown variant {variant!r}")
