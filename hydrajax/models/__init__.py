"""Flax modules of the network (see hydranet.HydraNet), and the architecture's constants that
other builders of the same network (the ONNX graph, the converter) read."""
from hydrajax.models.hydranet import HEAD_NAMES, TASKS, HydraNet
from hydrajax.models.mobilenet_v2 import MOBILENET_V2_SETTINGS
from hydrajax.models.refinenet import CRP_STAGES, DECODER_CHANNELS

__all__ = ["CRP_STAGES", "DECODER_CHANNELS", "HEAD_NAMES", "MOBILENET_V2_SETTINGS", "TASKS",
           "HydraNet"]
