"""Several processes: 2 local processes x 2 fake CPU devices through jax.distributed
(coordinator on 127.0.0.1) train and evaluate as 1 process x 4 devices does on the same
config, resume after a stop, and stop at start on a config mismatch or a dead process."""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.helpers.configs import ROOT, tiny_config

from hydrajax.train import checkpoint
from hydrajax.evaluate import loop as evaluate
from hydrajax.train import loop as train_lib

# 4 devices in all, one example each; 5 validation examples: the second global eval batch
# of 4 holds 3 masked padding examples. float64 (with 64-bit JAX): over 4 steps at these
# learning rates float32 reordering grows to ~1e-4 of the loss, too close to a wrong
# reduction; in float64 it stays ~1e-12.
OVERRIDES = {"num_devices": 0, "synthetic.num_val": 5, "eval.batch_size": 4,
             "eval.max_examples": 0, "dtype": "float64"}
TIMEOUT = 900  # seconds per launch: compiling on a loaded 2-core machine is slow; a hang is not


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(mode: str, workdir: str) -> list[tuple[int, str]]:
  """Runs tests/helpers/multiprocess_worker.py as processes 0 and 1: [(return code, output)]."""
  # 2 fake devices per process, and the suite's other XLA flags (tests/conftest.py).
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  # Each worker compiles its own programs: the two compile at the same time, so a shared
  # compilation cache would save nothing.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env = dict(env, XLA_FLAGS=" ".join(["--xla_force_host_platform_device_count=2"] + flags),
             JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1", PYTHONUNBUFFERED="1")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.helpers.multiprocess_worker", mode, str(i), "2", str(port),
       workdir, json.dumps(OVERRIDES)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  deadline = time.monotonic() + TIMEOUT
  results = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
      results.append((p.returncode, out))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise AssertionError(f"{mode}: processes still running after {TIMEOUT} s (a hang)")
  return results


def _tails(results) -> str:
  """The end of each process's output, for failure messages."""
  return "\n".join(f"--- process {i}, exit code {rc}:\n" + "\n".join(
      line for line in out.splitlines() if not line.startswith("[Gloo]"))[-3000:]
      for i, (rc, out) in enumerate(results))


def _losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _final_state(workdir: str, config):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  state = ckpt.restore(step, train_lib.create_train_state(config))
  ckpt.close()
  assert step == int(state.step) == config.num_train_steps
  return state


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """2 processes x 2 devices: stopped right after the step-2 checkpoint, resumed to step 4
  from the checkpoint (state and each process's data position), then evaluate.run."""
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  results = _launch("train", workdir)
  assert [rc for rc, _ in results] == [0, 0], _tails(results)
  for _, out in results:
    assert "stopped after step 2; checkpoints: ['2']" in out, _tails(results)
  assert "resumed from" in results[0][1] and "resumed from" not in results[1][1]
  return workdir


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """1 process x 4 devices on the same config: (config, workdir, result)."""
  config = tiny_config(**OVERRIDES)
  workdir = str(tmp_path_factory.mktemp("one_process"))
  with jax.enable_x64(True):
    result = train_lib.train_and_evaluate(config, workdir)
  return config, workdir, result


def _max_abs(tree) -> float:
  return max(float(np.max(np.abs(np.asarray(x)), initial=0.0)) for x in jax.tree.leaves(tree))


# Both runs are float64 on the same machine; they differ only in the order in which the 4
# devices' contributions to each cross-device sum (gradients, loss sums, BatchNorm statistics)
# are added: gloo across the processes, XLA within one. Any order rounds a 4-term float64 sum
# by at most 3u of its terms' summed magnitudes (unit roundoff u = 1.1e-16), so two orders
# differ by at most 6u of them. Train-mode BatchNorm over the global batch of 4 at these small
# maps amplifies such differences by ~1e5-1e6 (its worst cancellation, as in
# tests/test_train.py's device-count check), so over 4 steps any order leaves every quantity
# ~1e-10 of its largest magnitude (the whole tree's: a tensor whose exact gradient is zero
# holds only rounding, so its own scale means nothing). The bound 1e-8 of that magnitude
# leaves a factor ~100 for any order on any CPU, while a reduction over one process only,
# per-process BatchNorm statistics or a wrong data position after the resume is off by ~1e-3
# or more.
RTOL = 1e-8


