"""Devices and processes: one pmapped code path for one process or several.

With several processes (`jax.distributed`), every process calls the same pmapped function
with its own rows of the global batch (shape (local devices, per-device batch, ...)); the
pmap spans the devices of ALL processes, so every psum, pmax and BatchNorm statistic covers
the global batch. A pmap restricted to `jax.local_devices()` would silently reduce within one
process only. Pmap outputs are per-process arrays over the local devices, which is how
`replicate` places its copies too.
"""
from __future__ import annotations

import collections
import copy
import itertools
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np

AXIS = "batch"

# Config fields allowed to differ between the processes of one run.
_PER_PROCESS_FIELDS = ("process_id",)
_BARRIER_TIMEOUT_S = 1800  # compile time may differ this much between processes
_barrier_ids = itertools.count()


# Environment variables through which launchers tell each process how many tasks they
# started: srun (the step's tasks, else the job's), mpirun / Open MPI, MPICH and Intel MPI.
LAUNCHER_TASK_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS",
                           "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launcher_tasks(environ: Any = None) -> tuple[str, int] | None:
  """(variable, count) of the first launcher variable saying more than one task was started
  together with this process, else None."""
  environ = os.environ if environ is None else environ
  for name in LAUNCHER_TASK_VARIABLES:
    value = environ.get(name, "")
    if value.strip().isdigit():
      count = int(value)
      return (name, count) if count > 1 else None
  return None


def initialize(config: ml_collections.ConfigDict) -> None:
  """Join the run's processes if `config.distributed` (once per process; idempotent).

  Must run before the first JAX computation. With `coordinator_address` empty, JAX
  auto-detects the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU) or reads
  JAX_COORDINATOR_ADDRESS. A process that stops sending heartbeats for `heartbeat_timeout`
  seconds makes the others exit with an error naming it, instead of hanging in a collective.
  Without `distributed`, a process started as one of several tasks (srun -n 4, mpirun -np 4)
  stops with ValueError: each would act as process 0 on the same workdir.
  """
  if not config.distributed:
    tasks = launcher_tasks()
    if tasks is not None:
      raise ValueError(f"started as one of {tasks[1]} tasks ({tasks[0]}={tasks[1]}) but "
                       f"config.distributed is False: each task would run alone as process "
                       f"0 on the same workdir; set --config.distributed=True, or launch a "
                       f"single task")
    return
  if jax.distributed.is_initialized():
    return
  # CPU processes exchange collectives through gloo; an implementation chosen by the user
  # (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) is kept.
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address or None,
      num_processes=config.num_processes or None,
      process_id=config.process_id if config.process_id >= 0 else None,
      initialization_timeout=config.initialization_timeout,
      heartbeat_timeout_seconds=config.heartbeat_timeout)


def is_primary() -> bool:
  """Process 0: the one that writes logs, TensorBoard events, pictures and eval output."""
  return jax.process_index() == 0


def devices(num_local: int = 0) -> list:
  """The run's devices, over ALL processes: the first `num_local` (0 = all) devices of each
  process, process by process. Raises ValueError if processes would use different counts."""
  per_process = [jax.local_devices(process_index=p)[:num_local or None]
                 for p in range(jax.process_count())]
  counts = sorted({len(d) for d in per_process})
  if len(counts) > 1:
    raise ValueError(f"processes have different numbers of devices ({counts}); set "
                     f"config.num_devices to at most {counts[0]} so each uses the same")
  return [d for ds in per_process for d in ds]


def local(devices_: Sequence[Any]) -> list:
  """This process's devices among `devices_`, in order."""
  return [d for d in devices_ if d.process_index == jax.process_index()]


def check_batch(batch_size: int, devices_: Sequence[Any], what: str = "config.batch_size"
                ) -> None:
  """A global batch must split evenly over every device of every process."""
  n, p = len(devices_), jax.process_count()
  if batch_size <= 0 or batch_size % n:
    raise ValueError(f"{what}={batch_size} is not divisible by the {n} devices "
                     f"({p} process{'es' if p > 1 else ''} x {n // p} devices): use a "
                     f"multiple of {n}")


