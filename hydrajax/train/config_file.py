"""Config files (`configs/x.py` or `configs/x.py:arg`) loaded the same way by every tool.

A config file is Python that may import its siblings as a package (`from configs import
default`). A script beside that package (`python train.py`) finds it because Python puts the
script's folder first on sys.path; a console script (`hydrajax-distill`) has no such folder.
`make_importable` puts the config package's parent first on sys.path, as a script beside it
would have, so every tool loads a config exactly as train.py does. Nothing is installed under
the name `configs`: the configs stay the user's (or the checkout's) files.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence


def make_importable(spec: str) -> None:
  """Lets the config file of `spec` import its package's siblings: if its folder holds an
  `__init__.py`, that folder's parent goes first on sys.path (once). A tool's call, made
  before the file is loaded; library code does not change sys.path."""
  folder = os.path.dirname(os.path.abspath(spec.split(":", 1)[0]))
  if not os.path.isfile(os.path.join(folder, "__init__.py")):
    return
  root = os.path.dirname(folder)
  if root not in sys.path:
    sys.path.insert(0, root)


def spec_in_argv(argv: Sequence[str], flag: str = "--config") -> str | None:
  """The value of `flag` in a command line (`--config X` or `--config=X`), or None."""
  for i, arg in enumerate(argv):
    if arg == flag and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(flag + "="):
      return arg[len(flag) + 1:]
  return None


def load(spec: str):
  """The ml_collections ConfigDict of `spec` ("path.py" or "path.py:arg"), its sibling
  imports resolved as for train.py; FileNotFoundError naming the file if it is missing."""
  from ml_collections.config_flags import config_flags
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config {path}: no such file")
  make_importable(spec)
  return config_flags.ConfigFileFlagParser(name="config").parse(spec)
