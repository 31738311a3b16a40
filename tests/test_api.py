"""Library API: hydrajax.apply shapes/dtypes, caching, input validation, weights files."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from hydrajax import api


def test_apply_returns_input_resolution_outputs_for_single_image(variables):
  image = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
  out = hydrajax.apply(variables, image)
  assert set(out) == {"segm", "depth"}
  assert out["segm"].shape == (97, 131, 40) and out["segm"].dtype == jnp.float32
  assert out["depth"].shape == (97, 131) and out["depth"].dtype == jnp.float32
  assert float(out["depth"].min()) >= 0.0


def test_apply_batch_equals_per_image_and_accepts_float(variables):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
  batch = hydrajax.apply(variables, images)
  assert batch["segm"].shape == (3, 64, 96, 40) and batch["depth"].shape == (3, 64, 96)
  single = hydrajax.apply(variables, images[1].astype(np.float32))
  # Batch 3 vs 1 may change XLA's blocking (summation order) in every conv; eval-mode
  # outputs are well conditioned, so that moves them by ~1e-6 of their O(1-10) values.
  np.testing.assert_allclose(batch["segm"][1], single["segm"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(batch["depth"][1], single["depth"], rtol=1e-4, atol=1e-4)


def test_apply_normals_are_unit_vectors():
  variables = hydrajax.init(0, num_classes=4, tasks=("segm", "depth", "normals"))
  out = hydrajax.apply(variables, np.full((33, 47, 3), 128, np.uint8))
  assert out["segm"].shape == (33, 47, 4) and out["normals"].shape == (33, 47, 3)
  # x / |x| of 3 float32 values: a few eps (6e-8) from unit length on any CPU.
  np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=-1), 1.0, rtol=1e-5)


def test_apply_does_not_recompile_for_a_seen_shape(variables):
  image = np.zeros((2, 40, 56, 3), np.uint8)
  hydrajax.apply(variables, image)
  traces = api.TRACE_COUNT
  hydrajax.apply(variables, image + 1)
  hydrajax.apply(variables, image.copy())
  assert api.TRACE_COUNT == traces
  hydrajax.apply(variables, np.zeros((2, 40, 60, 3), np.uint8))  # a new shape traces once
  assert api.TRACE_COUNT == traces + 1


@pytest.mark.parametrize("shape,dtype,match", [
    ((64, 96), np.uint8, r"\(H, W, 3\) or \(N, H, W, 3\).*\(64, 96\)"),
    ((1, 1, 64, 96, 3), np.uint8, r"\(H, W, 3\) or \(N, H, W, 3\)"),
    ((64, 96, 4), np.uint8, r"got shape \(64, 96, 4\)"),
    ((3, 64, 96), np.uint8, r"got shape \(3, 64, 96\)"),
    ((64, 96, 3), np.int32, r"uint8 or float.*int32"),
    ((64, 96, 3), np.bool_, r"uint8 or float.*bool"),
    ((0, 96, 3), np.uint8, r"non-empty"),
])
def test_apply_rejects_bad_images_with_expected_shape(variables, shape, dtype, match):
  with pytest.raises(ValueError, match=match):
    hydrajax.apply(variables, np.zeros(shape, dtype))


def test_apply_rejects_variables_without_heads():
  with pytest.raises(ValueError, match="batch_stats"):
    hydrajax.apply({"params": {}}, np.zeros((8, 8, 3), np.uint8))


def test_save_load_roundtrip_keeps_values_and_align_corners(tmp_path):
  variables = hydrajax.init(3, num_classes=6, tasks=("segm", "depth"), align_corners=True)
  path = tmp_path / "w.npz"
  hydrajax.save(path, variables)
  loaded = hydrajax.load(path)
  assert hydrajax.model_config(loaded) == {"num_classes": 6, "tasks": ("segm", "depth"),
                                          "align_corners": True}
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(loaded["params"])):
    np.testing.assert_array_equal(a, b)
  assert os.listdir(tmp_path) == ["w.npz"]  # no temp file left behind


def test_load_names_missing_and_misshaped_keys(tmp_path):
  variables = hydrajax.init(0, num_classes=6)
  arrays = hydrajax.weights.flatten(variables)
  del arrays["params/decoder/crp2/conv3/kernel"]
  arrays["params/decoder/conv3/kernel"] = np.zeros((1, 1, 25, 256), np.float32)
  with np.load(_saved(tmp_path, variables)) as f:
    arrays["__meta__"] = f["__meta__"]
  bad = tmp_path / "bad.npz"
  np.savez(bad, **arrays)
  with pytest.raises(ValueError) as e:
    hydrajax.load(bad)
  msg = str(e.value)
  assert str(bad) in msg and "params/decoder/crp2/conv3/kernel" in msg
  assert "params/decoder/conv3/kernel: expected (1, 1, 24, 256), got (1, 1, 25, 256)" in msg


def test_load_rejects_non_weights_files(tmp_path):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="junk.npz"):
    hydrajax.load(junk)
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    hydrajax.load(tmp_path / "nope.npz")


def test_failed_save_leaves_existing_file_intact(tmp_path):
  good = hydrajax.init(0, num_classes=6)
  path = tmp_path / "w.npz"
  hydrajax.save(path, good)
  before = path.read_bytes()
  broken = {"params": dict(good["params"]), "batch_stats": good["batch_stats"]}
  del broken["params"]["decoder"]
  with pytest.raises(ValueError, match="missing"):
    hydrajax.save(path, broken)
  assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.npz"]


def _saved(tmp_path, variables):
  p = tmp_path / "ref.npz"
  hydrajax.save(p, variables)
  return p
