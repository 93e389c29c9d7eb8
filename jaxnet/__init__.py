"""jaxnet: the PyTorch quickstart classifier in JAX/Flax, and a harness proving parity with torch.

The public API, imported on first use (so ``import jaxnet`` stays cheap and never needs torch)::

    import jaxnet
    ds = jaxnet.load_data()                                   # real Fashion-MNIST, verified
    model = jaxnet.get_backend("jax", jaxnet.ModelConfig())   # or "torch"
    ckpt = jaxnet.load_checkpoint("runs/checkpoint")          # or a tutorial .pth, a .safetensors
    model = jaxnet.load_model("runs/checkpoint")              # the Flax NNX model, weights loaded
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "NeuralNetwork": ("jaxnet.model", "NeuralNetwork"),
    "load_model": ("jaxnet.model", "load_model"),
    "ModelConfig": ("jaxnet.config", "ModelConfig"),
    "OptimConfig": ("jaxnet.config", "OptimConfig"),
    "TrainConfig": ("jaxnet.config", "TrainConfig"),
    "load_data": ("jaxnet.data", "load"),
    "CLASS_NAMES": ("jaxnet.data", "CLASS_NAMES"),
    "Checkpoint": ("jaxnet.checkpoint", "Checkpoint"),
    "load_checkpoint": ("jaxnet.checkpoint", "load"),
    "save_checkpoint": ("jaxnet.checkpoint", "save"),
    "get_backend": ("jaxnet.backends", "get_backend"),
    "JaxnetError": ("jaxnet.errors", "JaxnetError"),
    "parity": ("jaxnet.parity", None),  # the subpackage itself
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxnet' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    if module not in ("jaxnet.errors", "jaxnet.config"):  # those need no framework
        from jaxnet import versions

        versions.check()
    imported = importlib.import_module(module)
    return imported if attr is None else getattr(imported, attr)
