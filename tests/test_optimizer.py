"""The optimizer (hydrajax.train.loop.make_optimizer): per-group learning rates, the schedules
kept in the optimizer state, gradient accumulation against one large batch, frozen BatchNorm."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from configs import default
from hydrajax.train import loop as train_lib
from hydrajax.models import HydraNet


def _config(**overrides):
  c = default.get_config()
  c.update(overrides)
  return c


def _updates(tx, params, steps):
  """The update of every step for a gradient of ones (momentum 0: the update is -lr)."""
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  update = jax.jit(tx.update)
  out = []
  for _ in range(steps):
    updates, state = update(grads, state, params)
    out.append(updates)
  return out


def test_encoder_gets_lr_encoder_and_everything_else_lr_decoder(variables):
  # The model's real parameter tree, one element per leaf (only the tree matters here).
  params = jax.tree.map(lambda x: jnp.zeros(1), variables["params"])
  tx = train_lib.make_optimizer(_config(lr_encoder=1e-3, lr_decoder=3e-2, schedule="constant",
                                        momentum=0.0, weight_decay=0.0))
  (updates,) = _updates(tx, params, 1)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  groups = {path[0].key for path, _ in flat}
  assert groups == {"encoder", "decoder", "head_segm", "head_depth"}, groups
  for path, u in flat:
    lr = 1e-3 if path[0].key == "encoder" else 3e-2
    # -lr * 1.0 is one exact float32 product: equal, not close.
    np.testing.assert_array_equal(u, np.float32(-lr),
                                  err_msg=jax.tree_util.keystr(path))


TINY = {"encoder": {"w": jnp.zeros(2)}, "head_segm": {"w": jnp.zeros(3)}}


def test_warmup_then_poly_schedule_values_at_chosen_steps():
  # 4 warm-up updates, then poly decay over the remaining 20 of the run's 24 updates.
  config = _config(lr_encoder=0.01, lr_decoder=0.1, schedule="poly", poly_power=0.9,
                   warmup_steps=4, num_train_steps=24, momentum=0.0, weight_decay=0.0)
  updates = _updates(train_lib.make_optimizer(config), TINY, 26)
  expected = {0: 0.0, 2: 0.5, 3: 0.75, 4: 1.0, 9: 0.75 ** 0.9, 14: 0.5 ** 0.9, 24: 0.0, 25: 0.0}
  for step, fraction in expected.items():
    # The schedule is float32 arithmetic on small integers: a few ulps of the peak at most.
    np.testing.assert_allclose(-updates[step]["head_segm"]["w"], 0.1 * fraction, rtol=1e-6,
                               atol=1e-9, err_msg=f"decoder lr at update {step}")
    np.testing.assert_allclose(-updates[step]["encoder"]["w"], 0.01 * fraction, rtol=1e-6,
                               atol=1e-10, err_msg=f"encoder lr at update {step}")
  host = train_lib.learning_rates_fn(config)  # what the loop logs
  for step in range(26):
    np.testing.assert_allclose(host(step)["decoder"], -updates[step]["head_segm"]["w"][0],
                               rtol=1e-6, atol=1e-9)


def test_poly_schedule_is_finite_and_zero_at_the_end_under_jit():
  """The last update of a poly run: optax.polynomial_schedule(power=0.9) is NaN there under
  jit for 1560 of the run lengths 1..2999 (optax 0.2.8 on this CPU), which would freeze a
  run's final step; hydrajax's schedule clamps."""
  for total in range(1, 64):
    config = _config(lr_decoder=0.1, schedule="poly", poly_power=0.9, warmup_steps=0,
                     num_train_steps=total)
    lr = jax.jit(train_lib.learning_rate_fn(config, 0.1))
    values = np.asarray([lr(jnp.asarray(c)) for c in (total - 1, total, total + 1)])
    assert np.all(np.isfinite(values)), (total, values)
    assert values[0] > 0 and values[1] == 0 and values[2] == 0, (total, values)


def test_accumulation_makes_one_update_every_k_micro_steps_on_the_update_schedule():
  config = _config(lr_decoder=0.1, schedule="poly", poly_power=1.0, warmup_steps=0,
                   num_train_steps=8, grad_accum_steps=2, momentum=0.0, weight_decay=0.0)
  updates = [-float(u["head_segm"]["w"][0]) for u in
             _updates(train_lib.make_optimizer(config), TINY, 8)]
  # 4 updates of a linear decay: lr 0.1, 0.075, 0.05, 0.025 at micro-steps 1, 3, 5, 7.
  np.testing.assert_allclose(updates, [0, 0.1, 0, 0.075, 0, 0.05, 0, 0.025], rtol=1e-6)


def _batches(n, seed, h=32, w=32, num_classes=3):
  """n batches of 4: random images, labels with every pixel valid (equal counts per batch,
  so the mean of micro-batch means is the large batch's mean)."""
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8),
           "segm": rng.integers(0, num_classes, (4, h, w)).astype(np.uint8)} for _ in range(n)]


