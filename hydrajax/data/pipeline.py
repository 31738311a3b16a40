"""Grain input pipelines: infinite shuffled training batches and exact, padded eval batches.

Training: `MapDataset.source -> shuffle(seed) -> repeat -> [mix] -> random_map (scale, crop,
flip) -> this process's rows -> batch -> to_iter_dataset -> mp_prefetch(workers)`. Batches are
dicts of numpy arrays (`image` uint8 NHWC, `segm` uint8 NHW, `depth` float32 NHW metres,
optionally `normals` float32 NHW3), shaped (num_devices, per_device_batch, ...) when
`num_devices` is given. The iterator's `get_state()` / `set_state()` reproduce the stream
exactly (checkpoint it).

Several processes: shuffling, mixing and augmentation are drawn by GLOBAL position (the
stream one process would read), and process k of P then takes rows [k*B/P, (k+1)*B/P) of
each global batch of B, decoding only those. The processes' rows together are the
one-process batch, sample for sample, for any process count.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Sequence

import grain
import numpy as np

from hydrajax.data import transforms

log = logging.getLogger(__name__)


class Mixture:
  """Several sources drawn with relative `weights` (e.g. 795 labelled + 47k depth-only frames).

  Each source is shuffled and repeated on its own, so a small labelled set recurs as often as
  its weight says while a large one streams through; pass it to `train_dataset`.
  """

  def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None = None):
    if weights is not None and len(weights) != len(sources):
      raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
    self.sources = list(sources)
    self.weights = list(weights) if weights is not None else [1.0] * len(sources)

  @property
  def has_normals(self) -> bool:
    return any(getattr(s, "has_normals", False) for s in self.sources)

  @property
  def has_relative_depth(self) -> bool:
    return any(getattr(s, "has_relative_depth", False) for s in self.sources)


class Concat:
  """Several sources one after the other (an evaluation set made of parts)."""

  def __init__(self, parts: Sequence[Any]):
    self.parts = list(parts)
    self.has_normals = all(getattr(p, "has_normals", False) for p in self.parts)

  def __len__(self) -> int:
    return sum(len(p) for p in self.parts)

  def _locate(self, index: int) -> tuple[Any, int]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    for p in self.parts:
      if index < len(p):
        return p, index
      index -= len(p)
    raise IndexError(index)

  def __getitem__(self, index: int) -> dict:
    part, i = self._locate(index)
    return part[i]

  def key(self, index: int) -> str:
    part, i = self._locate(index)
    return part.key(i)

  def files(self, index: int) -> list[str]:
    part, i = self._locate(index)
    files = getattr(part, "files", None)
    return list(files(i)) if files is not None else []


class SkipBad:
  """Wraps a source so a sample that fails to load becomes None (filtered out later).

  Each failure is logged with its error (which names the file) and counted in `num_skipped`;
  with worker processes every worker counts its own share.
  """

  def __init__(self, source: Any):
    self.source = source
    self.num_skipped = 0
    self.has_normals = getattr(source, "has_normals", False)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    try:
      return self.source[index]
    except IndexError:
      raise
    except Exception as e:  # noqa: BLE001 - any decode/shape error marks the sample bad
      self.num_skipped += 1
      log.warning("skipping bad sample %d (%d skipped so far): %s", index, self.num_skipped, e)
      return None


class _Complete:
  """Gives every sample segm, depth (and normals if wanted), ignore-filled where missing,
  and with `with_relative` a "depth_relative" code (0: metric; hydrajax.data.teacher).

  Mixed sources then batch together even when one lacks a modality.
  """

  def __init__(self, with_normals: bool, with_relative: bool = False):
    self.with_normals, self.with_relative = with_normals, with_relative

  def __call__(self, sample):
    if sample is None:
      return None
    out = dict(sample)
    hw = out["image"].shape[:2]
    out.setdefault("segm", np.full(hw, transforms.IGNORE_SEGM, np.uint8))
    out.setdefault("depth", np.zeros(hw, np.float32))
    if self.with_normals:
      out.setdefault("normals", np.zeros(hw + (3,), np.float32))
    if self.with_relative:
      out.setdefault("depth_relative", np.uint8(0))
    return out


class _SplitDevices:
  """Reshapes each (B, ...) batch entry to (num_devices, B // num_devices, ...)."""

  def __init__(self, num_devices: int):
    self.num_devices = num_devices

  def __call__(self, batch):
    return {k: v.reshape((self.num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def _not_none(x) -> bool:
  return x is not None


def _ensure_absl_flags() -> None:
  """Grain's worker processes read absl flags; parse defaults if the program did not."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


def _process(process: tuple[int, int] | None) -> tuple[int, int]:
  """(index, count) of this process: `process` if given (tests), else JAX's."""
  if process is not None:
    return process
  import jax

  return jax.process_index(), jax.process_count()


def _per_process_batch(global_batch_size: int, count: int, num_devices: int | None) -> int:
  if global_batch_size % count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {count} processes")
  batch = global_batch_size // count
  if num_devices and batch % num_devices:
    raise ValueError(f"per-process batch {batch} (global {global_batch_size} / {count} "
                     f"processes) is not divisible by {num_devices} devices")
  return batch


class _ProcessRows(grain.MapDataset):
  """Process `index`'s rows of every global batch of `global_batch` consecutive elements:
  element i is parent[(i // b) * global_batch + index * b + i % b], b = global_batch // count.
  Lazy: only these rows are ever read (decoded, augmented)."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._index = global_batch, index
    self._rows = global_batch // count
    full, rest = divmod(len(parent), global_batch)
    # A last, partial global batch (finite streams kept whole) is split in order too.
    self._length = full * self._rows + min(self._rows, max(0, rest - index * self._rows))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    batch, row = divmod(i, self._rows)
    return self._parent[batch * self._global + self._index * self._rows + row]

  def __str__(self) -> str:
    return f"_ProcessRows(global_batch={self._global}, index={self._index})"


def train_dataset(source, *, global_batch_size: int, crop_size: int | tuple[int, int],
                  scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True, seed: int = 0,
                  num_workers: int = 0, num_devices: int | None = None, drop_remainder: bool = True,
                  num_epochs: int | None = None, skip_bad: bool = False,
                  read_threads: int = 2, process: tuple[int, int] | None = None
                  ) -> grain.IterDataset:
  """Infinite (or `num_epochs`) stream of augmented training batches, deterministic for a seed.

  Args:
    source: a random-access source (`len`, `[i]`), or a `Mixture` of several.
    global_batch_size: examples per step over all processes; each process gets its
      1/process_count of the rows of every global batch.
    crop_size: training crop (H, W) or a side; smaller scaled images are padded with ignore.
    num_workers: Grain worker processes (0 = read in this process with `read_threads`).
    num_devices: this process's devices; if given, batches are (num_devices,
      per_device_batch, ...).
    skip_bad: drop samples that fail to load (logged) instead of raising. Pass a source
      wrapped in `SkipBad` yourself to read its `num_skipped` (exact with num_workers=0).
    process: (index, count) of this process (default: JAX's).
  Returns:
    A `grain.IterDataset`; `iter(ds)` has `get_state()` / `set_state()` for exact resume.
  """
  mixture = source if isinstance(source, Mixture) else Mixture([source])
  index, count = _process(process)
  batch_size = _per_process_batch(global_batch_size, count, num_devices)
  parts = []
  for i, src in enumerate(mixture.sources):
    if skip_bad and not isinstance(src, SkipBad):
      src = SkipBad(src)
    ds = grain.MapDataset.source(src)
    # Each source gets its own shuffle seed; repeat() reshuffles every epoch.
    parts.append(ds.shuffle(seed=seed + 1000 * i).repeat(num_epochs))
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, mixture.weights)
  ds = ds.map(_Complete(mixture.has_normals, mixture.has_relative_depth))
  # The augmentation's random draws depend on the global position (random_map seeds by index).
  ds = ds.random_map(transforms.TrainTransform(crop_size, scale_range, flip), seed=seed)
  if drop_remainder and num_epochs is not None:
    ds = ds[:len(ds) // global_batch_size * global_batch_size]
  ds = _ProcessRows(ds, global_batch_size, index, count)
  if skip_bad:
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)
    # Dropped samples make batches sparse, so batch after filtering, per worker: the stream
    # is then deterministic for a given num_workers but differs between worker counts (and
    # process counts).
    it = ds.to_iter_dataset(options).filter(_not_none).batch(batch_size, drop_remainder=drop_remainder)
  else:
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * max(1, read_threads))
    # Batching the MapDataset hands whole batches to workers: the same batches for any
    # num_workers (checkpointed iterator states are still per worker count).
    it = ds.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset(options)
  return _split_and_prefetch(it, num_devices, num_workers)


def _split_and_prefetch(it: grain.IterDataset, num_devices: int | None,
                        num_workers: int) -> grain.IterDataset:
  """Batches reshaped per device (if `num_devices`), produced by worker processes."""
  if num_devices:
    it = it.map(_SplitDevices(num_devices))
  if num_workers > 0:
    _ensure_absl_flags()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


class _EvalSource:
  """A source padded to whole global batches, each sample with a `mask` flag.

  Padding samples copy the first sample with all labels set to ignore, so they count
  nowhere even if the mask is forgotten.
  """

  def __init__(self, source, batch_size: int, pad_to_multiple: int | None, with_normals: bool):
    self.source, self.num_real = source, len(source)
    self.length = -(-self.num_real // batch_size) * batch_size
    self.pad_to_multiple = pad_to_multiple
    self.complete = _Complete(with_normals)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int):
    real = i < self.num_real
    sample = self.complete(self.source[i if real else 0])
    if not real:
      sample = {k: np.full_like(v, transforms.PAD_VALUES.get(k, 0)) if k != "image" else v for k, v in sample.items()}
    sample["hw"] = np.array(sample["image"].shape[:2], np.int32)
    if self.pad_to_multiple:
      sample = transforms.pad_to_multiple(sample, self.pad_to_multiple)
    sample["mask"] = np.array(real)
    return sample


def _stack_padded(samples: Sequence[dict]) -> dict:
  """Stacks samples, padding per-pixel arrays to the batch's largest H, W with ignore values."""
  h = max(s["image"].shape[0] for s in samples)
  w = max(s["image"].shape[1] for s in samples)
  samples = [transforms.pad_to(s, h, w) for s in samples]
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def eval_dataset(source, *, batch_size: int, pad_to_multiple: int | None = None,
                 num_devices: int | None = None, num_workers: int = 0,
                 read_threads: int = 2, process: tuple[int, int] | None = None
                 ) -> grain.IterDataset:
  """One ordered pass over `source` in fixed-size batches, for exact metrics.

  Every batch has `mask` bool (B,) (False on padding examples that fill the last batch) and
  `hw` int32 (B, 2), each example's size before padding. With `pad_to_multiple` (e.g. 32),
  images and labels are padded bottom/right with ignore values (image 0, segm 255, depth 0);
  examples of different sizes are padded to the batch's largest. `batch_size` is global:
  each process of `process` = (index, count) (default: JAX's) gets its rows of every batch,
  padded to the largest of ITS rows (pad further to the global largest to match shapes).
  """
  index, count = _process(process)
  local_batch = _per_process_batch(batch_size, count, num_devices)
  src = _EvalSource(source, batch_size, pad_to_multiple, getattr(source, "has_normals", False))
  ds = _ProcessRows(grain.MapDataset.source(src), batch_size, index, count)
  ds = ds.batch(local_batch, batch_fn=_stack_padded)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2))
  return _split_and_prefetch(it, num_devices, num_workers)
