"""Error metrics and the tolerance model the parity checks use (numpy only).

Errors are measured normwise: ``rel = max|a - b| / max|b|``. Elementwise relative error is
meaningless for entries near zero (a ReLU output, a gradient of a dead unit), while the
normwise one is what rounding theory bounds.

The tolerance model. Two correct implementations of the same computation differ only by
rounding. A length-K dot product computed in any order has error at most ``K u`` relative to
``sum|x_i y_i|`` (worst case) and typically ``sqrt(K) u`` (random-walk rounding), with ``u``
the unit roundoff of the arithmetic actually used (float32 ``2^-24``, float64 ``2^-53``, TF32
``2^-11``, bfloat16 ``2^-8``). So for a quantity whose computation chains reductions of total
length ``K`` (e.g. the logits: 784 + 512 + 512) we allow::

    tol = SAFETY * sqrt(K) * u                 (one evaluation)
    tol = SAFETY * sqrt(K) * u * steps         (after ``steps`` optimizer steps)

``SAFETY = 16`` covers the gap between the typical and the observed constant (cancellation in
``sum|x y|`` versus ``|sum x y|``, a few chained layers, softmax) and is fixed, not tuned per
test. Linear growth in ``steps`` is the bound for a contractive, non-chaotic trajectory (SGD
at the tutorial's learning rate); where a trajectory is chaotic (Adam in float32, whose update
``m / sqrt(v)`` is scale-free and turns rounding noise in near-zero gradients into full-size
steps) no rounding bound holds and the comparison moves to outcomes (test predictions).

Example:
    >>> import numpy as np
    >>> err = compare(np.float32([1.0, 2.0]), np.float32([1.0, 2.0000002]))
    >>> err.max_abs < 1e-6, err.ulps
    (True, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "tf32": 2.0**-11,  # 10 explicit mantissa bits
    "bfloat16": 2.0**-8,  # 7 explicit mantissa bits
}
SAFETY = 16.0


@dataclass(frozen=True)
class Error:
    """How far ``actual`` is from ``expected``."""

    max_abs: float  # max |a - b|
    rel: float  # max |a - b| / max |b|  (normwise)
    ulps: float  # max |a - b| in ulps of max |b| in the compared dtype
    cosine: float  # cosine similarity of the flattened arrays (1.0 = same direction)
    worst: tuple[int, ...]  # index of the largest |a - b|

    def within(self, tol: float) -> bool:
        return self.rel <= tol


def compare(actual: np.ndarray, expected: np.ndarray) -> Error:
    """Normwise error of ``actual`` against ``expected`` (same shape)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return Error(0.0, 0.0, 0.0, 1.0, ())
    diff = np.abs(a - b)
    worst = np.unravel_index(int(np.argmax(diff)), a.shape) if a.ndim else ()
    max_abs = float(diff.max())
    scale = float(np.abs(b).max())
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    ulp = float(np.spacing(np.asarray(scale, dtype=np.asarray(expected).dtype))) if scale > 0 else 0.0
    ulps = max_abs / ulp if ulp > 0 else (0.0 if max_abs == 0 else math.inf)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan inputs give a nan cosine, not a warning
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(np.dot(a.ravel(), b.ravel()) / norms) if norms > 0 else float(max_abs == 0)
    return Error(max_abs, rel, ulps, cosine, tuple(int(i) for i in worst))


def unit_roundoff(dtype: str, matmul: str = "highest") -> float:
    """``u`` of the arithmetic in force: the dtype's, or the matmul precision's if coarser."""
    u = UNIT_ROUNDOFF[str(dtype)]
    if str(dtype) == "float32" and matmul in ("tf32", "bfloat16"):
        u = UNIT_ROUNDOFF[matmul]
    return u


def tolerance(dtype: str, reduction: int, *, steps: int = 1, matmul: str = "highest") -> float:
    """Normwise relative tolerance for a result of chained reductions of total length ``reduction``.

    Args:
        dtype: ``"float32"`` or ``"float64"``.
        reduction: total length of the dot products along the computation (e.g. 784 + 512 + 512).
        steps: optimizer steps between the shared start and the compared values.
        matmul: ``"highest"`` (full precision), ``"tf32"`` or ``"bfloat16"`` matmul inputs.
    """
    return SAFETY * math.sqrt(reduction) * unit_roundoff(dtype, matmul) * max(1, steps)


def adam_amplification(lr: float, eps: float, grad_scale: float, param_scale: float) -> float:
    """How much an Adam-family step can magnify gradient rounding, relative to the parameters.

    The update ``lr * g / (|g| + eps)`` has slope at most ``lr / eps`` (at ``g = 0``), so an
    absolute gradient error ``tol * max|g|`` moves a parameter by up to
    ``lr * tol * max|g| / eps``; relative to ``max|w|`` that is ``tol`` times the factor
    returned here. Plain SGD has factor 1 (its step is ``lr * g`` with ``lr * max|g| << max|w|``).
    """
    return 1.0 + lr * grad_scale / (eps * param_scale)


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Just the normwise ``rel`` of :func:`compare`, cheap enough to call every step."""
    scale = float(np.abs(expected).max())
    diff = float(np.abs(np.asarray(actual) - expected).max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def reductions(hidden: tuple[int, ...], in_features: int = 784, batch: int = 64) -> dict[str, int]:
    """Total reduction lengths of the model's quantities (what :func:`tolerance` takes).

    The forward pass sums over ``in_features`` then each hidden size; a gradient adds the
    backward pass through the layers above and the sum over the batch.
    """
    forward = in_features + sum(hidden)
    return {
        "forward": forward,
        "loss": forward + 10,  # logsumexp over the classes
        "grad": forward + sum(hidden) + batch,
    }


def mask_flips(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices where two pre-activation arrays disagree on the ReLU mask (``x > 0``).

    A flip at a pre-activation within rounding distance of 0 is a tie, not a disagreement:
    ReLU's derivative jumps there, so that example's gradient legitimately differs by O(1).
    """
    return np.argwhere((np.asarray(a) > 0) != (np.asarray(b) > 0))
