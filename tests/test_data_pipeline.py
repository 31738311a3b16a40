"""Grain pipelines: determinism, exact resume, device shapes, eval padding and mixing."""

import numpy as np
import pytest

from hydrajax.data import Mixture, SyntheticScenes, eval_dataset, train_dataset


def _source(n=12, **kw):
    return SyntheticScenes(n, height=48, width=64, **kw)


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_same_seed_gives_same_batches():
    kw = dict(global_batch_size=4, crop_size=32, seed=5)
    a, b = iter(train_dataset(_source(), **kw)), iter(train_dataset(_source(), **kw))
    for _ in range(3):
        _assert_batches_equal(next(a), next(b))
    c = iter(train_dataset(_source(), **{**kw, "seed": 6}))
    assert not np.array_equal(next(iter(train_dataset(_source(), **kw)))["image"], next(c)["image"])


def test_train_batches_are_numpy_uint8_images_of_crop_size():
    batch = next(iter(train_dataset(_source(), global_batch_size=4, crop_size=(32, 40))))
    assert set(batch) == {"image", "segm", "depth"}
    assert batch["image"].shape == (4, 32, 40, 3) and batch["image"].dtype == np.uint8
    assert batch["segm"].dtype == np.uint8 and batch["depth"].dtype == np.float32


def test_restored_iterator_state_gives_the_same_next_batch():
    ds = train_dataset(_source(), global_batch_size=3, crop_size=32, seed=1)
    it = iter(ds)
    for _ in range(5):  # past the first epoch of 12 samples
        next(it)
    state = it.get_state()
    expected = next(it)
    fresh = iter(ds)
    fresh.set_state(state)
    _assert_batches_equal(fresh.__next__(), expected)


def test_worker_processes_give_the_same_stream_and_restore_exactly():
    kw = dict(global_batch_size=2, crop_size=32, seed=2)
    ds = train_dataset(_source(8), num_workers=2, **kw)
    it, reference = iter(ds), iter(train_dataset(_source(8), num_workers=0, **kw))
    _assert_batches_equal(next(it), next(reference))
    state = it.get_state()
    expected = next(it)
    fresh = iter(ds)
    fresh.set_state(state)
    _assert_batches_equal(next(fresh), expected)


def test_num_devices_reshapes_batches():
    for devices in (2, 4):
        batch = next(iter(train_dataset(_source(), global_batch_size=8, crop_size=32, num_devices=devices)))
        assert batch["image"].shape == (devices, 8 // devices, 32, 32, 3)
        assert batch["depth"].shape == (devices, 8 // devices, 32, 32)


def test_training_stream_repeats_past_one_epoch():
    it = iter(train_dataset(_source(5), global_batch_size=4, crop_size=16))
    assert len([next(it) for _ in range(6)]) == 6


def test_normals_are_batched_when_the_source_has_them():
    batch = next(iter(train_dataset(_source(with_normals=True), global_batch_size=2, crop_size=16)))
    assert batch["normals"].shape == (2, 16, 16, 3)


def test_eval_pads_last_batch_with_mask_and_counts_exactly():
    source = _source(5)
    batches = list(eval_dataset(source, batch_size=2))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [True] * 5 + [False]
    last = batches[-1]
    assert (last["segm"][1] == 255).all() and (last["depth"][1] == 0).all()
    np.testing.assert_array_equal(batches[0]["segm"][1], source[1]["segm"])  # order kept


def test_eval_pad_to_multiple_and_devices():
    batches = list(eval_dataset(_source(4, ), batch_size=4, pad_to_multiple=32, num_devices=2))
    b = batches[0]
    assert b["image"].shape == (2, 2, 64, 64, 3) and b["mask"].shape == (2, 2)
    assert b["hw"][0, 0].tolist() == [48, 64]
    assert (b["segm"][:, :, 48:] == 255).all()


def test_mixture_draws_from_both_sources_by_weight():
    labelled = _source(4, seed=1)
    unlabelled = _DepthOnly(_source(40, seed=2))
    it = iter(train_dataset(Mixture([labelled, unlabelled], [0.5, 0.5]), global_batch_size=8,
                            crop_size=16, scale_range=(1.0, 1.0)))
    ignored = [bool((s == 255).all()) for _ in range(5) for s in next(it)["segm"]]
    assert 10 <= sum(ignored) <= 30  # about half of 40 are depth-only


class _DepthOnly:
    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        s = dict(self.source[i])
        s["segm"] = np.full_like(s["segm"], 255)
        return s


class _Indexed:
    """Samples whose segm holds their index; sizes vary with the index."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        h, w = 20 + i, 30 - i
        return {"image": np.zeros((h, w, 3), np.uint8), "segm": np.full((h, w), i, np.uint8),
                "depth": np.ones((h, w), np.float32)}


@pytest.mark.parametrize("count", [2, 4])
def test_processes_rows_together_are_the_one_process_batches(count):
    """Topology independence: shuffle, mix and augmentation follow the global position, so
    the processes' rows of each global batch, in process order, are the one-process batch
    (random scale, crop and flip included), over an epoch boundary."""
    mix = Mixture([_source(6), _source(5, seed=3)], [0.7, 0.3])
    kw = dict(global_batch_size=4, crop_size=(24, 32), seed=3, num_devices=1)
    one = iter(train_dataset(mix, **kw, process=(0, 1)))
    parts = [iter(train_dataset(mix, **kw, process=(k, count))) for k in range(count)]
    for _ in range(4):
        expected = next(one)
        rows = [next(p) for p in parts]
        assert rows[0]["image"].shape[1] == 4 // count
        for key in expected:
            np.testing.assert_array_equal(
                np.concatenate([r[key] for r in rows], axis=1), expected[key], err_msg=key)


def test_each_process_reads_only_its_rows():
    class _Logged(_Indexed):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    kw = dict(global_batch_size=4, crop_size=8, scale_range=(1.0, 1.0), num_epochs=1)
    seen = []
    for k in (0, 1):
        reads = []
        rows = [int(s[0, 0]) for b in train_dataset(_Logged(8), **kw, process=(k, 2))
                for s in b["segm"]]
        assert sorted(reads) == sorted(rows) and len(rows) == 4, (k, reads, rows)
        seen += rows
    assert sorted(seen) == list(range(8))  # together: the epoch, each sample once


def test_eval_rows_of_processes_cover_the_set_once_with_padding():
    """5 examples, global batch 4: two global batches, 3 padding examples masked."""
    parts = [list(eval_dataset(_Indexed(5), batch_size=4, process=(k, 2))) for k in (0, 1)]
    one = list(eval_dataset(_Indexed(5), batch_size=4))
    assert len(parts[0]) == len(parts[1]) == len(one) == 2
    for b, expected in enumerate(one):
        for key in ("mask", "hw"):
            np.testing.assert_array_equal(
                np.concatenate([p[b][key] for p in parts]), expected[key], err_msg=key)
    assert sum(int(p[b]["mask"].sum()) for p in parts for b in range(2)) == 5


def test_eval_pads_examples_of_different_sizes_to_the_batch_maximum():
    batches = list(eval_dataset(_Indexed(3), batch_size=3))
    b = batches[0]
    assert b["image"].shape == (3, 22, 30, 3)
    assert b["hw"].tolist() == [[20, 30], [21, 29], [22, 28]]
    assert (b["segm"][0, 20:] == 255).all() and (b["segm"][2, :, 28:] == 255).all()
