"""hydrajax-demo: the page's logic on its own, and the served page driven by headless Chromium
(an uploaded NYUD frame, a bad upload, and Chromium's fake webcam fed from the sample frames).

The model is random (hydrajax.init) with its two heads rescaled on the NYUD frame so that its
labels and depth vary across the picture: a check that the page shows the network's labels
then compares many classes, not one. HYDRAJAX_DEMO_SCREENSHOT=PATH saves the page's picture
(docs/demo_page.png is made that way)."""
import io
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import jax
import numpy as np
import plyfile
import pytest
from PIL import Image

import hydrajax
from hydrajax.inference import camera, demo, visualize
from tests.helpers import onnx_graphs
from tests.helpers.cli import assert_one_error_line
from tests.helpers.samples import KITTI, NYUD

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SIZE = (96, 128)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def lively(variables, image):
  """Rescale the segm and depth heads' last convs so that, on `image`, every class logit
  has mean 0 and std 1 over the pixels and depth has mean 2.5 m and std 0.8 m."""
  model = hydrajax.model_from_variables(variables)
  raw = jax.jit(lambda v, x: model.apply(v, hydrajax.normalize(x), train=False))(
      variables, np.asarray(image)[None])
  logits = np.asarray(raw["segm"], np.float64).reshape(-1, raw["segm"].shape[-1])
  mean, std = logits.mean(0), logits.std(0) + 1e-12
  depth = np.asarray(raw["depth"], np.float64)
  d_mean, d_gain = depth.mean(), 0.8 / (depth.std() + 1e-12)
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  segm, dep = params["head_segm"]["segm"], params["head_depth"]["depth"]
  segm["kernel"] = (segm["kernel"] / std).astype(np.float32)
  segm["bias"] = ((segm["bias"] - mean) / std).astype(np.float32)
  dep["kernel"] = (dep["kernel"] * d_gain).astype(np.float32)
  dep["bias"] = ((dep["bias"] - d_mean) * d_gain + 2.5).astype(np.float32)
  return {"params": params, "batch_stats": variables["batch_stats"]}


def _nyud_small():
  return demo.resize_to(np.asarray(Image.open(NYUD).convert("RGB")), SIZE)


@pytest.fixture(scope="module")
def model():
  return lively(hydrajax.init(0, num_classes=40), _nyud_small())


@pytest.fixture(scope="module")
def page_logic(model, tmp_path_factory):
  return demo.Demo(model, size=SIZE, workdir=str(tmp_path_factory.mktemp("demo")))


def decode_overlay(overlay, image, palette, alpha=demo.OVERLAY_ALPHA):
  """The class ids whose blend over `image` gives `overlay` (nearest over the palette)."""
  blends = np.round(alpha * palette[:, None, None].astype(np.float32)
                    + (1 - alpha) * image[None].astype(np.float32))
  return np.abs(blends - overlay[None]).sum(-1).argmin(0)


