"""hydrajax as an installed package: importable and its console scripts runnable from a
directory outside the checkout (needs `pip install -r requirements.txt`, which installs it)."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env():
  """The environment without PYTHONPATH, so only the installed package can be found."""
  return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_import_from_outside_the_checkout_finds_this_checkout(tmp_path):
  out = subprocess.run(
      [sys.executable, "-c", "import hydrajax, configs; print(hydrajax.__file__); "
       "print(configs.__file__); print(hydrajax.__version__)"],
      cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, check=True)
  hydrajax_file, configs_file, version = out.stdout.split()
  assert hydrajax_file == os.path.join(ROOT, "hydrajax", "__init__.py")
  assert configs_file == os.path.join(ROOT, "configs", "__init__.py")
  assert version.count(".") == 2


def _script(name):
  for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
    path = os.path.join(d, name)
    if os.path.isfile(path):
      return path
  return shutil.which(name)


# absl's --help exits with status 1 (its convention); argparse's with 0.
@pytest.mark.parametrize("name,expected,status", [
    ("hydrajax-convert", "PyTorch checkpoint", 0), ("hydrajax-predict", "--weights", 0),
    ("hydrajax-export", "--format", 0), ("hydrajax-distill", "--out", 1),
    ("hydrajax-demo", "--weights", 0)])
def test_console_script_help_runs_outside_the_checkout(tmp_path, name, expected, status):
  path = _script(name)
  assert path is not None, f"{name} is not installed: run `pip install -r requirements.txt`"
  out = subprocess.run([path, "--help"], cwd=tmp_path, env=_clean_env(), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == status, out.stderr
  assert expected in out.stdout, out.stdout
