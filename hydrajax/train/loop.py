"""Training: the train state, the optimizer, one pmapped step, and the loop.

One pure `train_step(state, batch, loss_weights) -> (state, metrics)` is pmapped once over
the devices of every process (axis "batch"; hydrajax.runtime.parallel). Each device sees its share
of the global batch; the loss is built from (sum, count) pieces whose counts are summed over
devices (hydrajax.train.losses),
gradients are summed with psum, and BatchNorm statistics are taken over the global batch
(`sync_bn`), so N devices give the parameters one device gives on the same global batch.
Images travel as uint8 and are normalised on device.

The optimizer is optax's: two SGD chains (encoder / everything else) under
`optax.multi_transform`, each with its learning-rate schedule, whose update count lives in
`opt_state`; `optax.MultiSteps` accumulates micro-batches. The loss weights stay an input of
the step (they are not optimizer state): changing them, e.g. in a sweep, never recompiles.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Mapping, Sequence

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

import hydrajax
from hydrajax import api, weights
from hydrajax.train import losses
from hydrajax.runtime import parallel
from hydrajax.models import HydraNet, ops
from hydrajax.runtime.parallel import AXIS, replicate, unreplicate  # noqa: F401 (public here too)


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: saved whole in checkpoints.

  step: micro-steps (batches) done; opt_state: the optimizer's, including the schedules'
  update counts; nonfinite_step: -1, or the first step whose loss was not finite (the state
  then stops changing, so it always holds the last good parameters).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  nonfinite_step: jax.Array

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}

  def apply_gradients(self, grads: Any, tx: optax.GradientTransformation,
                      batch_stats: Any) -> TrainState:
    """One micro-step: `tx` turns `grads` into this step's update (zero while MultiSteps
    accumulates) and the new BatchNorm statistics replace the old. `tx` is an argument,
    not a field, so the state stays plain arrays: same tree for every config, checkpointable."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)


COMPUTE_DTYPES = ("float32", "bfloat16", "float64")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """config.dtype as a jnp dtype; bfloat16 computes in bf16 with float32 parameters, BatchNorm
  statistics and outputs (HydraNet casts at each layer and returns float32)."""
  name = str(config.get("dtype", "float32"))
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("config.dtype='float64' needs 64-bit JAX (jax.enable_x64 / "
                     "JAX_ENABLE_X64=1); it serves exactness tests, not training")
  return jnp.dtype(name)


def make_model(config: ml_collections.ConfigDict, axis_name: str | None = None,
               platform: str | None = None) -> HydraNet:
  """The config's network, its layers in the form for `platform` (default: JAX's default
  backend; see hydrajax.models.ops.resolve)."""
  bn_axis = axis_name if config.sync_bn and not config.freeze_bn else None
  return api.model_from_config(config, dtype=compute_dtype(config), bn_axis_name=bn_axis,
                               impl=ops.resolve(config.get("impl", "auto"), platform))


