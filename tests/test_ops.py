"""The layer forms (hydrajax.models.ops) compute one function: every op of the interface, in
every form, equals the native form (XLA's own ops) forward and in its gradients; `impl`
reaches every conv, pool and resize of the network; "native" and GPU/TPU lowerings build no
C++ library.

xla_cpu against native runs in float64: the forms sum the same products in other orders,
~1e-15 relative on any CPU, far inside 1e-10. The FFI kernels take float32 only: they are
compared with the float64 native result, where at most nine-term float32 sums (and the
kernel gradient's rows, summed in double) stay within 1e-6 relative. Max-pools select and
route the same elements in every form: equal, ties included.
"""
import functools
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from hydrajax.export import cli as export
from hydrajax.models import HydraNet, layers, ops
from hydrajax.models.hydranet import Head, upsample_outputs
from hydrajax.models.ops import ffi_build
from hydrajax.models.refinenet import CRPBlock
from tests.helpers.numerics import rel_l2, tree_rel_l2

F64 = jnp.float64
HAS_COMPILER = ffi_build.compiler() is not None


def _normal(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape)


def _distinct(shape, seed):
  """Values without ties (a permutation), so the max-pool gradient is unique."""
  return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) / 100.0


def _ties(shape, seed):
  """Integers 0..2: most pool windows hold ties (the first maximum takes the gradient)."""
  return np.random.default_rng(seed).integers(0, 3, shape).astype(np.float64)


# name -> (op, arrays, static arguments, whether the ffi form runs a kernel for it)
CASES = {
    "conv1x1": ("conv1x1", [_normal((2, 5, 6, 4), 0), _normal((1, 1, 4, 7), 1)], {}, False),
    "depthwise3x3_s1": ("depthwise_conv", [_normal((2, 7, 6, 5), 0), _normal((3, 3, 1, 5), 1)],
                        {"stride": 1}, True),
    "depthwise3x3_s2": ("depthwise_conv", [_normal((1, 7, 8, 3), 0), _normal((3, 3, 1, 3), 1)],
                        {"stride": 2}, True),
    "depthwise3x3_s2_odd": ("depthwise_conv", [_normal((2, 9, 7, 17), 0),
                                               _normal((3, 3, 1, 17), 1)], {"stride": 2}, True),
    "stem3x3_s2": ("conv", [_normal((1, 9, 8, 3), 0), _normal((3, 3, 3, 6), 1)],
                   {"stride": 2}, False),
    "head3x3_3_outputs": ("conv", [_normal((1, 5, 6, 64), 0), _normal((3, 3, 64, 3), 1)],
                          {"stride": 1}, False),
    "head3x3_40_outputs": ("conv", [_normal((1, 5, 6, 64), 0), _normal((3, 3, 64, 40), 1)],
                           {"stride": 1}, False),
    "max_pool": ("max_pool_5x5", [_distinct((2, 9, 11, 3), 0)], {}, True),
    "max_pool_ties_small": ("max_pool_5x5", [_ties((1, 3, 2, 7), 0)], {}, True),
    "max_pool_ties": ("max_pool_5x5", [_ties((3, 20, 9, 17), 0)], {}, True),
    "crp_depthwise": ("crp_depthwise", [_distinct((2, 9, 11, 6), 0), _normal((4, 6), 1)], {},
                      True),
    "resize_2x": ("resize_bilinear", [_normal((2, 4, 6, 5), 0)],
                  {"size": (8, 12), "align_corners": False}, False),
    "resize_4x": ("resize_bilinear", [_normal((1, 5, 3, 2), 0)],
                  {"size": (20, 12), "align_corners": False}, False),
    "resize_fractional": ("resize_bilinear", [_normal((1, 5, 7, 3), 0)],
                          {"size": (9, 10), "align_corners": False}, False),
    "resize_align_corners": ("resize_bilinear", [_normal((1, 4, 6, 3), 0)],
                             {"size": (8, 12), "align_corners": True}, False),
}
EXACT = {"max_pool", "max_pool_ties_small", "max_pool_ties"}


def _forward_and_vjp(impl, case, dtype):
  """jit of (op(*arrays), vjp of op wrt every array) in form `impl`, at `dtype`."""
  op, arrays, static, _ = CASES[case]
  fn = functools.partial(getattr(ops.get(impl), op), **static)
  arrays = [jnp.asarray(a, dtype) for a in arrays]
  g = jnp.asarray(_normal(jax.eval_shape(fn, *arrays).shape, 7), dtype)
  program = jax.jit(lambda g, *a: (fn(*a), jax.vjp(fn, *a)[1](g)))
  return program, (g, *arrays)


