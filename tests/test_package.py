"""hydrajax as an installed package and a guest in its user's process: importable from
outside the checkout, installing no other top-level name, changing nothing in the process
on import, and every tool reachable as `hydrajax-NAME` and `python -m hydrajax NAME` (needs
`pip install -r requirements.txt`, which installs it)."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from hydrajax.__main__ import TOOLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env(**extra):
  """The environment without PYTHONPATH (only the installed package can be found) and
  without any allocator setting of hydrajax's or glibc's."""
  drop = ("PYTHONPATH", "GLIBC_TUNABLES", "HYDRAJAX_MALLOC_REUSE", "HYDRAJAX_HUGEPAGES")
  return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def test_import_from_outside_the_checkout_finds_this_checkout_and_no_configs(tmp_path):
  out = subprocess.run(
      [sys.executable, "-c", "import importlib.util, hydrajax; print(hydrajax.__file__); "
       "print(importlib.util.find_spec('configs')); print(hydrajax.__version__)"],
      cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, check=True)
  hydrajax_file, configs_spec, version = out.stdout.split()
  assert hydrajax_file == os.path.join(ROOT, "hydrajax", "__init__.py")
  assert configs_spec == "None"  # the checkout's configs/ is not installed as a package
  assert version.count(".") == 2


def test_the_wheel_installs_no_top_level_name_but_hydrajax(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  for name in ("hydrajax", "configs"):
    shutil.copytree(os.path.join(ROOT, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                  "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                 check=True, capture_output=True, timeout=300)
  (wheel,) = (tmp_path / "dist").glob("hydrajax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    tops = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
    scripts = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
  assert tops == {"hydrajax"}, tops
  for name in TOOLS:  # every dispatcher tool is a console script too
    assert f"hydrajax-{name} = " in scripts, scripts


# A program that imports hydrajax and every submodule, then frees 300 MB it touched: with
# glibc's defaults the block is an mmap given back on free; after mallopt(M_MMAP_MAX=0,
# M_TRIM_THRESHOLD=1 GiB), as reuse_freed_memory sets, it stays in the process.
_GUEST = """
import importlib, json, os, pkgutil, sys, threading
from PIL import Image
env, pil = dict(os.environ), Image.MAX_IMAGE_PIXELS
import jax, flax, optax  # the threads and settings of hydrajax's own dependencies
threads = threading.active_count()
import hydrajax
for m in pkgutil.walk_packages(hydrajax.__path__, "hydrajax."):
  if not m.name.endswith("__main__"):
    importlib.import_module(m.name)
if sys.argv[1] == "opt-in":
  hydrajax.runtime.reuse_freed_memory()
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss()
block = b"\\1" * (300 << 20)
del block
print(json.dumps({"rss_kept_mb": rss() - before, "pil": Image.MAX_IMAGE_PIXELS == pil,
                  "env": sorted(set(os.environ.items()) ^ set(env.items())),
                  "threads": threading.active_count() - threads}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_importing_hydrajax_changes_nothing_in_the_host_process():
  def probe(mode):
    out = subprocess.run([sys.executable, "-c", _GUEST, mode], env=_clean_env(), cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.splitlines()[-1])
  guest = probe("import")
  assert guest["rss_kept_mb"] < 50, guest  # glibc gave the 300 MB back
  assert guest["pil"] and guest["env"] == [] and guest["threads"] == 0, guest
  # The probe sees the allocator setting where there is one: opted in, the 300 MB stay.
  from hydrajax.runtime import hugepages
  if hugepages._glibc_version() is not None:
    assert probe("opt-in")["rss_kept_mb"] > 250


def _script(name):
  for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
    path = os.path.join(d, name)
    if os.path.isfile(path):
      return path
  return shutil.which(name)


def _help(argv, cwd):
  return subprocess.Popen(argv + ["--help"], cwd=cwd, env=_clean_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_every_tool_answers_to_its_console_name_and_to_the_dispatcher(tmp_path):
  """`hydrajax-NAME --help` and `python -m hydrajax NAME --help` both run outside the
  checkout and name the program as it was run (all started at once: they only import)."""
  runs = {}
  for name in TOOLS:
    path = _script(f"hydrajax-{name}")
    assert path is not None, f"hydrajax-{name} is not installed: pip install -r requirements.txt"
    runs[f"hydrajax-{name}"] = _help([path], tmp_path)
    runs[f"python -m hydrajax {name}"] = _help([sys.executable, "-m", "hydrajax", name], tmp_path)
  for prog, proc in runs.items():
    out, err = proc.communicate(timeout=300)
    # absl (hydrajax-distill) exits with status 1 after --help, argparse with 0.
    assert proc.returncode in ((0, 1) if prog.endswith("distill") else (0,)), (prog, err)
    assert prog in out + err, (prog, out[:300])


def test_dispatcher_without_a_known_tool_lists_the_tools():
  out = subprocess.run([sys.executable, "-m", "hydrajax", "nosuchtool"], capture_output=True,
                       text=True, env=_clean_env(), timeout=120)
  assert out.returncode == 2
  assert out.stderr.count("\n") == 1 and "nosuchtool" in out.stderr
  assert all(name in out.stderr for name in TOOLS)


@pytest.mark.parametrize("package", ["convert", "export"])
def test_python_m_of_a_tool_package_says_what_to_run(package):
  out = subprocess.run([sys.executable, "-m", f"hydrajax.{package}"], capture_output=True,
                       text=True, env=_clean_env(), timeout=120)
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr.count("\n") == 1, out.stderr
  assert f"hydrajax-{package}" in out.stderr and f"python -m hydrajax {package}" in out.stderr


def test_a_console_script_loads_a_checkout_config_that_imports_its_siblings(tmp_path):
  """`hydrajax-distill --config configs/nyud.py` from the checkout (no checkout on sys.path,
  no installed `configs`): config_file makes `from configs import default` resolve."""
  out = subprocess.run(
      [sys.executable, "-c", "import sys; from hydrajax.train import config_file; "
       "c = config_file.load(sys.argv[1]); print(c.dataset, c.num_train_steps)",
       "configs/nyud_depth_teacher.py:runlocal"],
      cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[0] == "nyud"
