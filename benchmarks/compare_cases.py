"""The workloads of benchmarks/compare.py and accelerator_check.py: one builder per
(framework, inference/training).

Each `build_*` returns (run, info): `run()` executes one inference or training step and
returns its wall time in seconds (synchronised); info holds the compile time and, for JAX,
XLA's FLOP count. JAX inference is `hydrajax.apply`; JAX training is the real
`train_lib.train_step`, pmapped as training runs it. PyTorch runs the authors' network
(tests/helpers/torch_reference.py OfficialNet, channels_last, 2 threads) with the same losses and
optimiser: CE (ignore 255) + berHu (valid = depth > 0, c = 0.2 max error, masked mean),
weights 0.5, outputs upsampled to the label size, SGD momentum 0.9 with weight decay 1e-5,
encoder lr 1e-3 and decoder lr 1e-2, BatchNorm in train mode.
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

def impls_available(platform: str = "cpu") -> list[str]:
  """The layer forms worth timing on `platform` (hydrajax.models.ops): the FFI kernels only
  on CPU."""
  return ["native", "xla_cpu"] + (["ffi"] if platform == "cpu" else [])


def build_apply(batch: int, h: int, w: int, dtype: str = "float32", impl: str | None = None,
                public: bool = True):
  """Times `hydrajax.apply` (with `impl=` if given) on a fixed input; its program (normalise,
  network, upsample to the image) is also compiled once apart, for the compile time and
  FLOPs. `public=False` times that compiled program itself (one compile instead of two).
  Returns (run, info)."""
  global LAST_COMPILED
  import jax
  import jax.numpy as jnp

  import hydrajax
  from hydrajax import api

  dt = jnp.dtype(dtype)
  variables = hydrajax.init(0, num_classes=NUM_CLASSES)
  image = jnp.asarray(fake_batch(batch, h, w)["image"])
  model = hydrajax.model_from_variables(variables, dt, impl=impl or "auto")
  program = lambda v, x: api.postprocess(model.apply(v, api.normalize(x, dt), train=False),
                                         x.shape[1:3], impl=model.impl)
  t0 = time.perf_counter()
  compiled = jax.jit(program).lower(variables, image).compile()
  info = {"compile_s": time.perf_counter() - t0, "flops": _flops(compiled)}
  LAST_COMPILED = compiled
  kw = {} if impl is None else {"impl": impl}
  call = ((lambda: hydrajax.apply(variables, image, dtype=dt, **kw)) if public else
          (lambda: compiled(variables, image)))
  jax.block_until_ready(call())  # warm-up (and the public path's own compile)

  def run():
    t = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - t
  return run, info


def train_lib_config(batch: int, h: int, w: int, dtype: str = "float32"):
  """configs/default.py for a benchmark step: 40 classes, segm + depth, one device."""
  from configs import default
  c = default.get_config()
  c.num_classes, c.batch_size, c.crop_size = NUM_CLASSES, batch, (h, w)
  c.num_devices, c.dtype, c.warmup_steps = 1, dtype, 0
  return c


def build_train_lib_step(batch: int, h: int, w: int, dtype: str = "float32",
                         impl: str | None = None):
  """The real training step, `train_lib.train_step` pmapped on one device as training runs
  it (losses, BatchNorm over the batch, weight decay, momentum, two learning rates), with a
  device-resident batch. Returns (step, state, batch, loss_weights, config): `step(state,
  batch, loss_weights) -> (state, metrics)` donates `state`."""

  import jax

  from hydrajax.train import loop as train_lib

  config = train_lib_config(batch, h, w, dtype)
  devices = jax.local_devices()[:1]
  if impl is not None:
    config.impl = impl
  step = train_lib.pmapped_train_step(config, devices)
  state = train_lib.replicate(train_lib.create_train_state(config), devices)
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(devices, (train_lib.AXIS,)),
                                        jax.sharding.PartitionSpec(train_lib.AXIS))
  data = {k: jax.device_put(v[None], sharding) for k, v in fake_batch(batch, h, w).items()}
  return step, state, data, train_lib.task_loss_weights(config), config


def build_jax(kind: str, batch: int, h: int, w: int, dtype: str = "float32",
              impl: str | None = None):
  """(run, info) for `hydrajax.apply` inference or the real train_lib training step."""
  global LAST_COMPILED
  if kind == "infer":
    return build_apply(batch, h, w, dtype, impl)
  step, state, data, hparams, _ = build_train_lib_step(batch, h, w, dtype, impl)
  t0 = time.perf_counter()
  compiled = step.lower(state, data, hparams).compile()
  info = {"compile_s": time.perf_counter() - t0, "flops": _flops(compiled)}
  LAST_COMPILED = compiled
  box = [state]

  def run():
    t = time.perf_counter()
    box[0], metrics = compiled(box[0], data, hparams)
    metrics["loss"].block_until_ready()
    return time.perf_counter() - t
  run()
  return run, info


# ----------------------------------------------------------------------------- PyTorch

def build_torch(kind: str, batch: int, h: int, w: int, compiled: bool = False,
                threads: int = 2):
  import torch
  import torch.nn.functional as F

  from tests.helpers.torch_reference import OfficialNet, berhu_loss

  torch.set_num_threads(threads)
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
  # train_lib's optimiser: weight decay 1e-5 added to the gradient, momentum 0.9, encoder
  # (`layer*`) at lr 1e-3 and everything else at 1e-2 (configs/default.py).
  enc = [p for n, p in net.named_parameters() if n.startswith("layer")]
  dec = [p for n, p in net.named_parameters() if not n.startswith("layer")]
  opt = torch.optim.SGD([{"params": enc, "lr": LR}, {"params": dec, "lr": 10 * LR}],
                        momentum=0.9, weight_decay=1e-5)
  labels = torch.from_numpy(data["segm"]).long()
  depth = torch.from_numpy(data["depth"])

  def run():
    t = time.perf_counter()
    out = net(normalize(image))
    ce = F.cross_entropy(up(out["segm"]), labels, ignore_index=255)
    loss = 0.5 * ce + 0.5 * berhu_loss(up(out["depth"])[:, 0], depth)
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