@pytest.mark.parametrize("case", sorted(CASES))
def test_xla_cpu_form_equals_native_forward_and_gradients(case):
  with jax.enable_x64(True):
    got = _forward_and_vjp("xla_cpu", case, F64)
    want = _forward_and_vjp("native", case, F64)
    got, want = got[0](*got[1]), want[0](*want[1])
  if case in EXACT:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  assert rel_l2(got[0], want[0]) < 1e-10
  assert tree_rel_l2(got[1], want[1]) < 1e-10


@pytest.mark.skipif(not HAS_COMPILER, reason="the ffi form needs a C++ compiler")
@pytest.mark.parametrize("case", sorted(CASES))
def test_ffi_form_equals_native_forward_and_gradients(case):
  # Not a skip: with a compiler, kernels that do not build are a bug to see here.
  assert ffi_build.load() is None, ffi_build.load()
  program, args = _forward_and_vjp("ffi", case, jnp.float32)
  text = program.lower(*args).as_text()
  assert ("hydrajax_" in text) == CASES[case][3]  # the kernels run where the form says
  got = program(*args)
  assert got[0].dtype == jnp.float32
  with jax.enable_x64(True):
    want = _forward_and_vjp("native", case, F64)
    want = want[0](*want[1])
  if case in EXACT:  # the same maxima, offsets and cotangent sums as xla_cpu: equal bits
    twin, twin_args = _forward_and_vjp("xla_cpu", case, jnp.float32)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(twin(*twin_args))):
      np.testing.assert_array_equal(a, b)
  assert rel_l2(got[0], want[0]) < 1e-6
  assert tree_rel_l2(got[1], want[1]) < 1e-6


@pytest.mark.skipif(not HAS_COMPILER, reason="the ffi form needs a C++ compiler")
def test_ffi_form_takes_other_dtypes_through_its_xla_twin():
  x = jnp.asarray(_distinct((1, 6, 7, 3), 0), jnp.bfloat16)
  text = jax.jit(ops.get("ffi").max_pool_5x5).lower(x).as_text()
  assert "hydrajax_" not in text
  np.testing.assert_array_equal(jax.jit(ops.get("ffi").max_pool_5x5)(x),
                                jax.jit(ops.get("xla_cpu").max_pool_5x5)(x))


@pytest.fixture(scope="module")
def small_model():
  """Float64 variables of a 3-class segm+depth net, and a 32x32 image."""
  variables = hydrajax.init(1, num_classes=3)
  with jax.enable_x64(True):
    image = jnp.asarray(_normal((1, 32, 32, 3), 3), F64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, F64), variables)
  return variables, image


@functools.partial(jax.jit, static_argnums=(0, 3))
def _model_loss(impl, variables, image, dtype):
  """Forward outputs and parameter gradients of a fixed functional of them."""
  model = HydraNet(num_classes=3, impl=impl, dtype=dtype)

  def loss(params):
    out = model.apply({**variables, "params": params}, image)
    return jnp.sum(out["segm"] * jnp.cos(out["segm"])) + jnp.sum(out["depth"] ** 2), out

  (_, out), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return out, grads


def test_whole_model_xla_cpu_equals_native_forward_and_gradients(small_model):
  variables, image = small_model
  with jax.enable_x64(True):
    out_cpu, g_cpu = _model_loss("xla_cpu", variables, image, F64)
    out_nat, g_nat = _model_loss("native", variables, image, F64)
  for task in ("segm", "depth"):
    assert rel_l2(out_cpu[task], out_nat[task]) < 1e-10
  assert tree_rel_l2(g_cpu, g_nat) < 1e-10


@pytest.mark.skipif(not HAS_COMPILER, reason="the ffi form needs a C++ compiler")
def test_whole_model_ffi_forward_equals_native(small_model):
  variables, image = small_model
  with jax.enable_x64(True):
    want = jax.jit(HydraNet(num_classes=3, impl="native", dtype=F64).apply)(variables, image)
  f32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), (variables, image))
  got = jax.jit(HydraNet(num_classes=3, impl="ffi").apply)(*f32)
  for task in ("segm", "depth"):
    assert rel_l2(got[task], want[task]) < 1e-5  # float32 through ~60 layers


def _recording(form):
  """A form that counts the calls of each op and computes them with `form`."""
  calls = {name: 0 for name in ops.OPS}

  def wrap(name):
    def op(*args, **kwargs):
      calls[name] += 1
      return getattr(form, name)(*args, **kwargs)
    return op
  return types.SimpleNamespace(**{name: wrap(name) for name in ops.OPS}), calls


