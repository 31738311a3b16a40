"""hydrajax: real-time joint semantic segmentation and depth estimation in JAX.

    variables = hydrajax.init(jax.random.key(0), num_classes=40)
    out = hydrajax.apply(variables, image)   # image: (H, W, 3) uint8
    out["segm"].argmax(-1), out["depth"]       # labels, metres
    cloud = hydrajax.points(out["depth"], intrinsics, colors=image, labels=out["segm"])
"""
from hydrajax.runtime import hugepages as _hugepages

# Before JAX starts its threads: XLA's per-run temp buffer then reuses freed heap memory
# instead of a fresh mmap per run (hydrajax/runtime/hugepages.py; HYDRAJAX_MALLOC_REUSE=0: off).
_hugepages.reuse_freed_memory()

from hydrajax.api import (apply, init, model_config, model_from_config, model_from_variables,
                          normalize)
from hydrajax.inference.points import points
from hydrajax.models import HydraNet
from hydrajax.weights import load, save

__version__ = "0.1.0"
__all__ = ["HydraNet", "apply", "init", "load", "model_config", "model_from_config",
           "model_from_variables", "normalize", "points", "save"]