def test_page_outputs_show_the_networks_labels_depth_and_points(page_logic, model):
  image = np.asarray(Image.open(NYUD).convert("RGB"))
  out = page_logic.process(image)
  want = np.asarray(hydrajax.apply(model, _nyud_small())["segm"]).argmax(-1)
  assert len(np.unique(want)) > 10  # the rescaled heads give many classes
  labels = decode_overlay(out["overlay"], _nyud_small(), page_logic.palette)
  np.testing.assert_array_equal(labels, want)
  assert out["depth"].shape[0] == SIZE[0] and out["depth"].shape[1] > SIZE[1]
  v = plyfile.PlyData.read(out["ply"])["vertex"]
  assert v.count == (SIZE[0] // 2) * (SIZE[1] // 2)
  np.testing.assert_array_equal(v["label"], want[::2, ::2].ravel())
  assert 0.5 < np.median(v["z"]) < 5  # metres
  largest = np.bincount(want.ravel()).argmax()
  assert demo.class_names(model, 40)[largest] in out["legend"]


def test_webcam_smoothing_averages_depth_over_frames(page_logic):
  first = np.asarray(Image.open(NYUD).convert("RGB"))
  second = first[:, ::-1].copy()  # the scene mirrored: other depths at each pixel
  d1, d2 = (page_logic.process(x)["frame"].depth for x in (first, second))
  smoother = camera.Smoother(0.5)
  page_logic.process(first, smoother)
  smoothed = page_logic.process(second, smoother)["frame"].depth
  np.testing.assert_allclose(smoothed, 0.5 * d1 + 0.5 * d2, rtol=1e-5)
  assert not np.allclose(smoothed, d2)


def test_page_runs_an_exported_onnx_graph_at_its_size(model, tmp_path):
  """--onnx: the graph's own input size, the labels of hydrajax.apply (float graph)."""
  from hydrajax.export import cli as export
  from hydrajax.inference import onnx_runner
  path = tmp_path / "m.onnx"
  path.write_bytes(export.export_onnx(model, 64, 96))
  page = demo.Demo(onnx_runner.OnnxModel(path), workdir=str(tmp_path))
  assert page.engine.size == (64, 96)
  image = np.asarray(Image.open(NYUD).convert("RGB"))
  out = page.process(image)
  small = demo.resize_to(image, (64, 96))
  want = np.asarray(hydrajax.apply(model, small)["segm"]).argmax(-1)
  assert np.mean(decode_overlay(out["overlay"], small, page.palette) == want) > 0.99
  assert "NYUDv2 Kinect" in out["camera"] and "NYUDv2 Kinect" in page.status(out, None, 1)


def test_bad_uploads_raise_input_errors_naming_the_file(tmp_path):
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  with pytest.raises(demo.InputError, match="^notes.png: not a readable image"):
    demo.read_upload(str(text))
  with pytest.raises(demo.InputError, match=r"^000464_rgb.png: 640x480 = 307200 pixels, above "
                                            r"the limit of 307199"):
    demo.read_upload(NYUD, max_pixels=640 * 480 - 1)
  with pytest.raises(demo.InputError, match="no image"):
    demo.read_upload(None)


def test_depth_panel_has_a_metre_scale_beside_the_colour_map():
  depth = np.linspace(0, 8, 64 * 80).reshape(64, 80)
  panel = demo.depth_panel(depth, 8.0)
  np.testing.assert_array_equal(panel[:, :80], visualize.colorize_depth(depth, 8.0))
  bar = panel[:, 86:86 + 16]
  # The bar runs from the 0 m colour at the top to the 8 m colour at the bottom.
  np.testing.assert_array_equal(bar[0, 0], visualize.colorize_depth(np.zeros(1), 8.0)[0])
  np.testing.assert_array_equal(bar[-1, 0], visualize.colorize_depth(np.full(1, 8.0), 8.0)[0])
  assert (panel[:, 86 + 16:] < 128).any()  # tick labels drawn in black


def test_demo_refuses_a_model_without_depth():
  with pytest.raises(ValueError, match="lack"):
    demo.Engine(hydrajax.init(0, num_classes=40, tasks=("segm",)), SIZE)


# --- sessions, files, limits and launching, on a tiny ONNX graph (no network to compile) ------

@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
  return onnx_graphs.graph_file(tmp_path_factory.mktemp("graph") / "tiny.onnx", 16, 24)


def _tiny_page(tiny_graph, **kw):
  from hydrajax.inference import onnx_runner
  return demo.Demo(onnx_runner.OnnxModel(tiny_graph), **kw)


def _frame(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_two_tabs_see_their_own_intrinsics_and_point_cloud_files(tiny_graph, tmp_path):
  page = _tiny_page(tiny_graph, fov=60.0, workdir=str(tmp_path))
  wide = page.process(_frame(48, 64))
  tall = page.process(_frame(64, 48))  # another tab's frame, processed after
  assert wide["camera"] != tall["camera"]
  assert wide["camera"] in page.status(wide, None, 1)  # not the latest choice (tall's)
  assert tall["camera"] not in page.status(wide, None, 1)
  paths = [wide["ply"], tall["ply"]] + [page.process(_frame(48, 64))["ply"] for _ in range(4)]
  assert len(set(paths)) == 6 and all(os.path.isfile(p) for p in paths)


def test_a_session_keeps_only_the_cloud_it_shows(tiny_graph, tmp_path):
  page = _tiny_page(tiny_graph, workdir=str(tmp_path))
  image = tmp_path / "photo.png"
  Image.fromarray(_frame(30, 40)).save(image)
  first, _, session = page.upload(str(image), None)
  second, status, same = page.upload(str(image), session)
  assert same is session and session.ply == second["ply"] != first["ply"]
  assert not os.path.exists(first["ply"]) and os.path.isfile(second["ply"])
  assert 'id="hj-status"' in status
  session.close()  # as Gradio's delete_callback does when the tab's state is deleted
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".ply")]


def test_webcam_writes_a_cloud_only_for_the_frames_the_page_shows(tiny_graph, tmp_path):
  page = _tiny_page(tiny_graph, workdir=str(tmp_path))
  session, written = None, []
  for i in range(2 * demo.CLOUD_EVERY + 1):
    out, _, session = page.webcam_frame(_frame(24, 32, i), 0.0, session)
    written.append(out["ply"] is not None)
  assert [i + 1 for i, w in enumerate(written) if w] == [1, demo.CLOUD_EVERY + 1,
                                                         2 * demo.CLOUD_EVERY + 1]
  assert os.listdir(tmp_path) == [os.path.basename(session.ply)]


