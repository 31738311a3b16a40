"""hydrajax-distill --teacher: ONNX teachers built here (tests/helpers/teacher_graphs.py) label
a folder through their card; classes mapped and masked pixel for pixel; relative depth fitted
to metres; a stopped run resumes; a card that does not fit the graph stops in one line."""
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import folder as folder_config
from tests.helpers import teacher_graphs as tg
from tests.helpers.cli import assert_one_error_line

from hydrajax.data import pngio, teacher
from hydrajax.train import config_check, distill, onnx_teacher, teacher_targets

H, W = 16, 24
CLASSES = ["floor", "wall", "chair", "table", "lamp"]
# Teacher classes 10j..10j+9 are class j; the other 100 are mapped to nothing.
CLASS_MAP = {f"t{10 * j + r}": name for j, name in enumerate(CLASSES) for r in range(10)}
TEACHER_IDS = list(range(0, 60))  # frames show mapped and unmapped teacher classes


def _write_folder(root, num=8, metric=(0, 1), sparse=()):
  """ROOT/{train,val}: frames of tg.frame; depth (.npy metres) on the `metric` frames (every
  pixel) and the `sparse` ones (every 7th pixel); no segmentation."""
  rng = np.random.default_rng(0)
  for split, n in (("train", num), ("val", 1)):
    for d in ("images", "depth"):
      os.makedirs(root / split / d, exist_ok=True)
    for i in range(n):
      image = tg.frame(rng, H, W, TEACHER_IDS)
      Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
      if split == "train" and (i in metric or i in sparse):
        depth = tg.true_depth(image).astype(np.float32)
        if i in sparse:
          depth.reshape(-1)[np.arange(depth.size) % 7 != 0] = 0
        np.save(root / split / "depth" / f"{i:03d}.npy", depth)
  (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
  return root


def _config(root):
  c = folder_config.get_config("runlocal")
  c.data_dir = str(root)
  return c


def _image(root, i):
  return np.asarray(Image.open(root / "train" / "images" / f"{i:03d}.png"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
  """Any input size: frames go in at a long side of 24, a multiple of 8 (their own size)."""
  spec = dict(tg.card()["input"], multiple_of=8, long_side=W)
  return tg.build(tmp_path_factory.mktemp("teacher") / "t.onnx", None, None,
                  card_overrides={"input": spec})


@pytest.fixture(scope="module")
def class_map(tmp_path_factory):
  path = tmp_path_factory.mktemp("map") / "map.txt"
  path.write_text("# teacher\tmine\n" + "".join(f"{t}\t{s}\n" for t, s in CLASS_MAP.items()))
  return str(path)


@pytest.fixture(scope="module")
def labelled(data, graph, class_map, tmp_path_factory):
  out = tmp_path_factory.mktemp("out") / "labels"
  counts = distill.run(_config(data), str(out), teacher=graph, class_map=class_map,
                       min_confidence=0.6, progress=False)
  return counts, out


def test_relative_teacher_is_fitted_to_metres_on_the_metric_frames(labelled, data, graph):
  counts, out = labelled
  assert counts["depth"] == 6 and counts["segm"] == 8
  fit = counts["fit"]["dataset"]
  assert fit["frames"] == 2 and fit["abs_rel"] < 1e-5
  model = onnx_teacher.OnnxTeacher(graph)
  for i in range(2, 8):
    image = _image(data, i)
    r = model.run(image)["depth"]
    metres = teacher_targets.to_metres(r, "inverse_depth_relative", fit["scale"], fit["shift"])
    truth = tg.true_depth(image)
    # The teacher is exactly 2 / d + 0.3 up to float32 rounding (~1e-7 relative), and the
    # least squares fit over ~800 exact pixels recovers a and b to that order.
    np.testing.assert_allclose(metres, truth, rtol=1e-4)
    stored = pngio.read_depth(str(out / "depth" / f"train__{i:03d}.png"), 256.0, (H, W))
    # Stored as uint16 metres * 256: half a step of rounding.
    np.testing.assert_allclose(stored, truth, atol=0.5 / 256 + 1e-4 * truth.max())
  report = json.loads((out / "depth_fit.json").read_text())
  assert report["frames"]["train/000"]["fit"] == "frame"
  assert report["frames"]["train/000"]["abs_rel"] < 1e-5
  assert report["frames"]["train/005"] == {"fit": "dataset", "scale": fit["scale"],
                                           "shift": fit["shift"], "abs_rel": None}


def test_class_map_and_confidence_mask_apply_pixel_for_pixel(labelled, data):
  _, out = labelled
  table = teacher_targets.class_table(tg.TEACHER_CLASSES, CLASSES, CLASS_MAP)
  ambiguous = ignored = 0
  for i in range(8):
    image = _image(data, i)
    merged = teacher_targets.merged_probabilities(tg.teacher_softmax(image), table, 5)
    best, conf = merged.argmax(-1), merged.max(-1)
    expect = np.where((conf >= 0.6) & (best < 5), best, 255)
    got = pngio.read_label(str(out / "segm" / f"train__{i:03d}.png"), (H, W))
    near = np.abs(conf - 0.6) < 1e-4  # float32 softmax may fall either side of 0.6 here
    ambiguous += near.sum()
    np.testing.assert_array_equal(got[~near], expect[~near], err_msg=str(i))
    ignored += (expect == 255).sum()
    assert ((got < 5) | (got == 255)).all()
  assert ambiguous < 10 and 0 < ignored < 8 * H * W  # masks both unmapped and unsure pixels


def test_fit_of_an_exact_affine_teacher_recovers_its_coefficients():
  rng = np.random.default_rng(1)
  depth = rng.uniform(0.5, 10.0, 500)
  r = 3.0 / depth - 0.7
  r[:20] += rng.uniform(-5, 5, 20)  # stray points: the robust refit drops them
  scale, shift = teacher_targets.robust_affine_fit(r, 1.0 / depth)
  np.testing.assert_allclose([scale, shift], [1 / 3.0, 0.7 / 3.0], rtol=1e-9)


def test_sparse_metric_frames_are_fitted_on_their_own_pixels_with_fill_all(tmp_path, graph):
  root = _write_folder(tmp_path / "d", num=4, metric=(), sparse=(0, 1))
  out = tmp_path / "out"
  counts = distill.run(_config(root), str(out), teacher=graph, only="depth", fill="all",
                       progress=False)
  assert counts["depth"] == 4
  frames = counts["fit"]["frames"]
  assert frames["train/000"]["fit"] == frames["train/001"]["fit"] == "frame"
  assert frames["train/002"]["fit"] == "dataset"
  source_labels = teacher.TeacherLabels(
      __import__("hydrajax.data.folder", fromlist=["Folder"]).Folder(str(root)), str(out))
  sample = source_labels[0]
  # Densified: every pixel has depth; the sparse LiDAR pixels keep their own values.
  assert (sample["depth"] > 0).all()
  own = np.load(root / "train" / "depth" / "000.npy")
  np.testing.assert_array_equal(sample["depth"][own > 0], own[own > 0])


def test_stopped_run_resumes_and_a_finished_one_writes_nothing(tmp_path, data, graph, class_map,
                                                               monkeypatch):
  out = tmp_path / "out"
  original, calls = teacher.write_teacher_labels, []

  def stop_after_three(*args, **kwargs):
    if len(calls) == 3:
      raise KeyboardInterrupt
    calls.append(args[1])
    original(*args, **kwargs)

  monkeypatch.setattr(teacher, "write_teacher_labels", stop_after_three)
  with pytest.raises(KeyboardInterrupt):
    distill.run(_config(data), str(out), teacher=graph, class_map=class_map, progress=False)
  monkeypatch.setattr(teacher, "write_teacher_labels", original)
  counts = distill.run(_config(data), str(out), teacher=graph, class_map=class_map,
                       progress=False)
  assert counts["samples"] == 8 - 3
  assert sorted(os.listdir(out / "segm")) == [f"train__{i:03d}.png" for i in range(8)]
  assert sorted(os.listdir(out / "depth")) == [f"train__{i:03d}.png" for i in range(2, 8)]
  stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
  again = distill.run(_config(data), str(out), teacher=graph, class_map=class_map,
                      progress=False)
  assert again["samples"] == 0
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps


def test_metric_teacher_is_used_as_is(tmp_path, data):
  graph = tg.build(tmp_path / "m.onnx", H, W, metric=True)
  out = tmp_path / "out"
  counts = distill.run(_config(data), str(out), teacher=graph, only="depth", progress=False)
  assert counts["depth"] == 6 and "fit" not in counts
  stored = pngio.read_depth(str(out / "depth" / "train__004.png"), 256.0, (H, W))
  np.testing.assert_allclose(stored, tg.true_depth(_image(data, 4)), atol=0.5 / 256 + 1e-5)


def _cli(capsys, config, out, **kwargs):
  with pytest.raises(SystemExit) as exit_:
    with config_check.exit_on_bad_input():
      distill.run(config, str(out), progress=False, **kwargs)
  assert exit_.value.code == 2
  return capsys.readouterr().err


@pytest.mark.parametrize("overrides, words", [
    ({"input": dict(tg.card()["input"], layout="NHWC")}, ["layout NHWC", "[1, 3, 16, 24]"]),
    ({"input": dict(tg.card()["input"], size=[32, 32])}, ["input size [32, 32]"]),
    ({"input": dict(tg.card()["input"], dtype="uint8")}, ["dtype uint8", "tensor(float)"]),
    ({"outputs": {"depth": {"kind": "metres"}}}, ["kind must be one of"]),
    ({"outputs": {"disparity": {"kind": "depth_metric"}}}, ["'disparity'", "'depth'"]),
    ({"outputs": {"logits": {"kind": "segm_logits", "classes": ["a", "b"]}}},
     ["expected 2 classes"]),
])
def test_card_that_does_not_fit_the_graph_stops_in_one_line(tmp_path, data, capsys, overrides,
                                                            words):
  graph = tg.build(tmp_path / "t.onnx", H, W, card_overrides=overrides)
  err = _cli(capsys, _config(data), tmp_path / "out", teacher=graph)
  assert_one_error_line(err, "does not fit", graph, *words)
  assert not (tmp_path / "out").exists()


def test_wrong_depth_kind_and_units_are_named(tmp_path, data, capsys):
  relative_as_depth = tg.build(tmp_path / "a.onnx", H, W, card_overrides={
      "outputs": {"depth": {"kind": "depth_relative"}}})
  err = _cli(capsys, _config(data), tmp_path / "o1", teacher=relative_as_depth, only="depth")
  assert_one_error_line(err, "'depth_relative' looks wrong", "inverse_depth_relative")
  inverse_as_metres = tg.build(tmp_path / "b.onnx", H, W, card_overrides={
      "outputs": {"depth": {"kind": "depth_metric"}}})
  err = _cli(capsys, _config(data), tmp_path / "o2", teacher=inverse_as_metres, only="depth")
  assert_one_error_line(err, "inverse depth, not metres")
  millimetres = tg.build(tmp_path / "c.onnx", H, W, metric=True, depth_scale=1000.0)
  err = _cli(capsys, _config(data), tmp_path / "o3", teacher=millimetres, only="depth")
  assert_one_error_line(err, "(millimetres?)", "not metres")


def test_relative_teacher_without_any_metric_depth_stops(tmp_path, graph, capsys):
  root = _write_folder(tmp_path / "d", num=3, metric=())
  err = _cli(capsys, _config(root), tmp_path / "out", teacher=graph, only="depth")
  assert_one_error_line(err, "no training frame has metric depth", "inverse_depth_relative",
                        "--depth-relative-ok")
  assert not (tmp_path / "out").exists()


def test_depth_relative_ok_writes_relative_labels_that_training_scores_with_ssi(tmp_path, graph,
                                                                             capsys):
  from hydrajax.data import pipeline, sources
  from hydrajax.train import loop as train_lib, losses
  from tests.helpers.configs import tiny_config

  root = _write_folder(tmp_path / "d", num=4, metric=())
  out = tmp_path / "out"
  counts = distill.run(_config(root), str(out), teacher=graph, only="depth",
                       depth_relative_ok=True, progress=False)
  assert counts["depth"] == 4 and counts["relative_depth"] == "inverse_depth"
  assert "relative labels (affine in inverse depth" in capsys.readouterr().out
  assert json.loads((out / "teacher.json").read_text())["relative_depth"] == "inverse_depth"
  assert not (out / "depth_fit.json").exists()
  for i in range(4):
    label = pngio.read_depth(str(out / "depth" / f"train__{i:03d}.png"), 256.0, (H, W))
    inverse = 1.0 / tg.true_depth(_image(root, i))
    scale, shift = teacher_targets.robust_affine_fit(inverse.ravel(), label.ravel())
    # The teacher is 2 / d + 0.3 mapped onto [1, 255]: affine in 1 / d up to the PNG's
    # 1/256 steps (0.002 of a label, far below the labels' spread of ~250).
    assert scale > 0 and np.abs(scale * inverse + shift - label).max() < 0.01
  config = tiny_config(dataset="folder", data_dir=str(root), teacher_dir=str(out),
                       batch_size=4, crop_size=(H, W), scale_range=(1.0, 1.0))
  config.folder = _config(root).folder
  batch = next(iter(pipeline.train_dataset(
      sources.build_source(config, "train"), global_batch_size=4, crop_size=(H, W),
      scale_range=(1.0, 1.0), process=(0, 1))))
  assert batch["depth_relative"].tolist() == [losses.RELATIVE_INVERSE_DEPTH] * 4
  assert (batch["depth"] > 0).all()
  # A few steps of the training step (its loss terms, optimizer and state update) on a
  # stand-in network (compiling HydraNet for a new batch layout would cost more than the
  # test): the relative labels are scored and the scale-and-shift-invariant loss falls.
  model = _StandIn()
  tx = train_lib.make_optimizer(tiny_config(lr_decoder=0.1, momentum=0.0, schedule="constant"))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, H, W, 3)))["params"]
  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                               opt_state=tx.init(params), nonfinite_step=jnp.full((), -1))
  step = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx, freeze_bn=True,
                                   sync_bn=False, axis_name=None))
  device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
  first = None
  for _ in range(10):
    state, metrics = step(state, device_batch, {"depth": 1.0})
    first = float(metrics["loss_depth"]) if first is None else first
  # In the normalised units of the invariant loss (a standardised target: at most ~1 for
  # any prediction); berHu on the labels' 1..255 would be far above. The stand-in (linear
  # in the image) fits 1 / depth only roughly: 0.84 -> 0.71 in 10 steps.
  assert first < 1.2, first
  assert 0 < float(metrics["loss_depth"]) < 0.9 * first, (first, float(metrics["loss_depth"]))


