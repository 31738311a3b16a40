"""Back XLA's per-step buffers with transparent huge pages (Linux, glibc >= 2.35).

XLA:CPU allocates one large temp buffer per executable run and frees it afterwards; glibc
serves it with a fresh mmap, so every step first-touches all of it in 4 KiB pages, a page
fault each. With the glibc tunable `glibc.malloc.hugetlb=1` malloc asks for transparent huge
pages on its mmaps and a step takes a few hundred faults instead of hundreds of thousands
(docs/cpu_backend.md; figures in docs/performance.md). glibc reads tunables only at process
start, so the command-line tools that run the network many times (train.py, evaluate.py,
hydrajax-distill, hydrajax-predict for a video) relaunch themselves once with it set.
HYDRAJAX_HUGEPAGES=0 turns this off.

The relaunched process carries a marker variable of its own (`MARKER`), so it never
relaunches again even if something strips GLIBC_TUNABLES. There is no relaunch when the
command line cannot be run again to the same effect: a script read from stdin (`python - <
train.py`: stdin is at its end), `python -c`, or a tool's entry function called from another
program (re-executing would rerun that program): the process must have been started as the
tool itself (its script, console script, `python -m` module or `python -m hydrajax NAME`).

Where no relaunch happens a tool keeps freed memory for reuse instead (`reuse_freed_memory`,
via runtime/cpu.py). None of this happens on `import hydrajax`: a library user opts in.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
MARKER = "HYDRAJAX_HUGEPAGES_RELAUNCHED"  # set in the relaunched process's environment
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
# sys.argv[0] of a tool run through the package's dispatcher (hydrajax/__main__.py)
DISPATCHER = "python -m hydrajax"


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
  if (MARKER in environ or environ.get("HYDRAJAX_HUGEPAGES", "1") == "0" or glibc is None
      or glibc < (2, 35) or thp_mode != "madvise" or "glibc.malloc.hugetlb=" in tunables):
    return None
  return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE,
          MARKER: "1"}


def started_as(argv: list[str], orig_argv: list[str]) -> str | None:
  """The program the interpreter was started with, if running `orig_argv` again would run it
  with `argv`: the script path as given, or the `-m` module's name. None for a script from
  stdin ("-" or ""), `-c`, or when `argv` is not the tail of `orig_argv` (runpy, an embedder).
  The dispatcher's form (`python -m hydrajax NAME ...`, argv[0] "python -m hydrajax NAME") is
  returned as argv[0]."""
  if not argv or argv[0] in ("", "-", "-c"):
    return None
  at = len(orig_argv) - len(argv)
  if at < 1 or orig_argv[at + 1:] != argv[1:]:
    return None
  if (at >= 3 and orig_argv[at - 2:at] == ["-m", "hydrajax"]
      and argv[0] == f"{DISPATCHER} {orig_argv[at]}"):
    return argv[0]
  if orig_argv[at] == argv[0]:
    return argv[0]
  if at >= 2 and orig_argv[at - 1] == "-m":
    return orig_argv[at]
  return None


def _is_entry(program: str, entries: tuple[str, ...]) -> bool:
  """`program` (started_as) is one of `entries`: module names, console-script names (matched
  with the script's file name) or script paths."""
  names = {program, os.path.basename(program)}
  paths = {os.path.realpath(e) for e in entries if os.sep in e}
  return bool(names & set(entries)) or os.path.realpath(program) in paths


def relaunch(*entries: str) -> None:
  """Re-executes this process's command line with the tunable set, if it would help.

  Call first thing in a command-line entry point, never from library code: the process
  image is replaced (same pid, same arguments and interpreter options). `entries`: for a
  function that other programs may call (a console script's `cli()`), the names the tool
  runs under (console script, `-m` module): anything else is not relaunched. Without them
  (a script's `__main__` block) any program started as a script or module is. A tool run
  through the dispatcher (`python -m hydrajax NAME`) is always one of its own entries.
  """
  if not sys.platform.startswith("linux"):
    return
  if os.environ.pop(MARKER, None) is not None:
    return  # already relaunched (children start afresh)
  program = started_as(sys.argv, list(sys.orig_argv))
  if program is None or (entries and not program.startswith(DISPATCHER + " ")
                         and not _is_entry(program, entries)):
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


REUSE_OFF = "HYDRAJAX_MALLOC_REUSE"  # =0: leave glibc's malloc settings alone
# glibc mallopt parameters (malloc.h) and the values set for reuse
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_REUSE_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20),
                   (_M_ARENA_MAX, 1))
# glibc's documented defaults (mallopt(3)), what `reusing_freed_memory` puts back
_GLIBC_DEFAULTS = ((_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 << 10), (_M_TOP_PAD, 128 << 10))
_reuse_applied: bool | None = None


def _mallopt():
  """glibc's mallopt, or None (not glibc)."""
  if _glibc_version() is None:
    return None
  import ctypes
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return mallopt


def reuse_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
  """Opt-in: make glibc's malloc keep freed memory for reuse in this whole process, so XLA's
  per-run temp buffer is not a fresh mmap (4 KiB page faults) on every run of the network.

  Process-wide and not undone: no mmap for large blocks (M_MMAP_MAX 0), one heap for all
  threads (M_ARENA_MAX 1: other arenas would mmap blocks larger than their 64 MiB heaps, and
  every thread then shares one malloc lock), the heap's top trimmed only above 1 GiB (memory
  the program frees stays in the process). It helps XLA:CPU only. Importing hydrajax never
  calls it; the command-line tools do (runtime.cpu.tune_tool), a library user opts in
  (`hydrajax.runtime.fast_cpu()`, before the first `hydrajax.apply`) if their process can
  live with the above.

  Not applied (returns False): not glibc, HYDRAJAX_MALLOC_REUSE=0, or the huge-page tunable
  already set (the relaunched tools). Idempotent; returns whether the settings are in force.
  """
  global _reuse_applied
  if _reuse_applied is not None:
    return _reuse_applied
  environ = os.environ if environ is None else environ
  _reuse_applied = False
  mallopt = _mallopt()
  if (mallopt is None or environ.get(REUSE_OFF, "1") == "0"
      or "glibc.malloc.hugetlb=" in environ.get("GLIBC_TUNABLES", "")):
    return False
  _reuse_applied = all(mallopt(param, value) == 1 for param, value in _REUSE_SETTINGS)
  return _reuse_applied


@contextlib.contextmanager
def reusing_freed_memory():
  """The reuse settings (but M_ARENA_MAX, which cannot be undone) only while the block runs,
  then glibc's default values again. Confines the change to hydrajax's own calls; whether it
  keeps the speed is measured in docs/performance.md. Does nothing where mallopt is missing."""
  mallopt = _mallopt()
  if mallopt is None or _reuse_applied:
    yield
    return
  for param, value in _REUSE_SETTINGS[:3]:
    mallopt(param, value)
  try:
    yield
  finally:
    for param, value in _GLIBC_DEFAULTS:
      mallopt(param, value)