# one_process_run first (fixtures are made in the order of the arguments): its float64
# 4-device step, written to the run's compilation cache early, is the one
# tests/test_train.py's device-count test compiles on the other worker.
def test_two_processes_train_the_one_process_model(one_process_run, two_process_run):
  config, plain, _ = one_process_run
  one, two = _losses(plain), _losses(two_process_run)
  assert sorted(one) == sorted(two) == list(range(1, config.num_train_steps + 1))
  for step in one:  # steps 3-4 come from the resumed run
    assert abs(two[step] - one[step]) <= RTOL * abs(one[step]), (step, one[step], two[step])
  with jax.enable_x64(True):
    a, b = (_final_state(w, config) for w in (plain, two_process_run))
  for name in ("params", "batch_stats", "opt_state"):
    diff, scale = _max_abs_diff(getattr(a, name), getattr(b, name)), _max_abs(getattr(a, name))
    assert diff <= RTOL * scale, (name, diff, scale)


def test_two_processes_evaluate_the_whole_set_as_one_process(one_process_run, two_process_run):
  """The 2-process evaluate.run of its final checkpoint against 1 process x 4 devices
  scoring the same variables: the same counts and confusion-matrix metrics exactly."""
  config, _, one_result = one_process_run
  with open(os.path.join(two_process_run, "eval", "metrics.json")) as f:
    two = json.load(f)
  with jax.enable_x64(True):
    variables, _ = evaluate.load_variables(config, two_process_run)
    one, _ = evaluate.evaluate(variables, config)
  assert two["num_examples"] == one["num_examples"] == 5
  # Every valid pixel of the 5 examples counted once, not half (one process's share) or
  # with the padding examples.
  assert two["segm_pixels"] == one["segm_pixels"] == one_result["segm_pixels"]
  assert two["depth_pixels"] == one["depth_pixels"] == one_result["depth_pixels"]
  for key in ("miou", "pixel_acc", "mean_acc"):  # integer confusion matrices
    assert two[key] == one[key], key
  for key in ("rmse", "rmse_log", "abs_rel", "sq_rel", "delta1", "mean_rmse"):
    # float32 per-device sums added across 4 devices in another order (gloo vs in-process)
    np.testing.assert_allclose(two[key], one[key], rtol=1e-6, err_msg=key)
  with open(os.path.join(two_process_run, "result.json")) as f:
    during_training = json.load(f)
  np.testing.assert_allclose(during_training["rmse"], two["rmse"], rtol=1e-6)
  assert during_training["miou"] == two["miou"]


def test_processes_stop_on_a_bad_batch_a_config_mismatch_and_a_dead_process(tmp_path):
  (rc0, out0), (rc1, out1) = _launch("check", str(tmp_path))
  for out in (out0, out1):  # each process names the numbers, the field and both values
    assert ("config.batch_size=6 is not divisible by the 4 devices (2 processes x 2 devices)"
            in out), out  # 6 splits over each process's 2 devices, not over all 4
    assert "disagree on the config (1 fields): lr_decoder: 0.0" in out, out
    assert ("the processes disagree on the checkpoint step to resume from (process 0: 4, "
            "process 1: None)") in out, out
  assert "lr_decoder: 0.008 here vs 0.016" in out0 and "0.016 here vs 0.008" in out1
  assert rc1 == 3, out1
  # Process 0 was left calling collectives with a dead peer: it stops with JAX's error
  # (missed heartbeats) instead of hanging until the test's timeout.
  assert rc0 != 0 and "heartbeat" in out0, out0


def test_batch_not_divisible_by_the_devices_stops_at_start(tmp_path):
  config = tiny_config(batch_size=6, num_devices=4)
  # One process: config_check (or parallel.check_batch) names the batch and device count.
  with pytest.raises(ValueError, match=r"batch_size=6\b.*\b4 devices"):
    train_lib.train_and_evaluate(config, str(tmp_path))