def test_impl_reaches_every_conv_pool_and_resize(monkeypatch):
  recorder, calls = _recording(ops.native)
  monkeypatch.setitem(ops.FORMS, "native", recorder)
  model = HydraNet(num_classes=3, tasks=("segm", "depth", "normals"), impl="native")
  x = jnp.zeros((1, 64, 64, 3))
  jax.eval_shape(lambda x: upsample_outputs(model.init_with_output(jax.random.key(0), x)[0],
                                            (64, 64), impl="native"), x)
  # 17 inverted residuals (expand, project: 1x1; one 3x3 depthwise each), the decoder's 9
  # 1x1 and 3 CRP blocks' 4, the stem and 3 heads (dense 3x3), 3 CRP blocks x 4 pools and
  # crp1, 3 decoder and 3 output resizes.
  assert calls == {"conv1x1": 2 * 17 + 9 + 12, "depthwise_conv": 17, "conv": 1 + 3,
                   "max_pool_5x5": 12, "crp_depthwise": 1, "resize_bilinear": 3 + 3}


def test_impl_is_checked_everywhere(variables):
  with pytest.raises(ValueError, match="impl must be one of"):
    layers.max_pool_5x5(jnp.zeros((1, 3, 3, 1)), "gpu")
  with pytest.raises(ValueError, match="impl must be one of"):
    hydrajax.apply(variables, np.zeros((8, 8, 3), np.uint8), impl="cpu")
  with pytest.raises(ValueError, match="impl must be one of"):  # the heads' 1x1 depthwise
    layers.DepthwiseConv(1, impl="xla").init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))


def test_resolve_picks_native_off_cpu_and_the_kernels_on_cpu():
  assert ops.resolve("auto", "cuda") == ops.resolve("auto", "tpu") == "native"
  assert ops.resolve("auto", "cpu") == "xla_cpu"  # the C++ kernels are opt-in
  ops.use_cpu_kernels()
  try:
    assert ops.resolve("auto", "cpu") == ("ffi" if HAS_COMPILER else "xla_cpu")
  finally:
    ops.use_cpu_kernels(False)
  assert ops.resolve("xla_cpu", "cuda") == "xla_cpu"


GROUPED = re.compile(r"feature_group_count = ([0-9]+)")


def _grouped_convs(text):
  return [int(n) for n in GROUPED.findall(text) if int(n) > 1]


class _CRPAndHead(hydrajax.models.hydranet.nn.Module):
  """Where the xla_cpu form's optimization barriers live: 1x1 and head backward, the pool."""

  def setup(self):
    self.crp, self.head = CRPBlock(impl="auto"), Head(3, "segm", impl="auto")

  def __call__(self, x):
    return self.head(self.crp(x))


def test_unresolved_auto_lowers_to_native_on_cuda_tpu_and_to_rewrites_on_cpu(small_model):
  variables, image = small_model
  variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), variables)
  image = jnp.asarray(image, jnp.float32)
  forward = jax.jit(HydraNet(num_classes=3, impl="auto").apply).trace(variables, image)
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
  assert _grouped_convs(text) == [] and "dot_general" in text and "hydrajax_" not in text
  text = backward.lower(lowering_platforms=("cpu",)).as_text()
  assert "optimization_barrier" in text  # the xla_cpu pool and 1x1 backward


def test_multi_platform_stablehlo_export_runs_on_cpu_and_matches_apply(variables):
  data = export.export_stablehlo(variables, 64, 96, batch=1, full_resolution=True,
                                 platforms=("cpu", "cuda"))
  exp = jax.export.deserialize(bytearray(data))
  assert exp.platforms == ("cpu", "cuda")
  image = np.random.default_rng(4).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
  out = exp.call(image)
  ref = hydrajax.apply(variables, image, impl="xla_cpu")
  for task in ("segm", "depth"):
    # The CPU branch is the program apply compiles for xla_cpu; 1e-6 allows fusions.
    assert rel_l2(out[task], ref[task]) < 1e-6


_NO_LIBRARY = """
import jax, jax.numpy as jnp
from hydrajax.models import HydraNet
from hydrajax.models.ops import ffi_build
x = jnp.zeros((1, 64, 64, 3))
for impl, platform in (("native", "cpu"), ("auto", "cuda")):
  model = HydraNet(num_classes=3, impl=impl)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  jax.jit(model.apply).trace(v, x).lower(lowering_platforms=(platform,))
print(ffi_build.load.cache_info().currsize)
"""


def test_native_and_accelerator_lowerings_build_and_load_no_library(tmp_path):
  env = {**os.environ, ffi_build.ENV_CACHE: str(tmp_path / "cache")}
  proc = subprocess.run([sys.executable, "-c", _NO_LIBRARY], env=env, capture_output=True,
                        text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["0"]  # ffi_build.load never ran
  assert not (tmp_path / "cache").exists()