def test_relative_labels_are_refused_into_a_directory_of_metric_ones(tmp_path, graph, labelled,
                                                                    capsys):
  _, out = labelled  # metric depth labels (the teacher fitted to metres)
  root = _write_folder(tmp_path / "d", num=2, metric=())
  err = _cli(capsys, _config(root), out, teacher=graph, only="depth", depth_relative_ok=True)
  assert_one_error_line(err, str(out / "teacher.json"), "metric, not relative")
  assert "relative_depth" not in json.loads((out / "teacher.json").read_text())


class _StandIn(nn.Module):
  """Depth from a 1x1 conv of the image, HydraNet's output contract at full resolution (the
  frames' depth changes from pixel to pixel)."""
  align_corners: bool = False
  impl: str = "native"

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return {"depth": nn.Conv(1, (1, 1))(x)[..., 0]}


def test_graph_without_card_and_class_map_errors_name_the_fix(tmp_path, data, capsys):
  bare = tg.build(tmp_path / "bare.onnx", H, W, with_card=False)
  err = _cli(capsys, _config(data), tmp_path / "out", teacher=bare)
  assert_one_error_line(err, "no card in its metadata", "--teacher-card")
  graph = tg.build(tmp_path / "t.onnx", H, W)
  err = _cli(capsys, _config(data), tmp_path / "out", teacher=graph)
  assert_one_error_line(err, "pass --class-map")
  bad_map = tmp_path / "map.json"
  bad_map.write_text(json.dumps({"t3": "sofa"}))
  err = _cli(capsys, _config(data), tmp_path / "out", teacher=graph, class_map=str(bad_map))
  assert_one_error_line(err, str(bad_map), "'t3' -> 'sofa'", "not a class of the dataset")


