"""Shared fixtures: the real Fashion-MNIST files, loaded once per session.

Nothing here switches JAX's x64 mode for the process: a float64 backend runs its own calls
under ``jax.enable_x64``, so the float32 set-up users run (x64 off) is what the suite tests.
"""

from __future__ import annotations

import os

from jaxnet import process

process.prepare(shared=True)  # before torch loads: MKL's reproducible mode, OpenMP waits passive
# The command line keeps JAX's compiled programs in ~/.cache; the suite's commands (in-process
# and in subprocesses) neither read nor write it (test_imports checks the cache on its own).
os.environ["JAXNET_COMPILE_CACHE"] = "0"

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


def problems(report) -> list[tuple]:
    """A parity report's failing rows, readable in an assertion message."""
    return [(r.section, r.quantity, r.dtype, f"{r.ratio:.3g}", r.note) for r in report.failures]


def tree_bytes(path) -> dict[str, bytes]:
    """Every file of a checkpoint directory, by name: equal dicts are byte-identical checkpoints."""
    from pathlib import Path

    return {f.name: f.read_bytes() for f in sorted(Path(path).iterdir())}


def batch(ds: data.FashionMNIST, dtype: str, start: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A real training batch ``[size, 1, 28, 28]`` and its labels."""
    split = ds.train
    return split.float_images(dtype)[start : start + size], split.labels[start : start + size]
