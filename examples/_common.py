"""Helpers shared by the examples: real data, and printing both sides' numbers alike."""

from __future__ import annotations

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # some examples compare in float64


def real_batch(n: int = 8, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` real Fashion-MNIST test images ``[n, 1, 28, 28]`` and labels."""
    from jaxnet import data

    test = data.load().test
    return test.float_images(dtype)[:n], test.labels[:n]


def show(name: str, torch_value, jax_value, digits: int = 6) -> None:
    """Print one quantity from both frameworks, rounded so the page is stable."""
    t, j = np.asarray(torch_value, dtype=np.float64), np.asarray(jax_value, dtype=np.float64)
    fmt = {"float_kind": lambda v: f"{v:.{digits}g}"}
    with np.printoptions(formatter=fmt, threshold=8, edgeitems=3):
        print(f"{name}\n  torch: {np.array2string(t)}\n  jax:   {np.array2string(j)}")
