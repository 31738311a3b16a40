"""Back XLA's per-step buffers with transparent huge pages (Linux, glibc >= 2.35).

XLA:CPU allocates one large temp buffer per executable run and frees it afterwards; glibc
serves it with a fresh mmap, so every step first-touches all of it in 4 KiB pages, a page
fault each. With the glibc tunable `glibc.malloc.hugetlb=1` malloc asks for transparent huge
pages on its mmaps and a step takes a few hundred faults instead of hundreds of thousands
(docs/cpu_backend.md; figures in docs/performance.md). glibc reads tunables only at process
start, so the command-line tools that run the network many times (train.py, evaluate.py,
hydrajax-distill, hydrajax-predict for a video) relaunch themselves once with it set.
HYDRAJAX_HUGEPAGES=0 turns this off.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _thp_mode() -> str | None:
  """The kernel's THP policy: "always", "madvise" or "never" (the bracketed word)."""
  try:
    with open(THP_ENABLED) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def launch_env(environ: Mapping[str, str], glibc: tuple[int, int] | None,
               thp_mode: str | None) -> dict[str, str] | None:
  """The environment to relaunch with, or None when relaunching would change nothing.

  Only THP mode "madvise" needs the tunable ("always" already backs large mmaps with huge
  pages, "never" forbids them); glibc before 2.35 has no such tunable.
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (environ.get("HYDRAJAX_HUGEPAGES", "1") == "0" or glibc is None or glibc < (2, 35)
      or thp_mode != "madvise" or "glibc.malloc.hugetlb=" in tunables):
    return None
  return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def relaunch() -> None:
  """Re-executes this process's command line with the tunable set, if it would help.

  Call first thing in a command-line entry point, never from library code: the process
  image is replaced (same pid, same arguments and interpreter options).
  """
  if not sys.platform.startswith("linux"):
    return
  env = launch_env(os.environ, _glibc_version(), _thp_mode())
  if env is None:
    return
  argv = sys.orig_argv  # the interpreter's own options (-m, -X, ...) too; Python >= 3.10
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError as e:  # e.g. the interpreter moved: run on without huge pages
    print(f"hydrajax: could not relaunch with {TUNABLE}: {e}", file=sys.stderr)