def learning_rate_fn(config: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
  """lr(update count): optional linear warmup, then poly / step / constant decay over the
  run's updates (num_train_steps // grad_accum_steps)."""
  total = max(config.num_train_steps // config.grad_accum_steps, 1)
  decay_steps = max(total - config.warmup_steps, 1)
  if config.schedule == "poly":
    main = functools.partial(_poly, peak=peak, power=config.poly_power, steps=decay_steps)
  elif config.schedule == "step":
    bounds = {int(f * decay_steps): config.step_factor for f in config.step_boundaries}
    main = optax.piecewise_constant_schedule(peak, bounds)
  elif config.schedule == "constant":
    main = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.schedule must be 'poly', 'step' or 'constant', "
                     f"got {config.schedule!r}")
  if config.warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
  return optax.join_schedules([warmup, main], [config.warmup_steps])


def _poly(count: jax.Array, *, peak: float, power: float, steps: int) -> jax.Array:
  """peak * (1 - count / steps) ** power, 0 from `steps` on. (optax.polynomial_schedule is
  NaN at its end under jit on CPU for about half the run lengths, e.g. 1560 of 1..2999 at
  power 0.9 with optax 0.2.8: 1 - count / steps rounds slightly below 0 and its fractional
  power is NaN. Here steps - count is exact (integers below 2**24), so the end is 0;
  tests/test_optimizer.py checks the end of every run length up to 63.)"""
  # In JAX's widest float (float64 under jax.enable_x64; optax casts the rate to each update's
  # dtype), so a float64 run applies its learning rate unrounded, as PyTorch's double does.
  count = jnp.asarray(count, jax.dtypes.canonicalize_dtype(jnp.float64))
  frac = (steps - jnp.minimum(count, steps)) / steps
  return peak * jnp.maximum(frac, 0.0) ** power


def param_groups(params: Any) -> Any:
  """'encoder' for the params/encoder subtree, 'decoder' for everything else."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {k: ("encoder" if k[0] == "encoder" else "decoder") for k in flat})


def make_optimizer(config: ml_collections.ConfigDict,
                   accumulator_dtype: Any = jnp.float32) -> optax.GradientTransformation:
  """PyTorch's SGD per parameter group (`param_groups`): L2 weight decay added to the
  gradient, momentum, then -lr from the group's schedule (`learning_rate_fn` of lr_encoder /
  lr_decoder; its update count is in the optimizer state).

  With grad_accum_steps = K, `optax.MultiSteps` averages K micro-step gradients and makes one
  update (the schedules count updates). The average of K masked means equals the mean over
  the K batches together when each batch has as many valid pixels (always for depth-free
  segmentation without ignored pixels; otherwise it weights batches equally, like any
  accumulation of per-batch means). `accumulator_dtype`: the gradient sum's (params' dtype).
  """
  def sgd(peak: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(learning_rate_fn(config, peak), momentum=config.momentum,
                                 nesterov=config.nesterov))

  tx = optax.multi_transform(
      {"encoder": sgd(config.lr_encoder), "decoder": sgd(config.lr_decoder)}, param_groups)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps,
                          accumulator_dtype=accumulator_dtype)
  return tx


def learning_rates_fn(config: ml_collections.ConfigDict) -> Callable[[int], dict]:
  """micro-step (0-based) -> {"encoder", "decoder"} learning rates the optimizer applies at
  that micro-step's update (for logging: the same schedules, evaluated on the host; with
  gradient accumulation the update made at micro-step s is update s // k)."""
  enc = learning_rate_fn(config, config.lr_encoder)
  dec = learning_rate_fn(config, config.lr_decoder)
  k = config.grad_accum_steps
  return lambda step: {"encoder": float(enc(step // k)), "decoder": float(dec(step // k))}


def initial_variables(config: ml_collections.ConfigDict) -> dict:
  """Fresh variables, with every `init_from` entry of matching path and shape copied in.

  Raises ValueError naming the file if nothing matches (a file of another architecture) or
  if its align_corners (stored in the weights) differs from the config's.
  """
  variables = hydrajax.init(config.init_seed, num_classes=config.num_classes,
                            tasks=tuple(config.tasks), align_corners=config.align_corners)
  variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  if not config.init_from:
    return variables
  loaded = hydrajax.load(config.init_from)
  theirs = api.model_config(loaded)["align_corners"]
  if theirs != bool(config.align_corners):
    raise ValueError(f"init_from={config.init_from}: these weights upsample with align_corners="
                     f"{theirs} but config.align_corners={config.align_corners}; set "
                     f"--config.align_corners={theirs} to fine-tune them as they were trained")
  loaded = weights.flatten({"params": loaded["params"], "batch_stats": loaded["batch_stats"]})
  fresh = weights.flatten(variables)
  same = {k: v for k, v in loaded.items() if k in fresh and fresh[k].shape == v.shape}
  if not same:
    raise ValueError(f"init_from={config.init_from}: no entry matches the model "
                     f"({len(loaded)} entries in the file, {len(fresh)} in the model)")
  skipped = sorted(set(fresh) - set(same))
  if skipped:
    print(f"init_from: {len(same)} entries loaded, {len(skipped)} kept fresh "
          f"(e.g. {', '.join(skipped[:4])})")
  fresh.update(same)
  return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v)
                                       for k, v in fresh.items()})