def _write_sparse_folder(root):
  """20 training frames of 64x96 (tiny_config's size) whose colours encode their truth (class
  j as teacher class 30 j + 4, apart in colour for a student of few steps):
  segmentation on 2 of them (showing 2 of the 5 classes), metric depth on 2 others (near
  depths only); 4 validation frames with both labels over all classes and depths."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 20), ("val", 4)):
    for d in ("images", "segm", "depth"):
      os.makedirs(root / split / d)
    for i in range(n):
      segm_frame, depth_frame = split == "train" and i in (0, 1), split == "train" and i in (2, 3)
      classes = [30 * j + 4 for j in ((0, 1) if segm_frame else range(5))]
      image = tg.frame(rng, 64, 96, classes, red=(0, 80) if depth_frame else (0, 256),
                       pixel_depth=False)
      image[..., 2] = 255  # a sharp teacher: no pixel below the confidence threshold
      Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
      if split == "val" or segm_frame:
        segm = ((image[..., 1].astype(np.int64) - 4) // 30).astype(np.uint8)
        Image.fromarray(segm).save(root / split / "segm" / f"{i:03d}.png")
      if split == "val" or depth_frame:
        np.save(root / split / "depth" / f"{i:03d}.npy", tg.true_depth(image).astype(np.float32))
  (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
  return root


# The two 40-step runs of the test below, in a process of their own: the suite's XLA settings
# (tests/conftest.py) compile fast but run a step about 5x slower than XLA's optimising
# backend, which over 80 steps costs more than its slower compile saves.
_TRAIN_ALONE_AND_TAUGHT = """
import json, sys
import ml_collections
from hydrajax.train import loop as train_lib
from tests.helpers.configs import tiny_config
data, labels, work = sys.argv[1:]
def run(name, teacher_dir):
  config = tiny_config(num_train_steps=40, checkpoint_every_steps=40, dataset="folder",
                       data_dir=data, teacher_dir=teacher_dir)
  config.folder = ml_collections.ConfigDict({"depth_scale": 1000.0, "val_fraction": 0.1,
                                             "split_seed": 0, "skip_bad": False})
  result = train_lib.train_and_evaluate(config, f"{work}/{name}")
  return {k: result[k] for k in ("miou", "rmse")}
