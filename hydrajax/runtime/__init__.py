"""Process-level plumbing: devices and processes (parallel), huge pages for XLA's buffers
(hugepages), files written atomically (atomic), and zip archives of stored members checked
before they are read (stored_zip)."""