@pytest.fixture(scope="module")
def runs():
  """Float64 (jax x64): 2 updates on batches of 4, and the same as 4 accumulated
  micro-batches of 2, BatchNorm frozen."""
  with jax.enable_x64(True):
    common = dict(tasks=("segm",), num_classes=3, freeze_bn=True, schedule="poly",
                  warmup_steps=0, lr_encoder=0.05, lr_decoder=0.2, weight_decay=1e-2)
    model = HydraNet(3, tasks=("segm",), dtype=jnp.float64)
    f64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    init = f64(hydrajax.init(0, num_classes=3, tasks=("segm",)))
    weights = {"segm": 1.0}

    def run(config, batches):
      tx = train_lib.make_optimizer(config, accumulator_dtype=jnp.float64)
      state = train_lib.TrainState(
          step=jnp.zeros((), jnp.int32), params=init["params"],
          batch_stats=init["batch_stats"], opt_state=tx.init(init["params"]),
          nonfinite_step=jnp.full((), -1, jnp.int32))
      step = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx,
                                       freeze_bn=True, sync_bn=False, axis_name=None))
      states = []
      for batch in batches:
        state, _ = step(state, batch, weights)
        states.append(jax.device_get(state))
      return states

    big = _batches(2, seed=0)
    micro = [{k: v[i:i + 2] for k, v in b.items()} for b in big for i in (0, 2)]
    return {
        "init": jax.device_get(init),
        "big": run(_config(**common, num_train_steps=2, grad_accum_steps=1), big),
        "acc": run(_config(**common, num_train_steps=4, grad_accum_steps=2), micro),
    }


def test_k_accumulated_micro_batches_equal_one_k_times_larger_batch(runs):
  init, big, acc = runs["init"], runs["big"], runs["acc"]
  assert [int(s.step) for s in acc] == [1, 2, 3, 4]
  chex.assert_trees_all_equal(acc[0].params, init["params"])  # no update mid-accumulation
  for b, a in ((big[0], acc[1]), (big[1], acc[3])):
    delta_big = jax.tree.map(np.subtract, b.params, init["params"])
    delta_acc = jax.tree.map(np.subtract, a.params, init["params"])
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(delta_big))
    assert scale > 1e-4  # the updates are real
    # Float64: the two differ only in summation order (~1e-16 relative per operation, a
    # few hundred operations deep); a wrong accumulation (sum, lr per micro-step, a missed
    # batch) is off by O(1) of the update.
    chex.assert_trees_all_close(delta_acc, delta_big, rtol=0.0, atol=1e-9 * scale)


def test_freeze_bn_leaves_batch_statistics_untouched(runs):
  init = runs["init"]["batch_stats"]
  # Bit-identical: a train-mode step would replace every statistic with a batch average.
  for state in runs["big"] + runs["acc"]:
    chex.assert_trees_all_equal(state.batch_stats, init)
