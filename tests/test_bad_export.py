"""Bad input to `python -m hydrajax.export.cli`: unusable weights, an output path that cannot
be written and bad sizes each give one `error:` line naming the culprit, exit 2, before
the (slow) export starts, and nothing is written. (Option errors such as --height 0 or an
unknown --format: tests/test_export.py.)"""
import pytest

from hydrajax.export import cli as export
from tests.helpers.cli import assert_one_error_line
from tests.helpers.fabricate import bad_weights


def run(capsys, argv, out):
  base = ["--format", "stablehlo", "--height", "64", "--width", "96", "--out", str(out)]
  try:
    code = export.main(base + argv)
  except SystemExit as e:
    code = e.code
  return code, capsys.readouterr().err


@pytest.fixture
def no_export(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("the export started despite bad input")
  monkeypatch.setattr(export, "export", refuse)


@pytest.mark.parametrize("case", ["text", "truncated", "pytorch", "other-arrays",
                                  "wrong-shape"])
def test_unusable_weights(case, weights_file, no_export, tmp_path, capsys):
  path, words = bad_weights(tmp_path, weights_file)[case]
  code, err = run(capsys, ["--weights", str(path)], tmp_path / "m.bin")
  assert code == 2
  assert_one_error_line(err, path, words)
  assert not (tmp_path / "m.bin").exists()


def test_output_path_is_a_directory(weights_file, no_export, tmp_path, capsys):
  code, err = run(capsys, ["--weights", str(weights_file)], tmp_path)
  assert code == 2
  assert_one_error_line(err, tmp_path, "is a directory")


def test_output_path_under_a_file(weights_file, no_export, tmp_path, capsys):
  (tmp_path / "afile").write_text("x")
  code, err = run(capsys, ["--weights", str(weights_file)], tmp_path / "afile" / "m.bin")
  assert code == 2
  assert_one_error_line(err, tmp_path / "afile", "is a file, not a directory")
  assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("argv,words", [
    (["--width", "-4"], "width must be a positive int (pixels), got -4"),
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--input-dtype", "int8"], "invalid choice: 'int8'"),
])
def test_bad_sizes_and_choices(argv, words, weights_file, no_export, tmp_path,
                               capsys):
  code, err = run(capsys, ["--weights", str(weights_file)] + argv, tmp_path / "m.bin")
  assert code == 2 and words in err and "Traceback" not in err
  assert not (tmp_path / "m.bin").exists()
