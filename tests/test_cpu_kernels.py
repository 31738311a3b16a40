"""The XLA:CPU FFI kernel (crp1, hydrajax/models/cpu_kernels.cc) computes what its XLA twin
computes, is what `apply` runs on CPU, keeps the XLA gradient, and falls back cleanly where it
cannot be built.

The kernel takes the same maxima and sums in the same order as the XLA chain; XLA may
contract `x + s * pool` into one FMA, so the two differ by float32 rounding of a five-term
sum: compared against the chain in float64, the bound 1e-6 is ~8 ulps, on any CPU.
"""
import ctypes
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hydrajax.models import HydraNet, cpu_kernels, layers
from hydrajax.models.refinenet import CRPBlock, crp_depthwise_chain, crp_depthwise_cpu_fn

_HAS_COMPILER = cpu_kernels._compiler() is not None


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _inputs(shape, seed=0):
  kx, ks = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(kx, shape), jax.random.normal(ks, (4, shape[-1]))


def test_kernel_builds_and_registers_where_a_compiler_exists():
  # Not a skip: on a machine with a C++ compiler a failed build is a bug to see here.
  assert cpu_kernels.available() == _HAS_COMPILER
  with cpu_kernels.disabled():
    assert not cpu_kernels.available()


# Edge cases: windows clipped at every border (H, W < 5), one pixel, odd channel counts,
# batches, and heights that split into several bands of rows (bands >= 16 rows).
@pytest.mark.parametrize("shape", [(2, 37, 21, 5), (1, 3, 2, 7), (1, 1, 1, 4), (3, 20, 9, 17),
                                   (1, 70, 12, 16), (2, 33, 4, 3)])
def test_crp_kernel_matches_the_xla_chain(shape):
  if not cpu_kernels.available():
    pytest.fail("the CPU kernels did not build (see the warning log)")
  x, s = _inputs(shape)
  got = jax.jit(cpu_kernels.crp_depthwise_kernel)(x, s)
  with jax.enable_x64(True):
    want = crp_depthwise_chain(jnp.asarray(x, jnp.float64), jnp.asarray(s, jnp.float64))
  assert got.shape == x.shape and got.dtype == jnp.float32
  assert _rel(got, want) < 1e-6


def test_crp_kernel_gradient_is_the_xla_chain_gradient():
  x, s = _inputs((2, 9, 11, 6), seed=1)
  loss = lambda f: lambda x, s: jnp.sum(f(x, s) * jnp.cos(x))
  crp_cpu = lambda x, s: crp_depthwise_cpu_fn(x)(x, s)
  got = jax.jit(jax.grad(loss(crp_cpu), argnums=(0, 1)))(x, s)
  want = jax.jit(jax.grad(loss(crp_depthwise_chain), argnums=(0, 1)))(x, s)
  # Under autodiff the kernel is not called: the XLA chain's own VJP runs (the two programs
  # fuse differently, hence float32 rounding, not bits).
  jaxpr = str(jax.make_jaxpr(jax.grad(loss(crp_cpu)))(x, s))
  assert cpu_kernels.CRP_TARGET not in jaxpr
  for g, w in zip(got, want):
    assert _rel(g, w) < 1e-6


def test_apply_runs_the_kernel_on_cpu_and_agrees_with_the_xla_form():
  if not cpu_kernels.available():
    pytest.fail("the CPU kernels did not build (see the warning log)")
  model = HydraNet(num_classes=5, impl="cpu")
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 64, 96, 3))
  variables = model.init(jax.random.PRNGKey(3), x)
  apply = lambda: jax.jit(functools.partial(model.apply, train=False))
  with_kernel = apply().lower(variables, x)
  with cpu_kernels.disabled():
    without = apply().lower(variables, x)
  assert cpu_kernels.CRP_TARGET in with_kernel.as_text()
  assert cpu_kernels.CRP_TARGET not in without.as_text()
  a, b = with_kernel.compile()(variables, x), without.compile()(variables, x)
  for task in a:
    assert _rel(a[task], b[task]) < 1e-6


@pytest.fixture
def fresh_load():
  """Each test loads the kernels anew; afterwards the normal (cached) library again."""
  cpu_kernels._load.cache_clear()
  yield
  cpu_kernels._load.cache_clear()


def test_switch_turns_the_kernels_off(monkeypatch, fresh_load):
  monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
  assert not cpu_kernels.available()
  x, s = _inputs((1, 6, 7, 3))
  np.testing.assert_array_equal(crp_depthwise_cpu_fn(x)(x, s), crp_depthwise_chain(x, s))


def test_failed_build_warns_falls_back_and_leaves_no_file(monkeypatch, tmp_path, caplog,
                                                         fresh_load):
  monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path))
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails every command
  with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
    assert not cpu_kernels.available()
  assert "falling back to XLA" in caplog.text and "false -O3" in caplog.text
  assert list(tmp_path.iterdir()) == []  # no half-written library left behind
  x, s = _inputs((1, 6, 7, 3))
  np.testing.assert_array_equal(crp_depthwise_cpu_fn(x)(x, s), crp_depthwise_chain(x, s))


