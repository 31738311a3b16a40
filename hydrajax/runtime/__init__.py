"""Process-level plumbing: devices and processes (parallel), huge pages for XLA's buffers
(hugepages), and files written atomically (atomic)."""