def create_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """The state at step 0 (host arrays, one copy). Parameters are float32, or float64 for a
  float64 run (config.dtype; the exactness tests), so nothing rounds to float32 there."""
  variables = initial_variables(config)
  if compute_dtype(config) == jnp.float64:
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]),
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def task_loss_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{task: weight} of the config's tasks: the step's `loss_weights` input."""
  return {t: float(config.loss_weights[t]) for t in config.tasks}


def train_step(state: TrainState, batch: Mapping[str, jax.Array],
               loss_weights: Mapping[str, Any], *, model: HydraNet,
               tx: optax.GradientTransformation, freeze_bn: bool, sync_bn: bool,
               axis_name: str | None = AXIS) -> tuple[TrainState, dict]:
  """One micro-step on this device's share of the batch: (new state, metrics summed over
  devices). batch: "image" uint8 (n, H, W, 3), "segm" uint8 (n, H, W), "depth" (n, H, W) m;
  loss_weights: {task: weight} (`task_loss_weights`)."""
  chex.assert_rank(batch["image"], 4)
  chex.assert_type(batch["image"], jnp.uint8)
  images = api.normalize(batch["image"])

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if freeze_bn:
      outputs = model.apply(variables, images, train=False)
      new_stats = state.batch_stats
    else:
      outputs, mutated = model.apply(variables, images, train=True, mutable=["batch_stats"])
      new_stats = mutated["batch_stats"]
    terms = losses.loss_terms(outputs, batch, model.align_corners, axis_name, model.impl)
    total, means = losses.combined_loss(terms, loss_weights, axis_name)
    return total, (new_stats, means)

  (total, (new_stats, means)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # Each device's total is its share of the global loss: the sum is the global gradient.
    grads, total, means = jax.lax.psum((grads, total, means), axis_name)
    if not sync_bn and not freeze_bn:
      new_stats = jax.lax.pmean(new_stats, axis_name)
  updated = state.apply_gradients(grads, tx, new_stats)
  # A non-finite loss freezes the state (but not the step count) for good: it then always
  # holds the last good parameters, and the host raises at its next check.
  ok = jnp.isfinite(total) & (state.nonfinite_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = updated.replace(
      params=keep(updated.params, state.params),
      batch_stats=keep(updated.batch_stats, state.batch_stats),
      opt_state=keep(updated.opt_state, state.opt_state),
      nonfinite_step=jnp.where(ok | (state.nonfinite_step >= 0), state.nonfinite_step,
                               state.step))
  # The state keeps its tree, shapes and dtypes (no silent promotion, e.g. to float64).
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  metrics = {"loss": total, **{f"loss_{t}": m for t, m in means.items()}}
  return new_state, metrics


def _step_key(config: ml_collections.ConfigDict) -> tuple:
  """The config fields the compiled step depends on (the loss weights are an input instead;
  the learning-rate schedules are part of the optimizer)."""
  fields = ("num_classes", "tasks", "align_corners", "freeze_bn", "sync_bn", "momentum",
            "nesterov", "weight_decay", "grad_accum_steps", "dtype", "lr_encoder", "lr_decoder",
            "schedule", "poly_power", "step_boundaries", "step_factor", "warmup_steps",
            "num_train_steps")
  return tuple((f, tuple(v) if isinstance(v, (list, tuple)) else v)
               for f, v in ((f, config[f]) for f in fields))


@functools.lru_cache(maxsize=16)
def _compiled_step(key: tuple, devices: tuple) -> Any:
  config = ml_collections.ConfigDict(dict(key))
  step = functools.partial(train_step, model=make_model(config, AXIS, devices[0].platform),
                           tx=make_optimizer(config), freeze_bn=config.freeze_bn,
                           sync_bn=config.sync_bn)
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=list(devices),
                  donate_argnums=(0,))


def pmapped_train_step(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> Any:
  """`step(replicated_state, device_batch, loss_weights) -> (state, metrics)`, pmapped over
  `devices` (those of every process: `parallel.devices`), state donated; built once per
  (step-relevant config, devices) and reused. Each process passes its own rows."""
  return _compiled_step(_step_key(config), tuple(devices))


def _check_finite(rstate: TrainState, ckpt: Any) -> None:
  """Raise FloatingPointError if any step so far had a non-finite loss (state frozen since)."""
  bad = int(unreplicate(rstate.nonfinite_step))
  if bad >= 0:
    last = ckpt.latest_step()
    where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
             else "no checkpoint was written")
    raise FloatingPointError(
        f"non-finite loss at step {bad + 1}: training stopped; {where}. Lower the learning "
        f"rates or check the data (labels, depth units) and restart from the checkpoint.")


def _train_pipeline(config: ml_collections.ConfigDict, num_devices: int | None) -> Any:
  """This process's rows of the global batches, split over its `num_devices` devices."""
  from hydrajax.data import sources
  from hydrajax.data import pipeline
  return pipeline.train_dataset(
      sources.build_source(config, "train"), global_batch_size=config.batch_size,
      crop_size=tuple(config.crop_size), scale_range=tuple(config.scale_range),
      flip=config.flip, seed=config.seed, num_workers=config.num_workers,
      num_devices=num_devices,
      skip_bad=config.dataset == "folder" and bool(config.folder.skip_bad))


