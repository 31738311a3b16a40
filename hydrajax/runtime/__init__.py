"""Process-level plumbing: devices and processes (parallel), huge pages and malloc reuse for
XLA's buffers (hugepages), the opt-in fast CPU path (cpu), files written atomically (atomic),
and zip archives of stored members checked before they are read (stored_zip).

`fast_cpu()` is the library user's opt-in to what the command-line tools do for themselves
(what it changes: cpu.py, and the README's "Process settings").
"""
from hydrajax.runtime.cpu import fast_cpu
from hydrajax.runtime.hugepages import reuse_freed_memory

__all__ = ["fast_cpu", "reuse_freed_memory"]
