"""Flax modules of the network; see hydranet.HydraNet."""
from hydrajax.models.hydranet import HEAD_NAMES, TASKS, HydraNet

__all__ = ["HEAD_NAMES", "TASKS", "HydraNet"]
