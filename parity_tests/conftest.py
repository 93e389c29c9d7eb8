"""Shared fixtures: the real Fashion-MNIST files, loaded once per session.

x64 is switched on before any array is made so float64 tests get float64 (JAX would silently
give float32 otherwise); float32 tests pass explicit dtypes and are unaffected.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxnet import checkpoint, data  # noqa: E402
from jaxnet.config import ModelConfig  # noqa: E402


@pytest.fixture(scope="session")
def fmnist() -> data.FashionMNIST:
    """The real dataset (the test command installs it; a missing dataset fails, never skips)."""
    return data.load()


@pytest.fixture(scope="session")
def tutorial_state() -> dict[str, dict[str, np.ndarray]]:
    """Tutorial-sized weights (numpy, seed 1) in both dtypes."""
    config = ModelConfig()
    return {dt: checkpoint.init_state_dict(config, 1, dt) for dt in ("float32", "float64")}


def batch(ds: data.FashionMNIST, dtype: str, start: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A real training batch ``[size, 1, 28, 28]`` and its labels."""
    split = ds.train
    return split.float_images(dtype)[start : start + size], split.labels[start : start + size]
