"""Relative errors for comparing arrays and trees, named by their norm."""
import jax
import numpy as np


def rel_l2(a, b) -> float:
  """||a - b||_2 / ||b||_2 over all elements (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def rel_max(a, b) -> float:
  """max |a - b| / max |b| (float64): the worst element against the tensor's scale."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def tree_rel_l2(a, b) -> float:
  """The largest `rel_l2` over matching leaves of two pytrees."""
  return max(rel_l2(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
