"""hydrajax: real-time joint semantic segmentation and depth estimation in JAX.

    variables = hydrajax.init(jax.random.key(0), num_classes=40)
    out = hydrajax.apply(variables, image)   # image: (H, W, 3) uint8
    out["segm"].argmax(-1), out["depth"]       # labels, metres
    cloud = hydrajax.points(out["depth"], intrinsics, colors=image, labels=out["segm"])

Importing hydrajax changes nothing in the process. The faster CPU path that keeps XLA's
freed buffers for reuse is opt-in: `hydrajax.runtime.reuse_freed_memory()`.
"""
from hydrajax.api import (apply, init, model_config, model_from_config, model_from_variables,
                          normalize)
from hydrajax.inference.points import points
from hydrajax.models import HydraNet
from hydrajax.weights import load, save

__version__ = "0.1.0"
__all__ = ["HydraNet", "apply", "init", "load", "model_config", "model_from_config",
           "model_from_variables", "normalize", "points", "save"]
