"""Hostile and odd image files through `pngio.load_rgb` and `python -m hydrajax.inference.predict`:
each bad file is refused by name (quickly, before decoding when the header is enough), the
other images are still predicted and the exit status is 1; odd but valid modes (palette, CMYK,
grey, 16-bit, EXIF-rotated) arrive as the RGB a viewer shows."""
import io
import struct
import time
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

import hydrajax
from hydrajax.data import pngio
from hydrajax.inference import demo, full_res, predict

H, W = 48, 64


def _chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack(">I", len(data)) + kind + data
          + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(path, width=14000, height=14000):
  """A tiny PNG whose header claims width x height grey pixels (a few dozen bytes)."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                   + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b""))
  return path


def broken_idat_png(path, seed=0):
  """A valid-looking RGB PNG whose second IDAT chunk has a bad checksum."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (H, W, 3), np.uint8)
  raw = b"".join(b"\0" + row.tobytes() for row in pixels)
  data = zlib.compress(raw)
  half = len(data) // 2
  second = _chunk(b"IDAT", data[half:])
  second = second[:10] + bytes([second[10] ^ 0xFF]) + second[11:]  # flip a data byte
  ihdr = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data[:half])
                   + second + _chunk(b"IEND", b""))
  return path


def good_png(path, seed=1):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (H, W, 3), np.uint8)
  Image.fromarray(image).save(path)
  return path, image


def test_header_claiming_14000x14000_is_refused_unread_and_fast(tmp_path):
  path = bomb_png(tmp_path / "bomb.png")
  assert path.stat().st_size < 100
  start = time.thread_time()  # CPU time: another worker's load on the shared cores is not ours
  with pytest.raises(ValueError, match=r"bomb.png: (14000x14000|too many pixels)"):
    pngio.load_rgb(path)
  assert time.thread_time() - start < 1.0


def test_max_pixels_refuses_a_valid_image_naming_the_limit(tmp_path):
  path, image = good_png(tmp_path / "big.png")
  with pytest.raises(ValueError, match=rf"big.png: {W}x{H} = {W * H} pixels, above the limit "
                                       "of 1000"):
    pngio.load_rgb(path, max_pixels=1000)
  np.testing.assert_array_equal(pngio.load_rgb(path, max_pixels=W * H), image)


def test_broken_later_idat_chunk_is_a_named_error_not_a_syntax_error(tmp_path):
  path = broken_idat_png(tmp_path / "broken.png")
  with pytest.raises(ValueError, match="broken.png: not a readable image"):
    pngio.load_rgb(path)
  good, image = good_png(tmp_path / "good.png")  # the process still reads good files exactly
  np.testing.assert_array_equal(pngio.load_rgb(good), image)


def eps_payload(path):
  """PostScript (an EPS header, then a loop that never ends) under an image's name."""
  path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n{} loop\n%%EOF\n")
  return path


@pytest.mark.parametrize("read", [pngio.load_rgb, pngio.read_png, pngio.read_rgb,
                                  predict.load_image, demo.read_upload],
                         ids=lambda f: f.__name__)
def test_postscript_named_png_is_refused_without_running_ghostscript(read, tmp_path,
                                                                     monkeypatch):
  from PIL import EpsImagePlugin
  ran = []

  def ghostscript(*args, **kwargs):  # Pillow's EPS loader hands the file to this
    ran.append(args)
    raise OSError("Ghostscript ran")

  monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
  path = eps_payload(tmp_path / "upload.png")
  with pytest.raises(ValueError, match=r"(upload.png: not a readable image|cannot decode "
                                       r".*upload.png:).*PNG, JPEG"):
    read(str(path))
  assert not ran


def test_reading_leaves_pillows_process_wide_pixel_limit_alone(tmp_path, monkeypatch):
  path, image = good_png(tmp_path / "good.png")
  for limit in (W * H // 2, Image.MAX_IMAGE_PIXELS):  # an application's own, then Pillow's
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    np.testing.assert_array_equal(pngio.load_rgb(path, max_pixels=W * H), image)
    pngio.load_rgb(path)  # hydrajax's default limit, above Pillow's default
    with pytest.raises(ValueError, match="above the limit of 1000"):
      pngio.read_png(str(path), max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_no_module_assigns_pillows_pixel_limit():
  """Importing hydrajax changes nothing of Pillow's either: no module assigns the limit."""
  import ast
  import pathlib
  package = pathlib.Path(pngio.__file__).resolve().parents[1]
  assigned = [f"{p.relative_to(package.parent)}:{node.lineno}"
              for p in package.rglob("*.py")
              for node in ast.walk(ast.parse(p.read_text()))
              if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
              for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
              if isinstance(t, ast.Attribute) and t.attr == "MAX_IMAGE_PIXELS"]
  assert not assigned


def test_palette_png_gives_its_colours_not_its_indices(tmp_path):
  palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200]], np.uint8)
  indices = np.random.default_rng(2).integers(0, 3, (H, W)).astype(np.uint8)
  img = Image.fromarray(indices, mode="P")
  img.putpalette(palette.ravel().tolist())
  img.save(tmp_path / "pal.png")
  np.testing.assert_array_equal(pngio.load_rgb(tmp_path / "pal.png"), palette[indices])
  np.testing.assert_array_equal(pngio.read_rgb(str(tmp_path / "pal.png")), palette[indices])


