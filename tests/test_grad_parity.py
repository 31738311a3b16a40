"""Gradients of the whole network wrt its parameters vs PyTorch autograd on the reference
model (BatchNorm in train mode), and the eval-mode forward, with the same weights.

Exactness is checked in float64 (`jax.enable_x64`, PyTorch double): train-mode BatchNorm on
small maps (here 2x4x6 values per channel in layer7) cancels so heavily that float32
gradients of either framework differ from exact ones by 10-30% on some tensors, in digits
that depend on the CPU's summation order. In float64 both frameworks agree to ~1e-12.
The float32 eval-mode forward (well conditioned) is held to float32 rounding of that truth.
Max-pool ties only occur among ReLU6-clamped values at a CRP block's input, whose gradient
is zero whichever tied element a pool routes to, so parameter gradients are tie-free.
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")

from hydrajax.convert import official as convert  # noqa: E402
from hydrajax.models import HydraNet  # noqa: E402
from tests.helpers.torch_reference import OfficialNet, randomize  # noqa: E402
from tests.helpers.numerics import rel_max as _rel

TASKS = ("segm", "depth")
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  net = randomize(OfficialNet(num_classes=NUM_CLASSES, tasks=TASKS), seed=0)
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")}
  rng = np.random.default_rng(0)
  image = rng.standard_normal((2, 64, 96, 3))
  weights = {"segm": rng.standard_normal((2, 16, 24, NUM_CLASSES)),
             "depth": rng.standard_normal((2, 16, 24))}
  return net, sd, image, weights


def _torch_nchw(x, dtype):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(dtype)


def _variables(sd, dtype):
  flat = convert.map_official(sd, NUM_CLASSES, TASKS, dtype=dtype)
  return traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()})


def _model(dtype):
  return HydraNet(num_classes=NUM_CLASSES, tasks=TASKS, dtype=dtype)


def _ours(sd, image, weights, dtype):
  """(eval-mode outputs, train-mode parameter gradients) of hydrajax in `dtype`, as a flat
  {path: float64 array}. Run inside `jax.enable_x64(True)` for float64."""
  variables, model = _variables(sd, dtype), _model(dtype)
  x = jnp.asarray(image, dtype)

  def loss_fn(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return (jnp.sum(out["segm"] * jnp.asarray(weights["segm"], dtype))
            + jnp.sum(out["depth"] * jnp.asarray(weights["depth"], dtype)))

  grads = jax.jit(jax.grad(loss_fn))(variables["params"])
  out = jax.jit(model.apply)(variables, x)
  grads = {p: np.asarray(v, np.float64)
           for p, v in traverse_util.flatten_dict({"params": grads}).items()}
  return jax.tree.map(lambda v: np.asarray(v, np.float64), out), grads


def _torch(net, sd, image, weights, dtype):
  """The same in PyTorch, with `dtype` (torch.float32 / float64)."""
  with torch.no_grad():
    ref = copy.deepcopy(net).to(dtype).eval()(_torch_nchw(image, dtype))
  out = {"segm": np.moveaxis(ref["segm"].double().numpy(), 1, -1),
         "depth": ref["depth"].double().numpy()[:, 0]}
  train = copy.deepcopy(net).to(dtype).train()
  pred = train(_torch_nchw(image, dtype))
  loss = ((pred["segm"] * _torch_nchw(weights["segm"], dtype)).sum()
          + (pred["depth"][:, 0] * torch.from_numpy(weights["depth"]).to(dtype)).sum())
  loss.backward()
  grads = dict(sd)  # BN running stats stay as they are, only to satisfy the mapping
  grads.update({k: p.grad.double().numpy() for k, p in train.named_parameters()})
  return out, convert.map_official(grads, NUM_CLASSES, TASKS, dtype=np.float64)


@pytest.fixture(scope="module")
def float64_results(pair):
  net, sd, image, weights = pair
  with jax.enable_x64(True):
    ours = _ours(sd, image, weights, jnp.float64)
  return ours, _torch(net, sd, image, weights, torch.float64)


def test_float64_eval_forward_matches_torch_double(float64_results):
  (out, _), (ref, _) = float64_results
  # float64 rounding (1.1e-16) through ~60 layers of sums of a few thousand terms stays
  # below 1e-12 relative for a well-conditioned eval-mode forward; 1e-9 leaves a wide margin.
  for task in TASKS:
    assert _rel(out[task], ref[task]) < 1e-9, task


def test_float64_train_mode_parameter_gradients_match_torch_double(float64_results):
  (_, ours), (_, ref) = float64_results
  assert set(ours) <= set(ref)
  scale = max(float(np.abs(v).max()) for v in ref.values())
  for p in ours:
    ref_max = float(np.abs(ref[p]).max())
    if ref_max <= 1e-12 * scale:
      # Zero in exact arithmetic (layer2_0's project BN bias feeds a conv + train-mode BN
      # that removes it): both sides are float64 rounding noise of ~1e-16 x scale.
      assert float(np.abs(ours[p]).max()) <= 1e-12 * scale, p
    else:
      # Relative to the tensor's largest gradient. The worst BN cancellation here loses
      # ~2e6x (PyTorch float32's 13% error / float32 eps): float64 rounding then gives
      # ~2e-10, measured <1e-12; 1e-9 holds for any summation order yet catches any
      # real difference (a wrong padding, BN epsilon or momentum is >1e-4).
      assert _rel(ours[p], ref[p]) < 1e-9, (p, _rel(ours[p], ref[p]))


def test_float32_eval_forward_is_within_float32_rounding_of_float64(pair, float64_results):
  """What users run for inference: float32 hydrajax against the float64 truth. Only the
  eval-mode forward is compared in float32: it is well conditioned (no BatchNorm statistics,
  and a max is 1-Lipschitz). Float32 *gradients* are not compared: besides BatchNorm's
  cancellation, a CRP max-pool whose two largest inputs are within float32 rounding routes
  its cotangent to either one, a discrete jump. Measured with --xla_cpu_max_isa=SSE4_2:
  crp2 conv3's kernel gradient off from float64 by 4.7e-3 (PyTorch float32: 1.4e-5)."""
  _, sd, image, weights = pair
  (out64, _), _ = float64_results
  out32 = jax.tree.map(np.asarray, jax.jit(_model(np.float32).apply)(
      _variables(sd, np.float32), jnp.asarray(image, np.float32)))
  for task in TASKS:
    # float32 rounding (6e-8) through ~60 well-conditioned layers: ~1e-6 relative.
    assert _rel(out32[task], out64[task]) < 1e-5, task