@pytest.mark.skipif(not _HAS_COMPILER, reason="needs a C++ compiler")
def test_build_writes_a_loadable_library_and_nothing_else(tmp_path):
  out = tmp_path / "cache" / "k.so"
  cpu_kernels.build(cpu_kernels._compiler(), out)
  assert [p.name for p in out.parent.iterdir()] == ["k.so"]
  assert ctypes.CDLL(str(out)).HjCrpDepthwise  # the handler symbol XLA is given


def _xla_pool(x):
  """The cpu form's XLA pool (what runs where the kernels are not built)."""
  return layers._max_pool_1d(layers._max_pool_1d(x, 1, 5, True), 2, 5, True)


# Integer values in 0..2: most windows hold ties, so the first-maximum rule of each pass
# (which input gets the gradient) is checked, not only the values.
@pytest.mark.parametrize("shape", [(2, 37, 21, 5), (1, 3, 2, 7), (1, 1, 1, 4), (3, 20, 9, 17)])
def test_max_pool_kernel_equals_the_xla_pool_bit_for_bit_with_ties(shape):
  if not cpu_kernels.available():
    pytest.fail("the CPU kernels did not build (see the warning log)")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 3, shape), jnp.float32)
  g = jnp.asarray(rng.normal(size=shape), jnp.float32)
  want, want_vjp = jax.vjp(_xla_pool, x)
  got, got_vjp = jax.vjp(layers._max_pool_5x5_kernel, x)
  # Same maxima, same offsets, and the cotangent summed in the same order: equal bits.
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(jax.jit(layers._max_pool_5x5_kernel)(x), want)
  np.testing.assert_array_equal(got_vjp(g)[0], want_vjp(g)[0])


def test_train_step_gradient_runs_the_pool_kernels():
  model = HydraNet(num_classes=5, impl="cpu")
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 64, 3))
  variables = model.init(jax.random.PRNGKey(3), x)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    return sum(jnp.mean(v) for v in out.values())
  hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
  for target in ("hydrajax_max_pool_arg", "hydrajax_max_pool_bwd"):
    assert target in hlo
  assert cpu_kernels.CRP_TARGET not in hlo  # crp1 under autodiff: the XLA chain's VJP


def test_disabled_holds_after_a_trace_with_the_kernels():
  # JAX caches a platform_dependent branch's trace by function: the choice of kernel or XLA
  # must be made outside it, or a trace with the kernels leaks into a later disabled() one
  # (jax.export then fails on the unregistered-elsewhere custom call).
  if not cpu_kernels.available():
    pytest.fail("the CPU kernels did not build (see the warning log)")
  block = CRPBlock(depthwise=True)  # impl "auto": the cpu form is a platform_dependent branch
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 4))
  variables = block.init(jax.random.PRNGKey(1), x)
  lower = lambda: jax.jit(block.apply).lower(variables, x).as_text()
  assert cpu_kernels.CRP_TARGET in lower()
  with cpu_kernels.disabled():
    text = lower()
  assert cpu_kernels.CRP_TARGET not in text and "hydrajax_max_pool" not in text


# Strides 1 and 2 on even and odd sizes (stride 2 of an odd size keeps the last row), one
# pixel, and widths of one channel up to a vector and more.
@pytest.mark.parametrize("shape,stride", [((2, 9, 7, 5), 1), ((2, 9, 7, 5), 2), ((1, 8, 6, 3), 2),
                                          ((1, 1, 1, 4), 1), ((1, 2, 3, 33), 2),
                                          ((3, 17, 12, 16), 1)])
def test_depthwise_kernel_matches_the_xla_form_forward_and_gradients(shape, stride):
  if not cpu_kernels.available():
    pytest.fail("the CPU kernels did not build (see the warning log)")
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(4), 3)
  x = jax.random.normal(kx, shape)
  k = jax.random.normal(kk, (3, 3, 1, shape[-1]))
  y, vjp = jax.vjp(lambda x, k: layers.depthwise_kernel(x, k, stride), x, k)
  g = jax.random.normal(kg, y.shape)
  with jax.enable_x64(True):
    f64 = lambda a: jnp.asarray(a, jnp.float64)
    want, want_vjp = jax.vjp(lambda x, k: layers._depthwise_shifts(x, k, stride), f64(x), f64(k))
    want_dx, want_dk = want_vjp(f64(g))
  dx, dk = vjp(g)
  assert y.shape == want.shape and dk.shape == k.shape
  # At most 9 products per output and input; the kernel gradient sums rows in double.
  assert _rel(y, want) < 1e-6 and _rel(dx, want_dx) < 1e-6 and _rel(dk, want_dk) < 1e-6
  np.testing.assert_array_equal(jax.jit(lambda x, k: layers.depthwise_kernel(x, k, stride))(x, k), y)