print(json.dumps({"alone": run("alone", ""), "taught": run("taught", labels)}))
"""


def test_teacher_labels_from_the_command_line_beat_training_on_the_few_real_ones(tmp_path):
  import subprocess
  import sys

  from tests.helpers.configs import ROOT

  data = _write_sparse_folder(tmp_path / "data")
  graph = tg.build(tmp_path / "t.onnx", 64, 96)
  class_map = tmp_path / "map.json"
  class_map.write_text(json.dumps({f"t{30 * j + r}": name for j, name in enumerate(CLASSES)
                                   for r in range(30)}))
  labels = tmp_path / "labels"
  done = subprocess.run(
      [sys.executable, "-m", "hydrajax", "distill", "--config", f"{ROOT}/configs/folder.py",
       f"--config.data_dir={data}", "--teacher", graph, "--class-map", str(class_map),
       "--min-confidence", "0.5", "--out", str(labels)],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "wrote 18 segm and 18 depth labels for 20 samples" in done.stdout
  assert "18 frame(s) on the dataset fit" in done.stdout

  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=1",
         "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
  runs = subprocess.run(
      [sys.executable, "-c", _TRAIN_ALONE_AND_TAUGHT, str(data), str(labels), str(tmp_path)],
      capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
  assert runs.returncode == 0, runs.stderr[-3000:]
  result = json.loads(runs.stdout.strip().splitlines()[-1])
  alone, taught = result["alone"], result["taught"]
  # Alone, the student never sees 3 of the 5 classes nor a far depth: the teacher's labels
  # of the other 18 frames must show in both metrics.
  assert taught["miou"] > alone["miou"] + 0.005, (taught["miou"], alone["miou"])
  assert taught["rmse"] < 0.8 * alone["rmse"], (taught["rmse"], alone["rmse"])
