"""Process-level plumbing: devices and processes (parallel), huge pages and malloc reuse for
XLA's buffers (hugepages), files written atomically (atomic), and zip archives of stored
members checked before they are read (stored_zip).

`reuse_freed_memory()` is the library user's opt-in to the faster CPU path (what it changes:
hugepages.py, and the README's "Process settings").
"""
from hydrajax.runtime.hugepages import reuse_freed_memory

__all__ = ["reuse_freed_memory"]
