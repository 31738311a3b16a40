"""Test setup: 4 fake CPU devices for the multi-device paths, shared small fixtures."""
import os

# HYDRAJAX_TEST_PLATFORM runs the tests elsewhere: e.g. "cuda", or "default" for JAX's own
# choice (benchmarks/accelerator_check.py runs the parity tests on the GPU that way).
_platform = os.environ.get("HYDRAJAX_TEST_PLATFORM", "cpu")
if _platform != "default":
  os.environ.setdefault("JAX_PLATFORMS", _platform)

import chex  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# Before any JAX computation in the session (chex raises if the backend already exists).
chex.set_n_cpu_devices(4)

import hydrajax  # noqa: E402


@pytest.fixture(scope="session")
def variables():
  """A 40-class segm+depth model with random weights, shared by tests that only read it."""
  return hydrajax.init(jax.random.key(0), num_classes=40)