def test_webcam_frames_above_max_pixels_get_a_message(tiny_graph, tmp_path):
  page = _tiny_page(tiny_graph, workdir=str(tmp_path), max_pixels=1000)
  out, message, session = page.webcam_frame(_frame(40, 40), 0.0, None)
  assert out is None and "hj-error" in message
  assert "40x40 frame (1600 pixels) is above --max-pixels 1000" in message
  assert page.webcam_frame(_frame(20, 40), 0.0, session)[0] is not None
  with pytest.raises(ValueError, match="--max-pixels must be >= 1, got 0"):
    _tiny_page(tiny_graph, max_pixels=0)


def test_the_work_folder_is_removed_at_close_and_a_given_one_kept(tiny_graph, tmp_path):
  page = _tiny_page(tiny_graph)
  page.process(_frame(16, 24))
  assert os.listdir(page.workdir)
  page.close()
  assert not os.path.exists(page.workdir)
  given = _tiny_page(tiny_graph, workdir=str(tmp_path))
  given.process(_frame(16, 24))
  given.close()
  assert os.listdir(tmp_path)


def test_gradio_cache_is_trimmed_and_each_handler_has_its_own_state(tiny_graph, tmp_path):
  import gradio as gr
  blocks = demo.build(_tiny_page(tiny_graph, workdir=str(tmp_path)))
  assert blocks.delete_cache == demo.DELETE_CACHE
  states = [b for b in blocks.blocks.values() if isinstance(b, gr.State)]
  assert len(states) == 2 and all(s.delete_callback is not None for s in states)
  inputs = [{b._id for b in fn.inputs} for fn in blocks.fns.values()]
  assert all(sum(s._id in ids for s in states) == 1 for ids in inputs)


@pytest.fixture
def launched(monkeypatch):
  gradio = pytest.importorskip("gradio")
  calls = []
  monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kw: calls.append(kw))
  for name in ("GRADIO_SHARE", "KAGGLE_KERNEL_RUN_TYPE"):
    monkeypatch.delenv(name, raising=False)
  return calls


@pytest.mark.parametrize("variable, value, said", [("GRADIO_SHARE", "true", "GRADIO_SHARE=true"),
                                                   ("KAGGLE_KERNEL_RUN_TYPE", "Interactive",
                                                    "Kaggle")])
def test_launch_never_shares_unless_given_share_and_says_so(variable, value, said, tiny_graph,
                                                           launched, monkeypatch, capsys):
  monkeypatch.setenv(variable, value)
  assert demo.main(["--onnx", tiny_graph]) == 0
  assert launched[-1]["share"] is False and launched[-1]["server_name"] == "127.0.0.1"
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and said in err[0] and "--share" in err[0]
  assert demo.main(["--onnx", tiny_graph, "--share"]) == 0
  assert launched[-1]["share"] is True and not capsys.readouterr().err


def test_launch_without_share_settings_says_nothing(tiny_graph, launched, capsys):
  assert demo.main(["--onnx", tiny_graph]) == 0
  assert launched[-1]["share"] is False and not capsys.readouterr().err


def test_max_pixels_below_one_is_refused_in_one_line(tiny_graph, launched, capsys):
  assert demo.main(["--onnx", tiny_graph, "--max-pixels", "0"]) == 2
  assert_one_error_line(capsys.readouterr().err, "--max-pixels must be >= 1, got 0")
  assert not launched


def test_graph_above_max_pixels_is_refused_before_serving(tmp_path, launched, capsys):
  path = onnx_graphs.graph_file(tmp_path / "big.onnx", 16, 24)
  assert demo.main(["--onnx", path, "--max-pixels", str(16 * 24 - 1)]) == 2
  assert_one_error_line(capsys.readouterr().err, path, f"above the limit of {16 * 24 - 1}")
  assert not launched


# --- the served page in a real browser -------------------------------------------------------

def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(page_logic):
  if not os.path.exists(CHROMIUM):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
  pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
  page_logic.engine(_nyud_small())  # compile before the browser waits on it
  blocks = demo.build(page_logic, stream_every=0.1)
  port = _free_port()
  blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True)
  yield f"http://127.0.0.1:{port}/"
  blocks.close()


@pytest.fixture(scope="module")
def playwright():
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    yield p


def _browser(playwright, tmp_path, extra_args=()):
  context = playwright.chromium.launch_persistent_context(
      str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
      args=CHROMIUM_ARGS + list(extra_args), viewport={"width": 1280, "height": 860})
  # Nothing leaves the machine: every request that is not to the local server fails.
  context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
      ("http://127.0.0.1", "data:", "blob:")) else route.abort())
  return context


def _fetch(url):
  """The bytes the page shows at `url` (on the local server), read over plain HTTP."""
  with urllib.request.urlopen(url, timeout=20) as response:
    return response.read()


def _fetch_png(page, locator):
  return np.asarray(Image.open(io.BytesIO(_fetch(
      page.locator(locator).first.get_attribute("src")))))


