"""The fast layers against plain lax references: values, and gradients on inputs without ties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hydrajax.models import layers
from hydrajax.models.ops import xla_cpu
from tests.helpers.numerics import rel_max as _rel

HIGHEST = jax.lax.Precision.HIGHEST
# float32 layer vs lax reference, relative to the output's largest value. Each output is a
# dot product of at most 576 random terms (3x3x64); rounding in any summation order grows
# like sqrt(n) eps (eps = 6e-8), i.e. ~1e-6 of the output's scale, and the two sides differ
# only in order. 1e-5 holds on any CPU; a wrong tap, stride or padding is off by >1e-1.
RTOL = 1e-5


def _distinct(shape, seed=0):
  """Values without ties (a random permutation), so max-pool gradients are unique."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.permutation(int(np.prod(shape))).reshape(shape) / 100.0, jnp.float32)


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _reduce_window_pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 5, 5, 1), (1, 1, 1, 1),
                               ((0, 0), (2, 2), (2, 2), (0, 0)))


@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (1, 4, 3, 5), (1, 1, 1, 2)])
def test_max_pool_matches_reduce_window(shape):
  x = _distinct(shape)
  np.testing.assert_array_equal(layers.max_pool_5x5(x), _reduce_window_pool(x))


def test_max_pool_forward_with_ties_and_inf_matches_reduce_window():
  x = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, 7, 6, 4)), jnp.float32)
  x = x.at[0, 0, 0, 0].set(-jnp.inf)
  np.testing.assert_array_equal(layers.max_pool_5x5(x), _reduce_window_pool(x))
  # The differentiated path (argmax offsets) computes the same values.
  out, vjp = jax.vjp(layers.max_pool_5x5, x)
  np.testing.assert_array_equal(out, _reduce_window_pool(x))


@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (1, 6, 4, 2)])
def test_max_pool_gradient_matches_reduce_window_without_ties(shape):
  x, g = _distinct(shape), _normal(shape, 1)
  ours = jax.vjp(layers.max_pool_5x5, x)[1](g)[0]
  ref = jax.vjp(_reduce_window_pool, x)[1](g)[0]
  # Both route each cotangent to the same unique maximum: sums of <=25 normal values.
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_to_first_maximum_on_ties():
  x = jnp.zeros((1, 1, 3, 1))  # every window is all ties: PyTorch routes to the first
  g = jnp.ones((1, 1, 3, 1))
  dx = jax.vjp(layers.max_pool_5x5, x)[1](g)[0]
  np.testing.assert_array_equal(dx[0, 0, :, 0], [3.0, 0.0, 0.0])


