"""The fast CPU path, by choice: what hydrajax's command-line tools do for themselves and a
library user opts into. Importing hydrajax does none of it.

- malloc reuse (hugepages.reuse_freed_memory): glibc keeps freed memory for reuse, so XLA's
  per-run temp buffer is not page-faulted in anew each run; process-wide and not undone.
- the C++ CPU kernels (models/ops/ffi_build.py): compiled with the machine's C++ compiler on
  first use into `$HYDRAJAX_CACHE` (default ~/.cache/hydrajax); `impl="auto"` then uses them.
- the tools alone also relaunch once with glibc's huge-page tunable (hugepages.relaunch).
"""
from __future__ import annotations

import sys

from hydrajax.runtime import hugepages


def fast_cpu(*, malloc_reuse: bool = True, cpu_kernels: bool = True) -> dict[str, bool]:
  """Opts this process into the tools' CPU path; call once, before the first
  `hydrajax.apply`. Returns what is in force: {"malloc_reuse", "cpu_kernels"} (False where it
  does not apply: not glibc, HYDRAJAX_MALLOC_REUSE=0, HYDRAJAX_CPU_KERNELS=0, no compiler)."""
  from hydrajax.models import ops
  from hydrajax.models.ops import ffi_build
  ops.use_cpu_kernels(cpu_kernels)
  return {"malloc_reuse": malloc_reuse and hugepages.reuse_freed_memory(),
          "cpu_kernels": cpu_kernels and ffi_build.available()}


HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")  # argparse's and absl's


def tune_tool(*entries: str) -> None:
  """What a command-line tool does first thing: relaunch with the huge-page tunable where it
  helps (hugepages.relaunch, with its `entries`), then the fast CPU path (malloc reuse is
  skipped in a relaunched process, whose huge pages serve instead). Nothing when asked for
  help: the tool only prints it, and a relaunch would start it twice. Library code never
  calls this."""
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    return
  hugepages.relaunch(*entries)
  fast_cpu()
