"""How far apart two arrays are, in the units rounding theory speaks (numpy only).

Errors are normwise: ``rel = max|a - b| / max|b|``. Elementwise relative error means nothing
for entries near zero (a ReLU output, the gradient of a dead unit); the normwise one is what
rounding theory bounds. ``ulps`` counts units in the last place of ``max|b|`` *in the dtype
being compared* (a float32 quantity is judged in float32 ulps, even when its values were
converted to float64 to be subtracted exactly).

Unit roundoff ``u`` of the arithmetic in force: float32 ``2^-24``, float64 ``2^-53``, and for
float32 matrix products run on reduced-precision units, TF32 ``2^-11`` and bfloat16 ``2^-8``.

Example:
    >>> import numpy as np
    >>> e = error(np.float32([1.0, 2.0]), np.float32([1.0, 2.0000002]))
    >>> e.max_abs < 1e-6, e.ulps
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


@dataclass(frozen=True)
class Error:
    """How far ``actual`` is from ``expected``."""

    max_abs: float  # max |a - b|
    rel: float  # max |a - b| / max |b|  (normwise)
    ulps: float  # max |a - b| in ulps of max |b|, in the compared dtype
    cosine: float  # cosine similarity of the flattened arrays (1.0 = same direction)
    worst: tuple[int, ...]  # index of the largest |a - b|


def error(actual: np.ndarray, expected: np.ndarray, dtype: str | np.dtype | None = None) -> Error:
    """Normwise error of ``actual`` against ``expected`` (same shape), ulps counted in ``dtype``.

    ``dtype`` defaults to ``expected``'s own dtype.
    """
    dtype = np.dtype(dtype or np.asarray(expected).dtype)
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return Error(0.0, 0.0, 0.0, 1.0, ())
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan give inf/nan errors, not warnings
        diff = np.abs(a - b)
        diff = np.where(np.isnan(diff), np.inf, diff)
        worst = np.unravel_index(int(np.argmax(diff)), a.shape) if a.ndim else ()
        max_abs = float(diff.max())
        scale = float(np.abs(b).max())
        rel = _ratio(max_abs, scale)
        ulps = _ratio(max_abs, float(np.spacing(dtype.type(scale)))) if np.isfinite(scale) else math.inf
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(np.dot(a.ravel(), b.ravel()) / norms) if norms > 0 else float(max_abs == 0)
    return Error(max_abs, rel, ulps, cosine, tuple(int(i) for i in worst))


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Just the normwise ``rel`` of :func:`error`, cheap enough to call every step."""
    diff = float(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max(initial=0))
    return _ratio(diff, float(np.abs(expected).max(initial=0)))


def _ratio(num: float, den: float) -> float:
    if math.isnan(num):
        return math.inf
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def unit_roundoff(dtype: str, matmul: str = "highest") -> float:
    """``u`` of the arithmetic in force: the dtype's, or the matmul precision's if coarser."""
    u = UNIT_ROUNDOFF[str(dtype)]
    if str(dtype) == "float32" and matmul in ("tf32", "bfloat16"):
        u = UNIT_ROUNDOFF[matmul]
    return u


def ulp(x: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """Elementwise spacing of ``dtype`` at ``|x|`` (float64 array): one unit in the last place."""
    dtype = np.dtype(dtype)
    # no copies where the array already has the dtype (called on every element of every step)
    return np.spacing(np.abs(np.asarray(x)).astype(dtype, copy=False)).astype(np.float64, copy=False)


def a_priori_bound(dtype: str, reduction: int, *, matmul: str = "highest") -> float:
    """The classical rounding bound ``sqrt(K) u`` for chained reductions of total length ``K``.

    A length-K dot product computed in any order is off by at most ``K u`` relative to
    ``sum|x_i y_i|`` and typically ``sqrt(K) u`` (random-walk rounding). jaxnet reports it
    beside the measured noise floor as a sanity check: a floor far above it means the
    reference itself is suspect; the verdict comes from the measured floor.
    """
    return math.sqrt(reduction) * unit_roundoff(dtype, matmul)
