"""Mixed precision (`config.dtype = "bfloat16"`): bf16 compute, float32 parameters, BatchNorm
statistics, outputs and losses; parity with float32 on CPU within bf16's rounding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.helpers.configs import tiny_config

import hydrajax
from hydrajax.train import loop as train_lib

# bfloat16 keeps 8 significant bits: unit roundoff u = 2**-8 = 3.9e-3, and a rounding's error is
# spread over [-u, u] (RMS u / sqrt(3) = 2.3e-3). The longest path from image to logits rounds
# to bf16 about K = 140 times (each conv output, BatchNorm output and residual sum of 17 blocks,
# the decoder, the heads); train-mode BatchNorm renormalises every layer, so each rounding reaches
# the logits with gain ~1 and independent sign: RMS relative error ~ sqrt(K) * u / sqrt(3) =
# 0.027, measured 0.06 (BN over the few values of 2x3 maps at stride 32 amplifies a little).
# 0.15 is that estimate with margin; float32 summation order (~1e-6) is far below it on any CPU.
OUTPUT_RTOL = 0.15
# The losses are means over 2*64*96 pixels of terms whose error is at most a few times the
# local logit error (cross-entropy is 2-Lipschitz in the logits' max norm), with independent
# signs: the mean's relative error is ~100x smaller than the logits'; measured 3e-5.
LOSS_RTOL = 1e-2


def _rms_rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def runs():
  """For float32 and bfloat16: the train-mode forward (outputs, updated statistics), one
  real `train_step` (new state, metrics) from the same state and batch, and the lowered text."""
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8),
           "segm": rng.integers(0, 40, (2, 64, 96), dtype=np.uint8),
           "depth": rng.uniform(0.5, 5.0, (2, 64, 96)).astype(np.float32)}
  out = {}
  for name in ("float32", "bfloat16"):
    config = tiny_config(dtype=name, warmup_steps=0)  # a non-zero lr at the first update
    model = train_lib.make_model(config)
    tx = train_lib.make_optimizer(config)
    state = train_lib.create_train_state(config)
    loss_weights = train_lib.task_loss_weights(config)

    def run(state, batch, loss_weights, model=model, tx=tx):
      forward = model.apply(state.variables(), hydrajax.normalize(batch["image"]), train=True,
                            mutable=["batch_stats"])
      stepped = train_lib.train_step(state, batch, loss_weights, model=model, tx=tx,
                                     freeze_bn=False, sync_bn=False, axis_name=None)
      return forward, stepped

    fn = jax.jit(run)
    text = fn.lower(state, batch, loss_weights).as_text()
    out[name] = (jax.device_get(fn(state, batch, loss_weights)), text, jax.device_get(state))
  return out


def test_bfloat16_really_computes_in_bfloat16(runs):
  # Guards against a silently float32 run: the convolutions' matmuls take bf16 operands.
  assert runs["float32"][1].count("bf16") == 0
  dots = [l for l in runs["bfloat16"][1].splitlines() if "dot_general" in l or "convolution" in l]
  assert dots and sum("bf16" in l for l in dots) > len(dots) // 2


def test_bfloat16_forward_matches_float32_within_rounding(runs):
  (out16, stats16), _ = runs["bfloat16"][0]
  (out32, stats32), _ = runs["float32"][0]
  for task in ("segm", "depth"):
    assert out16[task].dtype == np.float32
    err = _rms_rel(out16[task], out32[task])
    assert 0 < err < OUTPUT_RTOL, (task, err)
  # Statistics: float32, and the batch means agree relative to the activations' spread
  # (some means are exactly 0 in exact arithmetic: a relative error of the mean is meaningless).
  flat16 = traverse_util.flatten_dict(stats16["batch_stats"])
  flat32 = traverse_util.flatten_dict(stats32["batch_stats"])
  assert flat16.keys() == flat32.keys()
  for key, v32 in flat32.items():
    v16 = flat16[key]
    assert v16.dtype == np.float32, key
    if key[-1] == "mean":
      spread = np.sqrt(np.maximum(flat32[key[:-1] + ("var",)], 1e-12))
      # 0.1 * mean is stored (momentum 0.9 from 0): its error is 0.1 * a few u of the spread.
      assert np.max(np.abs(v16 - v32) / spread) < 0.1 * OUTPUT_RTOL, key


def test_bfloat16_train_step_keeps_float32_state_and_matches_loss(runs):
  _, (new16, metrics16) = runs["bfloat16"][0]
  _, (new32, metrics32) = runs["float32"][0]
  old = runs["bfloat16"][2]
  for tree in (new16.params, new16.batch_stats, new16.opt_state, metrics16):
    # Every floating leaf float32 (optax's step counters in opt_state are int32).
    floats = {np.dtype(x.dtype) for x in jax.tree.leaves(tree)
              if np.issubdtype(np.dtype(x.dtype), np.floating)}
    assert floats == {np.dtype(np.float32)}
  for k in ("loss", "loss_segm", "loss_depth"):
    assert np.isfinite(metrics16[k])
    assert abs(metrics16[k] - metrics32[k]) <= LOSS_RTOL * abs(metrics32[k]), k
  # The bf16-computed gradient steps (nearly) every float32 parameter, in float32's direction.
  # Not leaf by leaf: an update below half an ulp leaves a parameter unchanged, and gradients
  # that are 0 in exact arithmetic (a bias before a train-mode BatchNorm) are rounding noise.
  flat = lambda tree: np.concatenate([np.ravel(x).astype(np.float64)
                                      for x in jax.tree.leaves(tree)])
  before = flat(old.params)
  step16, step32 = flat(new16.params) - before, flat(new32.params) - before
  moved = [np.any(n != o) for n, o in zip(jax.tree.leaves(new16.params),
                                          jax.tree.leaves(old.params))]
  assert sum(moved) > 0.9 * len(moved)
  cosine = step16 @ step32 / (np.linalg.norm(step16) * np.linalg.norm(step32))
  # Measured 0.87 (the steps differ by 52% in L2): BatchNorm gradients on this batch's 2x3
  # maps at stride 32 cancel heavily, where even float32 differs from float64 by 10-30%
  # (PyTorch's own float32 gradients do the same), and bf16 rounding is 2**16 times
  # float32's. Not a derived bound: 0.5 only rejects a broken gradient path (an unrelated
  # direction gives ~0 in 3M dimensions).
  assert cosine > 0.5


def test_config_dtype_selects_the_model_and_the_compiled_step():
  assert train_lib.make_model(tiny_config()).dtype == jnp.float32
  assert train_lib.make_model(tiny_config(dtype="bfloat16")).dtype == jnp.bfloat16
  assert (train_lib._step_key(tiny_config()) !=
          train_lib._step_key(tiny_config(dtype="bfloat16")))
  with pytest.raises(ValueError, match="config.dtype"):
    train_lib.make_model(tiny_config(dtype="float16"))
