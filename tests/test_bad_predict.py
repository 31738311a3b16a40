"""Bad input to `python -m hydrajax.inference.predict`: unreadable or mismatched weights, a file for
the output directory, bad options and bad inputs each give one `error:` line naming the
culprit (exit 2, nothing written) or, per image, a named failure (exit 1)."""
import numpy as np
import pytest

from hydrajax.inference import predict
from tests.helpers.cli import assert_one_error_line
from tests.helpers.fabricate import bad_weights
from tests.helpers.samples import NYUD


def run(capsys, argv):
  """main(argv) in process -> (exit code, stderr)."""
  try:
    code = predict.main(argv + ["--no-progress"])
  except SystemExit as e:  # argparse's own usage errors
    code = e.code
  return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["text", "truncated", "pytorch", "other-arrays",
                                  "wrong-shape"])
def test_unusable_weights_one_line_exit_2_nothing_written(case, weights_file, tmp_path,
                                                         capsys):
  path, words = bad_weights(tmp_path, weights_file)[case]
  code, err = run(capsys, ["--weights", str(path), NYUD, "--out", str(tmp_path / "out")])
  assert code == 2
  assert_one_error_line(err, path, words)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,words", [
    (["--max-depth", "-1"], "--max-depth must be a positive number of metres, got -1.0"),
    (["--max-depth", "0"], "--max-depth must be a positive number"),
    (["--max-depth", "nan"], "--max-depth must be a positive number"),
])
def test_bad_options_are_refused_before_loading(extra, words, tmp_path, capsys):
  code, err = run(capsys, ["--weights", str(tmp_path / "never-read.npz"), NYUD,
                           "--out", str(tmp_path / "out")] + extra)
  assert code == 2
  assert_one_error_line(err, words)
  assert not (tmp_path / "out").exists()


def test_output_directory_that_is_a_file(weights_file, tmp_path, capsys):
  out = tmp_path / "out"
  out.write_text("a file")
  code, err = run(capsys, ["--weights", str(weights_file), NYUD, "--out", str(out)])
  assert code == 2
  assert_one_error_line(err, out, "is a file")
  assert out.read_text() == "a file"


def test_directory_given_as_an_image_is_named(weights_file, tmp_path, capsys):
  code, err = run(capsys, ["--weights", str(weights_file), str(tmp_path), "--out",
                           str(tmp_path / "out")])
  assert code == 1
  assert f"failed: {tmp_path}: a directory, not an image file" in err
  assert "Traceback" not in err


@pytest.mark.parametrize("argv,words", [
    (["--video", "{tmp}/missing.mp4", "--out", "{tmp}/o.mp4"], "missing.mp4: no such video"),
    (["--video", "{tmp}/missing.mp4", "--out", "{tmp}/o.mp4", "--batch", "0"],
     "--batch must be >= 1, got 0"),
    (["--video", "{tmp}/v.mp4", NYUD, "--out", "{tmp}/o"], "either --video or images"),
    (["--out", "{tmp}/o"], "no input images given"),
])
def test_bad_video_and_input_combinations(argv, words, weights_file, tmp_path, capsys):
  argv = [a.format(tmp=tmp_path) for a in argv]
  code, err = run(capsys, ["--weights", str(weights_file)] + argv)
  assert code == 2
  assert_one_error_line(err, words)
  assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("meta", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_damaged_weights_meta_is_named(meta, weights_file, tmp_path, capsys):
  with np.load(weights_file) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["__meta__"] = np.frombuffer(meta, np.uint8)
  path = tmp_path / "meta.npz"
  np.savez(path, **arrays)
  code, err = run(capsys, ["--weights", str(path), NYUD, "--out", str(tmp_path / "out")])
  assert code == 2
  assert_one_error_line(err, path, "'__meta__' entry is not")
