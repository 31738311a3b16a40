"""Test setup: 4 fake CPU devices for the multi-device paths, shared small fixtures."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import hydrajax  # noqa: E402


@pytest.fixture(scope="session")
def variables():
  """A 40-class segm+depth model with random weights, shared by tests that only read it."""
  return hydrajax.init(jax.random.key(0), num_classes=40)