def test_browser_upload_shows_labels_equal_to_apply_depth_and_3d(server, playwright, model,
                                                                 page_logic, tmp_path):
  context = _browser(playwright, tmp_path)
  try:
    page = context.new_page()
    page.goto(server)
    page.set_input_files("#hj-upload input[type=file]", NYUD)
    page.wait_for_selector("#hj-status", timeout=30000)
    overlay = _fetch_png(page, "#hj-segm img")
    want = np.asarray(hydrajax.apply(model, _nyud_small())["segm"]).argmax(-1)
    np.testing.assert_array_equal(decode_overlay(overlay[..., :3], _nyud_small(),
                                                 page_logic.palette), want)
    depth = _fetch_png(page, "#hj-depth img")
    assert depth.shape[0] == SIZE[0] and depth.shape[1] > SIZE[1]
    legend = page.inner_text("#hj-legend")
    assert demo.class_names(model, 40)[np.bincount(want.ravel()).argmax()] in legend
    assert "NYUDv2 Kinect" in page.inner_text("#hj-status-box")
    # The 3D view: the PLY it loaded holds the labelled points, and its canvas is drawn.
    href = page.locator("#hj-3d a[download]").first.get_attribute("href")
    assert href.endswith(".ply")
    ply = plyfile.PlyData.read(io.BytesIO(_fetch(href)))
    np.testing.assert_array_equal(ply["vertex"]["label"], want[::2, ::2].ravel())
    page.wait_for_selector("#hj-3d canvas", timeout=20000)
    colours, deadline = 0, time.monotonic() + 30
    while colours <= 20 and time.monotonic() < deadline:  # until Babylon has drawn the points
      page.wait_for_timeout(500)
      canvas = np.asarray(Image.open(io.BytesIO(
          page.locator("#hj-3d canvas").first.screenshot())).convert("RGB"))
      colours = len(np.unique(canvas.reshape(-1, 3), axis=0))
    assert colours > 20, "the 3D view drew no points in class colours"
    page.wait_for_timeout(1000)  # the last points settle before the page's picture
    shot = tmp_path / "demo_page.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HYDRAJAX_DEMO_SCREENSHOT"):
      shutil.copy(shot, os.environ["HYDRAJAX_DEMO_SCREENSHOT"])
  finally:
    context.close()


def test_browser_bad_upload_shows_a_message_and_the_server_keeps_serving(server, playwright,
                                                                         tmp_path):
  bad = tmp_path / "holiday.jpg"
  bad.write_bytes(b"\x00" * 1000)
  context = _browser(playwright, tmp_path)
  try:
    page = context.new_page()
    page.goto(server)
    page.set_input_files("#hj-upload input[type=file]", str(bad))
    page.wait_for_selector("#hj-error", timeout=30000)
    assert "holiday.jpg: not a readable image" in page.inner_text("#hj-error")
    page.goto(server)
    page.set_input_files("#hj-upload input[type=file]", NYUD)
    page.wait_for_selector("#hj-status", timeout=30000)
  finally:
    context.close()


def _fake_camera_file(path):
  """A y4m video of the NYUD and KITTI frames (ffmpeg from imageio-ffmpeg encodes it)."""
  import imageio_ffmpeg
  frames = [np.asarray(Image.open(p).convert("RGB").resize((320, 240))) for p in (NYUD, KITTI)]
  raw = b"".join(f.tobytes() for f in frames for _ in range(5))
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
                  "-pix_fmt", "rgb24", "-s", "320x240", "-r", "10", "-i", "-",
                  "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", str(path)], input=raw, check=True)


def test_browser_fake_webcam_frames_are_processed(server, playwright, tmp_path):
  video = tmp_path / "camera.y4m"
  _fake_camera_file(video)
  context = _browser(playwright, tmp_path, ["--use-fake-device-for-media-stream",
                                            "--use-fake-ui-for-media-stream",
                                            f"--use-file-for-fake-video-capture={video}"])
  try:
    page = context.new_page()
    page.goto(server)
    page.get_by_role("tab", name="Webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    smoothing = page.locator("#hj-smooth input[type=number]")
    smoothing.fill("0.5")
    smoothing.press("Enter")
    page.locator("#hj-webcam button").filter(has_text="Record").first.click()
    deadline = time.monotonic() + 40
    frames = 0
    while time.monotonic() < deadline and frames < 5:
      page.wait_for_timeout(500)
      status = page.locator("#hj-status")
      frames = int(status.get_attribute("data-frames")) if status.count() else 0
    assert frames >= 5, f"only {frames} webcam frames were processed"
    status = page.inner_text("#hj-status-box")
    assert "frames/s" in status and "smoothing 0.5" in status
    assert _fetch_png(page, "#hj-segm img").shape[:2] == SIZE
  finally:
    context.close()
