"""Test setup: 4 fake CPU devices for the multi-device paths, shared small fixtures."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# HYDRAJAX_TEST_PLATFORM runs the tests elsewhere: e.g. "cuda", or "default" for JAX's own
# choice (benchmarks/accelerator_check.py runs the parity tests on the GPU that way).
_platform = os.environ.get("HYDRAJAX_TEST_PLATFORM", "cpu")
if _platform != "default":
  os.environ.setdefault("JAX_PLATFORMS", _platform)

import jax  # noqa: E402
import pytest  # noqa: E402

import hydrajax  # noqa: E402


@pytest.fixture(scope="session")
def variables():
  """A 40-class segm+depth model with random weights, shared by tests that only read it."""
  return hydrajax.init(jax.random.key(0), num_classes=40)
