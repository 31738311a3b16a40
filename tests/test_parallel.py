"""Device helpers: batches prefetched to the devices keep the iterator's checkpointed
position exact; device lists and the batch check (one process, 4 fake devices)."""
import jax
import numpy as np
import pytest

from hydrajax.train import checkpoint
from hydrajax.runtime import parallel
from hydrajax.data import SyntheticScenes, train_dataset


def _dataset():
  return train_dataset(SyntheticScenes(6, height=24, width=32), global_batch_size=4,
                       crop_size=16, seed=1, num_devices=4)


def test_prefetched_batches_are_neither_lost_nor_repeated_across_a_checkpoint(tmp_path):
  devices = parallel.devices()
  reference = iter(_dataset())
  expected = [next(reference) for _ in range(6)]
  it = parallel.DevicePrefetch(iter(_dataset()), devices, size=2)
  for i in range(3):
    batch = next(it)
    assert isinstance(batch["image"], jax.Array) and len(batch["image"].devices()) == 4
    np.testing.assert_array_equal(np.asarray(batch["image"]), expected[i]["image"])
  # Two more batches are already on the devices; the saved position is after batch 3.
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(3, {"x": np.zeros(2)}, it)
  resumed = parallel.DevicePrefetch(iter(_dataset()), devices, size=2)
  ckpt.restore(3, {"x": np.zeros(2)}, resumed)
  ckpt.close()
  for i in range(3, 6):
    np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), expected[i]["image"])


def test_prefetch_yields_every_batch_once_in_order():
  batches = [{"x": np.full((4, 1), i)} for i in range(5)]
  out = list(parallel.prefetch(iter(batches), parallel.devices(), size=2))
  assert [int(host["x"][0, 0]) for host, _ in out] == list(range(5))
  assert [int(np.asarray(dev["x"])[3, 0]) for _, dev in out] == list(range(5))


def test_devices_take_the_first_of_each_process_and_the_batch_must_split():
  assert parallel.devices(2) == jax.local_devices()[:2]
  assert parallel.devices() == jax.devices()
  parallel.check_batch(8, parallel.devices())
  with pytest.raises(ValueError, match=r"config.batch_size=6 is not divisible by the 4 "
                                       r"devices \(1 process x 4 devices\): use a multiple of 4"):
    parallel.check_batch(6, parallel.devices())


def test_unreplicate_reads_the_first_copy_without_running_a_program():
  """unreplicate must not index x[0]: that compiles a gather that XLA partitions into a
  collective over the local devices, and with several processes on CPU a run of those
  deadlocked gloo at the checkpoint save (tests/test_multiprocess.py hung 1 run in 2)."""
  devices = jax.local_devices()[:4]
  # A shape no other test uses, so an x[0] here would have to compile.
  tree = {"w": np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7) / 7,
          "n": {"step": np.int32(11)}}
  replicated = parallel.replicate(tree, devices)
  assert len(replicated["w"].sharding.device_set) == len(devices)
  compiles = []

  def listen(event, duration, **kwargs):
    if "compile" in event:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    host = parallel.unreplicate(replicated)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []
  assert isinstance(host["w"], np.ndarray) and isinstance(host["n"]["step"], np.ndarray)
  np.testing.assert_array_equal(host["w"], tree["w"])
  assert host["n"]["step"] == 11
