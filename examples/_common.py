"""Helpers shared by the examples' checks: real data, and printing both sides' numbers alike.

Nothing here switches JAX's x64 mode: an example that needs float64 JAX runs its JAX calls
under ``with jax.enable_x64(True):``, so importing an example changes nothing for the process.
"""

from __future__ import annotations

import numpy as np


def real_batch(n: int = 8, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` real Fashion-MNIST test images ``[n, 1, 28, 28]`` in [0, 1], and their labels."""
    from jaxnet import data

    test = data.load().test
    return test[:n].float_images(dtype), test.labels[:n]


# Significant digits printed per dtype. float32 results differ in their last bits between
# machines (AVX2 against AVX-512 kernels, thread counts), so a page that every correct CPU
# reproduces prints them short; float64 ones agree to far more digits.
DIGITS = {"float32": 4, "float64": 8}


def digits_for(*values) -> int:
    """The digits of the coarsest floating dtype among ``values`` (float64 if none is a float)."""
    kinds = [np.asarray(v).dtype for v in values]
    floats = [d for d in kinds if d.kind == "f"]
    return min((DIGITS.get(d.name, 4) for d in floats), default=DIGITS["float64"])


def show(name: str, torch_value, jax_value, digits: int | None = None) -> None:
    """Print one quantity from both frameworks, with the digits its dtype holds on every CPU."""
    digits = digits or digits_for(torch_value, jax_value)
    t, j = np.asarray(torch_value, dtype=np.float64), np.asarray(jax_value, dtype=np.float64)
    fmt = {"float_kind": lambda v: f"{v:.{digits}g}"}
    with np.printoptions(formatter=fmt, threshold=8, edgeitems=3):
        print(f"{name}\n  torch: {np.array2string(t)}\n  jax:   {np.array2string(j)}")


def show_compare(report) -> None:
    """Print ``parity.compare``'s row count, its sections and its verdict; assert that it passed."""
    sections = sorted({r.section.split(" (")[0] for r in report.rows})
    verdict = "all within their bounds" if report.passed else "FAILED"
    print(f"compare: {len(report.rows)} rows ({', '.join(sections)}), {verdict}")
    assert report.passed, report.first_failure()


# A meta-path finder that refuses torch: the process behaves as a CI image without torch does.
NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here", name="torch")
sys.meta_path.insert(0, _NoTorch())
"""


def run_without_torch(code: str, *args: str) -> str:
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a fresh Python where ``import torch``
    raises ImportError; return the last line it printed (it must exit with status 0)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", NO_TORCH + code, *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the torch-free process failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]
