"""Test helpers: fabricated data in the real formats, references, workers, numerics."""
