"""Test setup: 4 fake CPU devices for the multi-device paths, shared small fixtures."""
import os

# HYDRAJAX_TEST_PLATFORM runs the tests elsewhere: e.g. "cuda", or "default" for JAX's own
# choice (benchmarks/accelerator_check.py runs the parity tests on the GPU that way).
_platform = os.environ.get("HYDRAJAX_TEST_PLATFORM", "cpu")
if _platform != "default":
  os.environ.setdefault("JAX_PLATFORMS", _platform)

# The suite is compile-bound: a train step at 64x96 takes far longer to trace and compile
# than to run (figures in docs/testing.md). XLA's backend at level 0 (LLVM without its
# optimisations) compiles the same HLO program much faster, and XLA:CPU's older loop
# emitters (instead of its MLIR fusion emitters) compile it in about half the time again,
# at the same run time; the same operations in the same precision, no fast-math with either,
# and the tolerances already allow any summation order. LLVM code generation in one piece
# rather than split over threads costs less CPU time, and the two xdist workers keep both
# cores busy anyway. (XLA stops at an unknown flag: all three are flags of the jaxlib that
# requirements.txt pins.)
# Subprocesses inherit them. HYDRAJAX_TEST_XLA_OPT=default keeps XLA's own settings.
if os.environ.get("HYDRAJAX_TEST_XLA_OPT", "0") != "default":
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
       "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1"]
  ).strip()

import chex  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# Before any JAX computation in the test run (chex raises if the backend already exists).
chex.set_n_cpu_devices(4)

# Several tests compile the same program through different jit objects (and subprocesses run
# the same programs): JAX's persistent cache, keyed by the program, compiles each once per
# test run. A fresh folder per run (removed at exit), so a run never reads another's;
# under pytest-xdist the controller makes it and both workers inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hydrajax-test-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


import hydrajax  # noqa: E402

# pytest-xdist's `--dist loadfile` hands each file whole to the next free worker, by default
# the files with the most tests first. That puts the few-test files that compile whole
# training steps last, where one worker can be left running one of them while the other has
# nothing to do. The longest files go first instead (longest-first keeps both workers busy to
# the end), most expensive first, the rest in their usual order; docs/testing.md lists the
# slowest tests.
_LONGEST_FIRST = ("test_train.py", "test_multiprocess.py", "test_ops.py",
                  "test_accelerator_check.py", "test_folder_train.py", "test_export.py",
                  "test_grad_parity.py", "test_mixed_precision.py", "test_package.py",
                  "test_batchnorm_parity.py", "test_optimizer.py", "test_demo.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # xdist is loaded
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within each file


@pytest.fixture(scope="session")
def variables():
  """A 40-class segm+depth model with random weights, shared by tests that only read it."""
  return hydrajax.init(jax.random.key(0), num_classes=40)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory, variables):
  """The shared 40-class segm+depth model as a weights file (a str path)."""
  path = str(tmp_path_factory.mktemp("w") / "model40.npz")
  hydrajax.save(path, variables)
  return path


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory):
  """KITTI-6 colour labels and KITTI depth PNGs with configs/kitti.py's list files."""
  from tests.helpers import fabricate
  root = tmp_path_factory.mktemp("kitti")
  fabricate.kitti(root)
  return root
