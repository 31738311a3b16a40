"""The folder dataset on fabricated folders: every image / mask / depth format, missing
modalities, mismatched sizes, corrupt files, orphans, classes and intrinsics files."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from configs import folder as folder_config
from hydrajax.data import folder, registry, sources
from hydrajax.data.pngio import BadSampleError
from hydrajax.train import config_check

H, W = 12, 16
RNG = np.random.default_rng(0)


def _image(path, h=H, w=W):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  a = RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)
  Image.fromarray(a).save(path, **({"quality": 95} if path.endswith((".jpg", ".jpeg")) else {}))
  return a


def _save(path, array, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith(".npy"):
    np.save(path, array)
  else:
    Image.fromarray(array).save(path, **kw)


def _classes(root, text="floor\nwall 0 0 255\nchair #ff0000\n"):
  (root / "classes.txt").write_text(text)


def test_every_image_mask_and_depth_format_reads_to_the_same_sample(tmp_path):
  _classes(tmp_path)
  ids = RNG.choice([0, 1, 2, 255], (H, W)).astype(np.uint8)
  metres = RNG.uniform(0.5, 9.0, (H, W)).astype(np.float32)
  metres[0, :3] = 0  # invalid
  mm = np.round(metres * 1000).astype(np.uint16)
  palette = folder.read_classes(str(tmp_path)).palette
  colours = np.where((ids == 255)[..., None], 0, palette[np.minimum(ids, 2)]).astype(np.uint8)
  t = tmp_path / "train"
  png_rgb = _image(f"{t}/images/a.png")
  _image(f"{t}/images/b.jpg")
  _image(f"{t}/images/c.jpeg")
  _image(f"{t}/images/d.png")
  _save(f"{t}/segm/a.png", ids)                 # ids, grey
  _save(f"{t}/segm/b.png", colours)             # RGB colours of classes.txt
  pal = Image.fromarray(ids, "P")
  pal.putpalette(np.resize(np.arange(256, dtype=np.uint8), 768).tolist())
  pal.save(f"{t}/segm/c.png")                   # ids, palette PNG
  _save(f"{t}/depth/a.png", mm)                 # 16-bit millimetres
  _save(f"{t}/depth/b.npy", metres)             # float metres
  _save(f"{t}/depth/c.tiff", metres)            # 32-bit float TIFF, metres
  mixed = metres.copy()
  mixed[1, 1], mixed[1, 2] = np.nan, -3.0
  _save(f"{t}/depth/d.npy", mixed)              # non-finite and negative = invalid
  _image(f"{tmp_path}/val/images/v.png")
  src = folder.Folder(str(tmp_path), "train")
  assert [src.key(i) for i in range(len(src))] == ["train/a", "train/b", "train/c", "train/d"]
  samples = [src[i] for i in range(4)]
  np.testing.assert_array_equal(samples[0]["image"], png_rgb)
  for s in samples:
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
  for s in samples[:3]:
    np.testing.assert_array_equal(s["segm"], ids)
  assert (samples[3]["segm"] == 255).all()      # no mask: ignored
  np.testing.assert_allclose(samples[0]["depth"], mm / np.float32(1000), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(samples[1]["depth"], metres)
  np.testing.assert_array_equal(samples[2]["depth"], metres)
  assert samples[3]["depth"][1, 1] == 0 and samples[3]["depth"][1, 2] == 0
  assert samples[3]["depth"][0, 3] == metres[0, 3]
  val = folder.Folder(str(tmp_path), "val")
  assert len(val) == 1 and (val[0]["depth"] == 0).all() and (val[0]["segm"] == 255).all()


def test_depth_scale_divides_16_bit_pngs(tmp_path):
  _image(f"{tmp_path}/train/images/a.png")
  _save(f"{tmp_path}/train/depth/a.png", np.full((H, W), 5000, np.uint16))
  assert folder.Folder(str(tmp_path), depth_scale=5000.0)[0]["depth"].max() == 1.0
  assert folder.Folder(str(tmp_path))[0]["depth"].max() == 5.0


def test_images_of_different_sizes_are_fine(tmp_path):
  _classes(tmp_path)
  _image(f"{tmp_path}/train/images/small.png", 8, 10)
  _image(f"{tmp_path}/train/images/large.png", 20, 30)
  _save(f"{tmp_path}/train/segm/large.png", np.zeros((20, 30), np.uint8))
  src = folder.Folder(str(tmp_path), val_fraction=0)
  assert [src[i]["segm"].shape for i in range(2)] == [(20, 30), (8, 10)]


@pytest.mark.parametrize("label", ["segm/a.png", "depth/a.png", "depth/a.npy", "depth/a.tiff"])
def test_label_of_another_size_names_both_files(tmp_path, label):
  _classes(tmp_path)
  _image(f"{tmp_path}/train/images/a.png")
  array = {"segm/a.png": np.zeros((H + 1, W), np.uint8), "depth/a.png": np.ones((H, W + 2), np.uint16),
           "depth/a.npy": np.ones((H, W + 2), np.float32),
           "depth/a.tiff": np.ones((H, W + 2), np.float32)}[label]
  _save(f"{tmp_path}/train/{label}", array)
  with pytest.raises(folder.FolderError) as e:
    folder.Folder(str(tmp_path))
  assert f"train/{label}" in str(e.value) and "train/images/a.png" in str(e.value)
  assert "differs" in str(e.value)


def _corrupt(root):
  _classes(root)
  for name in ("a", "b", "c"):
    _image(f"{root}/train/images/{name}.png")
  (root / "train" / "images" / "b.png").write_bytes(b"\x89PNG not really")
  _save(f"{root}/train/depth/c.png", RNG.integers(0, 9000, (H, W)).astype(np.uint16))
  data = (root / "train" / "depth" / "c.png").read_bytes()
  (root / "train" / "depth" / "c.png").write_bytes(data[:-40])  # the pixel data cut


def test_unreadable_file_is_named_and_stops_unless_skipping(tmp_path):
  _corrupt(tmp_path)
  with pytest.raises(folder.FolderError, match=r"train/images/b\.png: unreadable"):
    folder.Folder(str(tmp_path), val_fraction=0)
  src = folder.Folder(str(tmp_path), skip_bad=True, val_fraction=0)
  assert src.num_skipped == 1 and [src.key(i) for i in range(len(src))] == ["train/a", "train/c"]
  with pytest.raises(BadSampleError, match=r"train/depth/c\.png"):  # header fine, data cut
    src[1]


def test_orphan_label_is_an_error_naming_it(tmp_path):
  _image(f"{tmp_path}/train/images/a.png")
  _save(f"{tmp_path}/train/depth/typo.png", np.ones((H, W), np.uint16))
  with pytest.raises(folder.FolderError, match=r"train/depth/typo\.png: a label without an image"):
    folder.Folder(str(tmp_path))
  assert len(folder.Folder(str(tmp_path), skip_bad=True)) == 1


def test_two_files_for_one_frame_are_named(tmp_path):
  _image(f"{tmp_path}/train/images/a.png")
  _image(f"{tmp_path}/train/images/a.jpg")
  with pytest.raises(folder.FolderError, match=r"two files for frame 'a'"):
    folder.Folder(str(tmp_path))


@pytest.mark.parametrize("label,array,message", [
    ("depth/a.png", np.ones((H, W), np.uint8), "depth PNG of mode L: expected 16-bit"),
    ("depth/a.npy", np.ones((H, W), np.int32), "depth .npy of dtype int32: expected float"),
    ("segm/a.png", np.ones((H, W), np.uint16), "segmentation PNG of mode I;16"),
])
def test_label_of_the_wrong_kind_is_named(tmp_path, label, array, message):
  _classes(tmp_path)
  _image(f"{tmp_path}/train/images/a.png")
  _save(f"{tmp_path}/train/{label}", array)
  with pytest.raises(folder.FolderError, match=message):
    folder.Folder(str(tmp_path))


def test_colour_mask_with_a_colour_of_no_class_names_file_and_colour(tmp_path):
  _classes(tmp_path)
  _image(f"{tmp_path}/train/images/a.png")
  colours = np.zeros((H, W, 3), np.uint8)
  colours[0, 0] = (1, 2, 3)
  _save(f"{tmp_path}/train/segm/a.png", colours)
  with pytest.raises(BadSampleError, match=r"segm/a\.png: colour\(s\) \(1, 2, 3\)"):
    folder.Folder(str(tmp_path))[0]


def test_segmentation_without_a_classes_file_is_named(tmp_path):
  _image(f"{tmp_path}/train/images/a.png")
  _save(f"{tmp_path}/train/segm/a.png", np.zeros((H, W), np.uint8))
  with pytest.raises(folder.FolderError, match=r"segm/a\.png: segmentation labels need "
                                               r"ROOT/classes\.txt"):
    folder.Folder(str(tmp_path))


def test_classes_txt_and_json_give_names_and_colours(tmp_path):
  _classes(tmp_path, "# comment\nfloor\ntraffic light 0 0 255\n\nchair #ff0000\n")
  c = folder.read_classes(str(tmp_path))
  assert c.names == ("floor", "traffic light", "chair") and c.coloured == (False, True, True)
  assert c.palette[1].tolist() == [0, 0, 255] and c.palette[2].tolist() == [255, 0, 0]
  os.remove(tmp_path / "classes.txt")
  (tmp_path / "classes.json").write_text(json.dumps(
      ["floor", {"name": "chair", "color": [1, 2, 3]}]))
  c = folder.read_classes(str(tmp_path))
  assert c.names == ("floor", "chair") and c.palette[1].tolist() == [1, 2, 3]


@pytest.mark.parametrize("text,message", [
    ("floor\nfloor\n", "listed twice: floor"),
    ("floor 1 2 3\nwall 1 2 3\n", "share a colour"),
    ("floor 1 2 300\n", r"line 1: colour \[1, 2, 300\]"),
    ("\n", "no class names"),
])
def test_bad_classes_file_is_named(tmp_path, text, message):
  _classes(tmp_path, text)
  with pytest.raises(folder.FolderError, match=message) as e:
    folder.read_classes(str(tmp_path))
  assert "classes.txt" in str(e.value)


def test_intrinsics_are_read_and_bad_ones_named(tmp_path):
  (tmp_path / "intrinsics.json").write_text('{"fx": 500, "fy": 501.5, "cx": 320, "cy": 240}')
  assert folder.read_intrinsics(str(tmp_path)) == {"fx": 500.0, "fy": 501.5, "cx": 320.0,
                                                   "cy": 240.0}
  (tmp_path / "intrinsics.json").write_text('{"fx": 500, "fy": -1, "cx": 320, "cy": 240}')
  with pytest.raises(folder.FolderError, match=r"intrinsics\.json: fy=-1"):
    folder.read_intrinsics(str(tmp_path))


def test_without_val_a_seeded_split_of_train(tmp_path):
  for i in range(10):
    _image(f"{tmp_path}/train/images/{i:02d}.png", 4, 4)
  keys = lambda s: {s.key(i) for i in range(len(s))}
  train, val = (folder.Folder(str(tmp_path), s, val_fraction=0.3) for s in ("train", "val"))
  assert len(val) == 3 and len(train) == 7 and not keys(train) & keys(val)
  assert keys(folder.Folder(str(tmp_path), "val", val_fraction=0.3)) == keys(val)
  assert keys(folder.Folder(str(tmp_path), "val", val_fraction=0.3, split_seed=1)) != keys(val)


def _config(root, **overrides):
  c = folder_config.get_config("runlocal")
  c.data_dir = str(root)
  for k, v in overrides.items():
    c[k] = v
  return c


def test_config_takes_the_class_count_from_classes_txt(tmp_path):
  _classes(tmp_path)
  _image(f"{tmp_path}/train/images/a.png")
  assert config_check.validate(_config(tmp_path)).num_classes == 3
  assert config_check.validate(_config(tmp_path, num_classes=40)).num_classes == 40
  with pytest.raises(config_check.ConfigError, match=r"num_classes=2: expected at least 3"):
    config_check.validate(_config(tmp_path, num_classes=2))
  assert registry.class_names(_config(tmp_path)) == ("floor", "wall", "chair")
  source = sources.build_source(config_check.validate(_config(tmp_path)), "train")
  assert len(source) == 1


def test_config_names_a_bad_classes_file(tmp_path):
  _classes(tmp_path, "floor\nfloor\n")
  with pytest.raises(config_check.ConfigError, match=r"classes\.txt: class name\(s\) listed twice"):
    config_check.validate(_config(tmp_path))


def test_training_stops_at_start_naming_the_bad_file(tmp_path):
  from hydrajax.train import loop as train_lib
  from tests.helpers import fabricate
  fabricate.folder(tmp_path / "data")
  Image.fromarray(np.ones((5, 7), np.uint16)).save(tmp_path / "data" / "train" / "depth" / "f0.png")
  with pytest.raises(folder.FolderError, match=r"train/depth/f0\.png: size 7x5 differs from its "
                                               r"image .*train/images/f0\.png"):
    train_lib.train_and_evaluate(_config(tmp_path / "data"), str(tmp_path / "run"))
  assert not os.listdir(tmp_path / "run" / "checkpoints")


def test_a_depth_only_folder_needs_no_classes_file(tmp_path):
  _image(f"{tmp_path}/train/images/a.png")
  _image(f"{tmp_path}/train/images/b.png")
  _save(f"{tmp_path}/train/depth/a.npy", np.ones((H, W), np.float32))
  with pytest.raises(config_check.ConfigError, match="num_classes=0"):
    config_check.validate(_config(tmp_path))  # segm wanted, but no classes file
  config = config_check.validate(_config(tmp_path, tasks=("depth",), best_metric="rmse",
                                         best_mode="min"))
  assert registry.metadata(config) == {"dataset": "folder", "intrinsics": None}
  source = sources.build_source(config, "train")
  assert len(source) == 1 and source[0]["depth"].shape == (H, W)


def test_a_rotated_phone_photo_is_read_upright_and_its_label_matches_that(tmp_path):
  _classes(tmp_path)
  os.makedirs(tmp_path / "train" / "images")
  stored = RNG.integers(0, 255, (H, W, 3), dtype=np.uint8)  # as the sensor stored it
  exif = Image.Exif()
  exif[0x0112] = 6  # shown turned a quarter: W x H upright
  Image.fromarray(stored).save(tmp_path / "train" / "images" / "a.jpg", exif=exif, quality=95)
  _save(f"{tmp_path}/train/segm/a.png", np.zeros((W, H), np.uint8))  # drawn on the upright view
  src = folder.Folder(str(tmp_path), val_fraction=0)
  assert src[0]["image"].shape == (W, H, 3) and src[0]["segm"].shape == (W, H)


def test_skip_bad_trains_past_unreadable_frames(tmp_path):
  from hydrajax.train import loop as train_lib
  _corrupt(tmp_path)  # b: unreadable header (dropped at start), c: depth data cut (at read)
  config = _config(tmp_path, batch_size=2, crop_size=(8, 8))
  config.folder.val_fraction = 0.0
  with pytest.raises(folder.FolderError, match=r"b\.png: unreadable"):
    train_lib._train_pipeline(config_check.validate(config), None)
  config.folder.skip_bad = True
  batch = next(iter(train_lib._train_pipeline(config_check.validate(config), None)))
  assert batch["image"].shape == (2, 8, 8, 3)


def test_hidden_files_are_skipped_not_read(tmp_path):
  """macOS's `._NAME.jpg` resource forks and unfinished `.tmp-*` writes beside the frames
  are neither frames nor problems."""
  _classes(tmp_path)
  _image(f"{tmp_path}/train/images/a.png")
  _save(f"{tmp_path}/train/segm/a.png", np.zeros((H, W), np.uint8))
  (tmp_path / "train" / "images" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X")
  (tmp_path / "train" / "segm" / ".tmp-123-0123abcd.png").write_bytes(b"\x89PNG cut")
  src = folder.Folder(str(tmp_path), val_fraction=0)
  assert [src.key(i) for i in range(len(src))] == ["train/a"]
  found = folder.scan(str(tmp_path))
  assert (found.problems, found.orphans, found.ignored) == ([], [], [])


def test_a_symlink_out_of_the_root_is_refused_naming_it(tmp_path):
  root, outside = tmp_path / "data", tmp_path / "elsewhere"
  _image(f"{outside}/secret.png")
  _image(f"{root}/train/images/a.png")
  _image(f"{root}/shared/b.png")
  (root / "train" / "images" / "b.png").symlink_to(root / "shared" / "b.png")  # inside: fine
  (root / "train" / "images" / "c.png").symlink_to(outside / "secret.png")
  link = root / "train" / "images" / "c.png"
  with pytest.raises(folder.FolderError, match=re.escape(
      f"{link}: a symbolic link out of the dataset root {root} (to {outside / 'secret.png'})")):
    folder.Folder(str(root), val_fraction=0)
  src = folder.Folder(str(root), val_fraction=0, skip_bad=True)
  assert [src.key(i) for i in range(len(src))] == ["train/a", "train/b"]
  (outside / "classes.txt").write_text("floor\n")
  (root / "classes.txt").symlink_to(outside / "classes.txt")
  with pytest.raises(folder.FolderError, match="classes.txt: a symbolic link out of"):
    folder.read_classes(str(root))


def test_float_depth_in_millimetres_stops_with_the_fix(tmp_path):
  _image(f"{tmp_path}/train/images/a.png")
  _save(f"{tmp_path}/train/depth/a.npy", RNG.uniform(500, 9000, (H, W)).astype(np.float32))
  src = folder.Folder(str(tmp_path), val_fraction=0)
  with pytest.raises(BadSampleError, match=r"a\.npy: float depth of median .* looks like "
                                           r"millimetres, but float depth is metres: save it "
                                           r"divided by 1000"):
    src[0]
  far = RNG.uniform(150, 900, (H, W)).astype(np.float32)  # mostly sky, in metres ...
  far[-3:] = RNG.uniform(2, 5, (3, W))                     # ... over ground near the camera
  _save(f"{tmp_path}/train/depth/a.npy", far)
  np.testing.assert_array_equal(src[0]["depth"], far)


def test_a_huge_classes_file_is_refused_by_its_size_not_parsed(tmp_path):
  """Two million lines stop at the size bound (the read stops there); a file under it stops
  at the 256th class, not after parsing them all."""
  (tmp_path / "classes.txt").write_text("c\n" * 2_000_000)
  with pytest.raises(folder.FolderError, match=r"classes\.txt: larger than 1024 KiB: not a "
                                               r"classes file \(at most 255 class names"):
    folder.read_classes(str(tmp_path))
  (tmp_path / "classes.txt").write_text("".join(f"c{i}\n" for i in range(300)))
  with pytest.raises(folder.FolderError, match=r"classes\.txt: more than 255 classes"):
    folder.read_classes(str(tmp_path))