def write_weights(config: ml_collections.ConfigDict, workdir: str, name: str,
                  state: TrainState, step: int, result: Mapping | None = None) -> str:
  """WORKDIR/weights/NAME (.npz, atomic) from a host state, with the dataset's class names,
  palette and intrinsics, the step and the validation metrics in its metadata."""
  from hydrajax.data import registry

  variables = state.variables()
  if config.align_corners:
    variables["meta"] = {"align_corners": True}
  meta = {**registry.metadata(config), "step": int(step)}
  if result:
    meta["metrics"] = {k: float(v) for k, v in result.items()
                       if isinstance(v, (int, float)) and np.isfinite(v)}
  path = os.path.join(workdir, "weights", name)
  weights.save(path, jax.tree.map(lambda x: np.asarray(x, np.float32)
                                  if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
                                  variables), meta)
  return path


def _new_best(config: ml_collections.ConfigDict, workdir: str, result: Mapping | None) -> bool:
  """Whether `result` beats the `best_metric` of WORKDIR/weights/best.npz (or there is none).
  Read from the file, not from the checkpoints: Orbax's reads synchronise processes, and
  only the primary process writes weights."""
  value = (result or {}).get(config.best_metric)
  if value is None or not np.isfinite(value):
    return False
  path = os.path.join(workdir, "weights", "best.npz")
  if not os.path.isfile(path):
    return True
  best = weights.read_meta(path).get("metrics", {}).get(config.best_metric)
  if best is None:
    return True
  return value > best if config.best_mode == "max" else value < best


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train (resuming from WORKDIR/checkpoints if present), evaluate every
  `eval_every_steps` and at the end, checkpoint; write WORKDIR/weights/best.npz at each new
  best validation and final.npz at the end. Returns the last validation metrics.

  A resume must use the config recorded with the checkpoint, but for the fields listed in
  `config.resume_may_change` (ValueError naming the others); a run already at
  `num_train_steps` prints so and returns its last checkpoint's metrics."""
  import tqdm

  from hydrajax.train import checkpoint
  from hydrajax.train import config_check
  from hydrajax.evaluate import loop as evaluate
  from hydrajax.train import writer

  config = config_check.validate(config, "train")
  parallel.initialize(config)
  parallel.check_same_config(config, workdir)
  devices = parallel.devices(config.num_devices)
  parallel.check_batch(config.batch_size, devices)
  primary = parallel.is_primary()
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints,
                                 config.best_metric, config.best_mode)
  record = parallel.flat_config(config)
  start = ckpt.latest_step()
  parallel.check_agree("the checkpoint step to resume from", start)
  total = config.num_train_steps
  if start is not None:
    try:
      checkpoint.check_resume(ckpt, start, record, config.resume_may_change)
    except ValueError:
      ckpt.close()
      raise
    if start >= total:  # a checkpoint's step is its state's step
      if primary:
        print(f"{workdir}: nothing to do: its checkpoint is at step {start} and "
              f"num_train_steps={total}; to train further raise --config.num_train_steps "
              f"and add it to --config.resume_may_change")
      result = ckpt.metrics(start) or {}
      ckpt.close()
      return result
  log = writer.MetricWriter(workdir, enabled=primary)
  state = create_train_state(config)
  # The next batches are copied to the devices while the step runs; the iterator's state
  # stays that of the batches consumed (exact resume).
  data = parallel.DevicePrefetch(iter(_train_pipeline(config, len(parallel.local(devices)))),
                                 devices, config.prefetch_to_device)
  if start is not None:
    state = ckpt.restore(start, state, data)
    if primary:
      print(f"resumed from {ckpt.directory}/{start}")
  first = int(state.step)
  step_fn = pmapped_train_step(config, devices)
  loss_weights, lrs = task_loss_weights(config), learning_rates_fn(config)
  rstate = replicate(state, devices)
  del state
  bar = tqdm.tqdm(total=total, initial=first, disable=not (config.progress_bar and primary),
                  unit="step", dynamic_ncols=True)
  pending, result = [], {}
  tick, tick_step = time.perf_counter(), first
  for step in range(first + 1, total + 1):
    batch = next(data)
    if step == first + 1:
      parallel.compile_everywhere(step_fn, rstate, batch, loss_weights, name="train_step")
    rstate, step_metrics = step_fn(rstate, batch, loss_weights)
    pending.append(step_metrics)
    bar.update(1)
    if step % config.log_every_steps == 0 or step == total:
      _check_finite(rstate, ckpt)
      means = {k: float(np.mean([unreplicate(m[k]) for m in pending])) for k in pending[0]}
      now = time.perf_counter()
      means["images_per_sec"] = config.batch_size * (step - tick_step) / max(now - tick, 1e-9)
      means["lr_encoder"] = lrs(step - 1)["encoder"]
      tick, tick_step, pending = now, step, []
      log.write(step, {f"train/{k}": v for k, v in means.items()})
      bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means['images_per_sec']:.1f}")
    do_eval = step == total or (config.eval_every_steps and step % config.eval_every_steps == 0)
    do_save = do_eval or step % config.checkpoint_every_steps == 0
    if not do_save:
      continue
    _check_finite(rstate, ckpt)
    host = unreplicate(rstate)
    evaluated = None
    if do_eval:
      variables = host.variables()
      if config.align_corners:
        variables["meta"] = {"align_corners": True}
      result, _ = evaluate.evaluate(variables, config, devices=devices)
      evaluated = result
      log.write(step, {f"val/{k}": v for k, v in result.items()
                       if isinstance(v, (int, float))})
      bar.write(f"step {step}: " + ", ".join(
          f"{k} {result[k]:.4f}" for k in ("miou", "rmse") if k in result))
    ckpt.save(step, host, data, metrics=evaluated, config=record)
    if primary and _new_best(config, workdir, evaluated):
      write_weights(config, workdir, "best.npz", host, step, evaluated)
    if primary and step == total:
      write_weights(config, workdir, "final.npz", host, step, evaluated)
  bar.close()
  log.close()
  ckpt.close()
  return result
