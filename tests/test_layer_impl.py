"""The layers' two implementations ("cpu" rewrites, XLA's "native" ops) compute the same
function, and "auto" lowers to the right one per platform (CUDA/TPU lowered on this CPU).

Parity is checked in float64: the two forms sum the same products in different orders, so
in float32 their difference depends on the machine's summation order; in float64 it is
~1e-15 relative on any CPU, far inside the 1e-5 (forward) and 1e-4 (gradient) bounds.
"""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from hydrajax.export import cli as export
from hydrajax.models import HydraNet, layers
from hydrajax.models.hydranet import Head
from hydrajax.models.refinenet import CRPBlock

F64 = jnp.float64


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _tree_rel(a, b):
  return max(_rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _distinct(shape, seed=0):
  """Values without ties (a permutation), so the max-pool gradient is unique."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.permutation(int(np.prod(shape))).reshape(shape) / 100.0, F64)


def _both_forms(make, x, seed=1):
  """Forward and vjp (wrt input and params) of a module in both forms, float64."""
  results = {}
  params = make("cpu").init(jax.random.key(0), x)
  g = None
  for impl in ("cpu", "native"):
    fn = lambda p, x, impl=impl: make(impl).apply(p, x)
    if g is None:
      shape = jax.eval_shape(fn, params, x).shape
      g = jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)
    # jit: one compile instead of an eager dispatch per op
    results[impl] = jax.jit(lambda p, x, g, fn=fn: (fn(p, x), jax.vjp(fn, p, x)[1](g)))(
        params, x, g)
  return results


LAYERS = {
    "conv1x1": (lambda impl: layers.Conv1x1(7, dtype=F64, impl=impl), (2, 5, 6, 4)),
    "depthwise3x3_s1": (lambda impl: layers.DepthwiseConv(3, 1, dtype=F64, impl=impl),
                        (2, 7, 6, 5)),
    "depthwise3x3_s2": (lambda impl: layers.DepthwiseConv(3, 2, dtype=F64, impl=impl),
                        (1, 7, 8, 3)),
    "head3x3_bias": (lambda impl: layers.Conv(3, 3, use_bias=True, dtype=F64, impl=impl),
                     (1, 5, 6, 64)),
    "head3x3_40_outputs": (lambda impl: layers.Conv(40, 3, use_bias=True, dtype=F64,
                                                    impl=impl), (1, 5, 6, 64)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_forms_agree_forward_and_gradients(name):
  make, shape = LAYERS[name]
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), F64)
    r = _both_forms(make, x)
    assert _rel(r["native"][0], r["cpu"][0]) < 1e-5  # float64: see module docstring
    assert _tree_rel(r["native"][1], r["cpu"][1]) < 1e-4


def test_max_pool_forms_agree_forward_and_gradients():
  with jax.enable_x64(True):
    x = _distinct((2, 9, 11, 3))
    g = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), F64)
    outs = {}
    for impl in ("cpu", "native"):
      pool = lambda x, impl=impl: layers.max_pool_5x5(x, impl)
      outs[impl] = jax.jit(lambda x, g: (pool(x), jax.vjp(pool, x)[1](g)[0]))(x, g)
    # Both select and route exactly the same elements: equal, not just close.
    np.testing.assert_array_equal(outs["native"][0], outs["cpu"][0])
    np.testing.assert_array_equal(outs["native"][1], outs["cpu"][1])


def test_bad_impl_names_the_choices(variables):
  with pytest.raises(ValueError, match="impl must be one of"):
    layers.max_pool_5x5(jnp.zeros((1, 3, 3, 1)), "gpu")
  with pytest.raises(ValueError, match="impl must be one of"):
    hydrajax.apply(variables, np.zeros((8, 8, 3), np.uint8), impl="xla")


@pytest.fixture(scope="module")
def small_model():
  """Float64 variables of a 3-class segm+depth net, and a 32x32 image."""
  variables = hydrajax.init(1, num_classes=3)
  with jax.enable_x64(True):
    image = jnp.asarray(np.random.default_rng(3).standard_normal((1, 32, 32, 3)), F64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, F64), variables)
  return variables, image


@functools.partial(jax.jit, static_argnums=0)
def _model_loss(impl, variables, image):
  """Forward outputs and parameter gradients of a fixed linear functional of them."""
  model = HydraNet(num_classes=3, impl=impl, dtype=F64)

  def loss(params):
    out = model.apply({**variables, "params": params}, image)
    return jnp.sum(out["segm"] * jnp.cos(out["segm"])) + jnp.sum(out["depth"] ** 2), out

  (_, out), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return out, grads


def test_whole_model_forms_agree_forward_and_gradients(small_model):
  variables, image = small_model
  with jax.enable_x64(True):
    out_cpu, g_cpu = _model_loss("cpu", variables, image)
    out_nat, g_nat = _model_loss("native", variables, image)
  for task in ("segm", "depth"):
    assert _rel(out_nat[task], out_cpu[task]) < 1e-5  # float64: see module docstring
  # Pool ties only among ReLU6-clamped CRP inputs, whose gradient is 0 either way.
  assert _tree_rel(g_nat, g_cpu) < 1e-4


GROUPED = re.compile(r"feature_group_count = ([0-9]+)")


def _grouped_convs(text):
  return [int(n) for n in GROUPED.findall(text) if int(n) > 1]


class _CRPAndHead(nn.Module):
  """Where the cpu form's optimization barriers live: 1x1 and head backward, the pool."""

  @nn.compact
  def __call__(self, x):
    return Head(3, "segm", impl="auto")(CRPBlock(impl="auto")(x))


def test_auto_lowers_to_native_on_cuda_tpu_and_to_rewrites_on_cpu(small_model):
  variables, image = small_model
  variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), variables)
  image = jnp.asarray(image, jnp.float32)
  model = HydraNet(num_classes=3, impl="auto")
  forward = jax.jit(model.apply).trace(variables, image)  # traced once, lowered per platform
  x = jnp.ones((1, 8, 8, 64))
  head = _CRPAndHead()
  params = head.init(jax.random.key(0), x)
  backward = jax.jit(jax.grad(lambda p, x: jnp.sum(head.apply(p, x) ** 2))).trace(params, x)
  for platform in ("cuda", "tpu"):
    text = forward.lower(lowering_platforms=(platform,)).as_text()
    assert len(_grouped_convs(text)) == 17, platform  # the encoder's 17 depthwise 3x3
    assert "dot_general" not in text, platform  # 1x1 and head convs are convolutions
    text = backward.lower(lowering_platforms=(platform,)).as_text()
    assert "optimization_barrier" not in text and "convolution" in text, platform
  text = forward.lower(lowering_platforms=("cpu",)).as_text()
  assert _grouped_convs(text) == [] and "dot_general" in text
  text = backward.lower(lowering_platforms=("cpu",)).as_text()
  assert "optimization_barrier" in text  # the cpu pool and 1x1 backward


def test_multi_platform_stablehlo_export_runs_on_cpu_and_matches_apply(variables):
  data = export.export_stablehlo(variables, 64, 96, batch=1, full_resolution=True,
                                 platforms=("cpu", "cuda"))
  exp = jax.export.deserialize(bytearray(data))
  assert exp.platforms == ("cpu", "cuda")
  image = np.random.default_rng(4).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
  out = exp.call(image)
  ref = hydrajax.apply(variables, image)
  for task in ("segm", "depth"):
    # The CPU branch is the very program apply compiles; 1e-6 allows fusion differences.
    assert _rel(out[task], ref[task]) < 1e-6