def test_cmyk_jpeg_is_converted_not_read_as_its_first_three_channels(tmp_path):
  cmyk = np.zeros((H, W, 4), np.uint8)
  cmyk[..., 0] = 255  # pure cyan: RGB (0, 255, 255)
  Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cyan.jpg", quality=95)
  rgb = pngio.load_rgb(tmp_path / "cyan.jpg").astype(int)
  assert rgb.shape == (H, W, 3)
  np.testing.assert_allclose(rgb.mean(axis=(0, 1)), [0, 255, 255], atol=3)


def test_16bit_grey_is_scaled_not_wrapped_or_saturated(tmp_path):
  ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
  Image.fromarray(ramp).save(tmp_path / "deep.png")
  rgb = pngio.load_rgb(tmp_path / "deep.png")
  expected = np.round(ramp / 257.0).astype(np.uint8)
  np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, -1))
  assert abs(rgb.mean() - 127.5) < 1.0  # wrapping or saturating moves the mean far away


def test_grey_and_grey_alpha_become_three_equal_channels(tmp_path):
  grey = np.random.default_rng(3).integers(0, 256, (H, W), np.uint8)
  Image.fromarray(grey).save(tmp_path / "l.png")
  Image.fromarray(np.stack([grey, np.full_like(grey, 9)], -1), mode="LA").save(tmp_path / "la.png")
  for name in ("l.png", "la.png"):
    np.testing.assert_array_equal(pngio.load_rgb(tmp_path / name),
                                  np.repeat(grey[..., None], 3, -1))


def test_exif_orientation_is_applied(tmp_path):
  _, image = good_png(tmp_path / "unused.png")
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  Image.fromarray(image).save(tmp_path / "phone.png", exif=exif)
  upright = pngio.load_rgb(tmp_path / "phone.png")
  np.testing.assert_array_equal(upright, np.rot90(image, k=-1))


def test_cli_names_each_bad_image_processes_the_rest_exits_1(weights_file, tmp_path, capsys):
  bomb = bomb_png(tmp_path / "bomb.png")
  broken = broken_idat_png(tmp_path / "broken.png")
  good, _ = good_png(tmp_path / "good.png")
  start = time.perf_counter()
  code = predict.main(["--weights", weights_file, str(bomb), str(broken), str(good),
                       "--out", str(tmp_path / "out"), "--no-progress"])
  err = capsys.readouterr().err
  assert code == 1
  failed = [line for line in err.splitlines() if line.startswith("failed: ")]
  assert len(failed) == 2 and "Traceback" not in err
  assert str(bomb) in failed[0] and str(broken) in failed[1]
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "good_depth.png", "good_segm.png", "good_vis.png"]
  assert time.perf_counter() - start < 120  # compiles the network once


def test_cli_max_pixels_option_is_applied_and_checked(weights_file, tmp_path, capsys):
  good, _ = good_png(tmp_path / "good.png")
  code = predict.main(["--weights", weights_file, str(good), "--max-pixels", "100",
                       "--out", str(tmp_path / "out"), "--no-progress"])
  assert code == 1
  assert f"failed: {good}: {W}x{H} = {W * H} pixels, above the limit of 100" in (
      capsys.readouterr().err)
  code = predict.main(["--weights", weights_file, str(good), "--max-pixels", "0",
                       "--out", str(tmp_path / "out2"), "--no-progress"])
  assert code == 2
  assert "--max-pixels must be >= 1, got 0" in capsys.readouterr().err
  assert not (tmp_path / "out2").exists()


def test_out_of_memory_names_the_image_and_its_size_and_goes_on(variables, tmp_path,
                                                                 monkeypatch):
  big, _ = good_png(tmp_path / "big.png")
  other, _ = good_png(tmp_path / "other.png", seed=5)
  real, calls = full_res._raw_outputs, []

  def raw_outputs(net_vars, image, **kw):  # XLA's error for the first image only
    calls.append(image.shape)
    if len(calls) == 1:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.3GiB")
    return real(net_vars, image, **kw)

  monkeypatch.setattr(full_res, "_raw_outputs", raw_outputs)
  report = predict.predict_files(variables, [big, other], tmp_path / "out", progress=False,
                                 max_side=W // 2)
  assert report.failed == {str(big): f"{big}: out of memory for a {W}x{H} image (network "
                                     f"input {W // 2}x{H // 2}); lower --max-side"}
  assert list(report.written) == [str(other)]


def test_out_of_memory_is_told_apart_from_other_errors_of_python_xla_and_onnxruntime():
  assert full_res.is_out_of_memory(MemoryError())
  assert full_res.is_out_of_memory(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"))
  assert not full_res.is_out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: x"))
  assert not full_res.is_out_of_memory(ValueError("RESOURCE_EXHAUSTED"))
  from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException
  assert full_res.is_out_of_memory(RuntimeException(
      "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
      "Conv node. Status Message: Failed to allocate memory for requested buffer of size 1e9"))
  assert not full_res.is_out_of_memory(Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed"))
  assert not full_res.is_out_of_memory(RuntimeError("Failed to allocate memory"))  # not ORT's


def test_every_image_read_goes_through_pngio_open_image():
  """No module opens an image with Image.open, which would let Pillow pick any of its
  formats (PostScript through Ghostscript among them) whatever the file's name."""
  import pathlib
  import re
  package = pathlib.Path(pngio.__file__).resolve().parents[1]
  calls = [f"{p.relative_to(package.parent)}:{i + 1}"
           for p in package.rglob("*.py")
           for i, line in enumerate(p.read_text().splitlines())
           if re.search(r"\bImage\.open\(", line.split("#")[0])
           and not line.lstrip().startswith(("\"", "'")) and p.name != "pngio.py"]
  assert not calls, calls