def _lax_depthwise(x, kernel, stride):
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), ((k // 2, k // 2),) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
      precision=HIGHEST)


@pytest.mark.parametrize("k,stride,hw", [(3, 1, (9, 10)), (3, 2, (9, 10)), (3, 2, (8, 8)),
                                         (3, 2, (7, 9)), (3, 1, (7, 9)), (1, 1, (5, 6))])
def test_depthwise_matches_grouped_conv_values_and_gradients(k, stride, hw):
  # The xla_cpu form: shifted slices forward, its own backward (xla_cpu.depthwise_shifts).
  x = _normal((2, *hw, 6))
  mod = layers.DepthwiseConv(k, stride, impl="xla_cpu")
  params = mod.init(jax.random.key(0), x)
  kernel = params["params"]["kernel"]
  ours = lambda x, kern: mod.apply({"params": {"kernel": kern}}, x)
  ref = lambda x, kern: _lax_depthwise(x, kern, stride)
  y, y_ref = ours(x, kernel), ref(x, kernel)
  assert y.shape == y_ref.shape
  assert _rel(y, y_ref) < RTOL
  g = _normal(y.shape, 2)
  for a, b in zip(jax.vjp(ours, x, kernel)[1](g), jax.vjp(ref, x, kernel)[1](g)):
    assert _rel(a, b) < RTOL


def test_pointwise_matches_einsum_values_and_gradients():
  x, kernel = _normal((2, 5, 7, 16)), _normal((16, 8), 1)
  ref = lambda x, k: jnp.einsum("nhwc,cd->nhwd", x, k, precision=HIGHEST)
  assert _rel(xla_cpu.pointwise(x, kernel), ref(x, kernel)) < RTOL
  g = _normal((2, 5, 7, 8), 2)
  for a, b in zip(jax.vjp(xla_cpu.pointwise, x, kernel)[1](g), jax.vjp(ref, x, kernel)[1](g)):
    assert _rel(a, b) < RTOL


@pytest.mark.parametrize("stride,cin", [(1, 64), (2, 3), (1, 3)])
def test_dense_conv_matches_lax_conv_values_and_gradients(stride, cin):
  x = _normal((2, 9, 10, cin))
  mod = layers.Conv(5, 3, stride, use_bias=True)
  variables = mod.init(jax.random.key(0), x)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  ours = lambda x, kern: mod.apply({"params": {"kernel": kern, "bias": bias}}, x)
  ref = lambda x, kern: jax.lax.conv_general_dilated(
      x, kern, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=HIGHEST) + bias
  assert _rel(ours(x, kernel), ref(x, kernel)) < RTOL
  g = _normal(ref(x, kernel).shape, 2)
  for a, b in zip(jax.vjp(ours, x, kernel)[1](g), jax.vjp(ref, x, kernel)[1](g)):
    assert _rel(a, b) < RTOL


def test_head_conv_with_many_outputs_infers_as_a_convolution_and_trains_by_matmuls():
  """A head with > 19 outputs (NYUD's 40 classes), xla_cpu form: XLA's convolution when not
  differentiated (its output written once), the taps' matmuls under autodiff; both exact."""
  x = _normal((2, 9, 10, 64))
  mod = layers.Conv(40, 3, use_bias=True, impl="xla_cpu")
  variables = mod.init(jax.random.key(0), x)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  ours = lambda x, kern: mod.apply({"params": {"kernel": kern, "bias": bias}}, x)
  ref = lambda x, kern: jax.lax.conv_general_dilated(
      x, kern, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=HIGHEST) + bias
  assert _rel(ours(x, kernel), ref(x, kernel)) < RTOL
  g = _normal(ref(x, kernel).shape, 2)
  for a, b in zip(jax.vjp(ours, x, kernel)[1](g), jax.vjp(ref, x, kernel)[1](g)):
    assert _rel(a, b) < RTOL
  forward = str(jax.make_jaxpr(ours)(x, kernel))
  assert "conv_general_dilated" in forward and "dot_general" not in forward
  backward = str(jax.make_jaxpr(lambda x, k: jax.vjp(ours, x, k)[1](g))(x, kernel))
  assert "dot_general" in backward and "conv_general_dilated" not in backward


def test_relu6_has_pytorch_gradient():
  x = jnp.asarray([-1.0, 0.0, 3.0, 6.0, 7.0])
  np.testing.assert_array_equal(layers.relu6(x), [0, 0, 3, 6, 6])
  np.testing.assert_array_equal(jax.grad(lambda x: layers.relu6(x).sum())(x), [0, 0, 1, 0, 0])


@pytest.mark.parametrize("size_in,size_out", [((16, 20), (64, 80)), ((8, 8), (16, 16)),
                                              ((13, 13), (25, 25)), ((5, 7), (3, 4)),
                                              ((1, 3), (4, 9))])
def test_half_pixel_resize_matches_jax_image_resize(size_in, size_out):
  x = _normal((2, *size_in, 3))
  ours = lambda x: layers.resize_bilinear(x, size_out)
  # jax.image.resize antialiases when downsampling, PyTorch does not: compare upsampling.
  if size_out[0] >= size_in[0] and size_out[1] >= size_in[1]:
    ref = lambda x: jax.image.resize(x, (2, *size_out, 3), "bilinear", precision=HIGHEST)
    assert _rel(ours(x), ref(x)) < RTOL
    g = _normal((2, *size_out, 3), 1)
    assert _rel(jax.vjp(ours, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0]) < RTOL
  else:
    assert ours(x).shape == (2, *size_out, 3)


def _align_corners_reference(x, size):
  """Explicit formula: src = dst * (in - 1) / (out - 1), blend floor and floor + 1."""
  x = np.asarray(x, np.float64)
  out = x
  for axis, n_out in ((1, size[0]), (2, size[1])):
    n_in = out.shape[axis]
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).reshape([-1 if a == axis else 1 for a in range(4)])
    out = np.take(out, i0, axis) * (1 - w) + np.take(out, i1, axis) * w
  return out


@pytest.mark.parametrize("size_out", [(9, 13), (16, 20), (1, 4)])
def test_align_corners_resize_matches_explicit_formula(size_out):
  x = _normal((2, 5, 7, 3))
  ours = layers.resize_bilinear(x, size_out, align_corners=True)
  assert _rel(ours, _align_corners_reference(x, size_out)) < RTOL


def test_bfloat16_compute_gives_float32_outputs_close_to_float32(variables):
  import hydrajax
  image = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3)).astype(np.uint8)
  f32 = hydrajax.apply(variables, image)
  bf16 = hydrajax.apply(variables, image, dtype=jnp.bfloat16)
  for task in f32:
    assert bf16[task].dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (eps 4e-3); over ~60 layers the relative error of
    # well-conditioned eval-mode outputs measured 2e-3..6e-3 (3 seeds); 3e-2 leaves 5x
    # for other summation orders.
    assert _rel(bf16[task], f32[task]) < 3e-2, task