def _local_sharding(devices_: Sequence[Any]) -> jax.sharding.NamedSharding:
  """Leading axis split over this process's devices of `devices_`: where pmap keeps its
  per-device inputs and outputs."""
  mesh = jax.sharding.Mesh(np.array(local(devices_)), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any, devices_: Sequence[Any]) -> Any:
  """One copy of `tree` per local device of `devices_`, stacked on a leading axis and placed
  as pmap's outputs are (sharded over this process's devices), so the first step does not
  compile a second variant."""
  n, sharding = len(local(devices_)), _local_sharding(devices_)
  return jax.tree.map(lambda x: jax.device_put(
      np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of each (local devices, ...) leaf, as host numpy.

  Read straight from that device's buffer: `x[0]` would run a gather over all local devices,
  which XLA partitions into a cross-device collective; with several processes on CPU, a few
  hundred of those in a row deadlocked gloo (both processes idle at the checkpoint save).
  """
  return jax.tree.map(_first_copy, tree)


def _first_copy(x: Any) -> Any:
  if isinstance(x, jax.Array):
    shard = np.asarray(x.addressable_data(0))
    # A leading-axis shard keeps that axis (length 1); a PmapSharding one drops it.
    return np.asarray(shard[0]) if shard.ndim == x.ndim else shard
  return np.asarray(x)[0]


def prefetch(batches: Iterable[dict], devices_: Sequence[Any], size: int
             ) -> Iterator[tuple[dict, dict]]:
  """(host batch, the same batch on this process's devices), with `size` further batches
  already on their way (device_put is asynchronous, so the copies overlap the step)."""
  sharding = _local_sharding(devices_)
  queue = collections.deque()
  for batch in batches:
    queue.append((batch, jax.device_put(batch, sharding)))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class DevicePrefetch(grain.DatasetIterator):
  """A Grain iterator's (devices, per-device, ...) batches, placed on this process's devices
  `size` steps ahead of the one handed out.

  `get_state()` is the position after the last batch handed out, not after the last one
  read ahead, so a checkpoint resumes with the first batch still queued: none is lost or
  repeated. `set_state` empties the queue.
  """

  def __init__(self, parent: grain.DatasetIterator, devices_: Sequence[Any], size: int):
    super().__init__(parent)
    self._sharding, self._size = _local_sharding(devices_), size
    self._queue = collections.deque()  # (parent's state before the batch, device batch)

  def __next__(self) -> dict:
    while len(self._queue) <= self._size:
      state = copy.deepcopy(self._parent.get_state())
      try:
        batch = next(self._parent)
      except StopIteration:
        break
      self._queue.append((state, jax.device_put(batch, self._sharding)))
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()[1]

  def get_state(self) -> dict:
    return copy.deepcopy(self._queue[0][0]) if self._queue else self._parent.get_state()

  def set_state(self, state: dict) -> None:
    self._queue.clear()
    self._parent.set_state(state)


def barrier(name: str) -> None:
  """Wait until every process gets here (through the coordination service, not a device
  collective, so any delay up to 30 minutes is fine). Every process must call the same
  barriers in the same order."""
  if jax.process_count() == 1:
    return
  # jax 0.10 has no public barrier; this is the client Orbax's barriers use.
  from jax._src import distributed

  distributed.global_state.client.wait_at_barrier(
      f"hydrajax/{name}/{next(_barrier_ids)}", _BARRIER_TIMEOUT_S * 1000)


def compile_everywhere(fn: Any, *args: Any, name: str) -> None:
  """Compile pmapped `fn` for `args` (the call `fn(*args)` then reuses it) and wait for
  every process. On CPU, gloo gives up on a peer that reaches a collective more than 30 s
  after the others, and compiling takes different times on different machines (or on a
  loaded one): without this a run can fail at its first step."""
  if jax.process_count() == 1:
    return
  fn.lower(*args).compile()
  barrier(name)


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, in process order (a collective: all processes must call it)."""
  if jax.process_count() == 1:
    return [data]
  from jax.experimental import multihost_utils

  sizes = multihost_utils.process_allgather(np.array([len(data)], np.int32))
  size = int(np.max(sizes))
  padded = np.zeros(size, np.uint8)
  padded[:len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, size)
  return [bytes(row[:int(n)]) for row, n in zip(rows, np.ravel(sizes))]


def flat_config(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{"field" or "parent.field": repr(value)} of every field but the per-process ones: the
  form in which processes compare configs and checkpoints record them."""
  flat = {}

  def walk(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f"{prefix}.{k}" if prefix else k, v)
    else:
      flat[prefix] = repr(tuple(value) if isinstance(value, list) else value)

  walk("", config.to_dict())
  for field in _PER_PROCESS_FIELDS:
    flat.pop(field, None)
  return flat


def check_agree(what: str, value: Any) -> None:
  """Raise ValueError (on every process) listing each process's `value` (JSON-able) when they
  differ, e.g. the checkpoint step each would resume from. A collective."""
  everyone = [json.loads(b) for b in allgather_bytes(json.dumps(value).encode())]
  if any(v != value for v in everyone):
    shown = ", ".join(f"process {p}: {v}" for p, v in enumerate(everyone))
    raise ValueError(f"the processes disagree on {what} ({shown}): every process must see "
                     f"the same files (WORKDIR on a shared filesystem)")


def check_same_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raise ValueError (on every process) naming the fields on which processes disagree
  (all fields but `process_id`, plus the absolute workdir). A collective."""
  mine = {**flat_config(config), "workdir": repr(os.path.abspath(workdir))}
  everyone = [json.loads(b) for b in allgather_bytes(json.dumps(mine, sort_keys=True).encode())]
  for p, theirs in enumerate(everyone):
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
      shown = "; ".join(f"{k}: {mine.get(k, '<absent>')} here vs {theirs.get(k, '<absent>')}"
                        for k in diff[:5])
      raise ValueError(f"process {jax.process_index()} and process {p} disagree on the config "
                       f"({len(diff)} fields): {shown}. Launch every process with the same "
                       f"--config, overrides and --workdir")
