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
    diff = np.asarray(np.subtract(actual, expected, dtype=np.float64))  # both cast first, as before
    diff = float(np.abs(diff, out=diff).max(initial=0))
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
    return spacing(np.abs(np.asarray(x)), dtype)


# dtype -> (its bits as an unsigned integer, the exponent's bits, mantissa bits, smallest spacing)
_BITS = {
    np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000), 23, 2.0**-149),
    np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000), 52, 2.0**-1074),
}


def spacing(magnitude: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """``np.spacing`` of ``magnitude`` (``>= 0``) rounded to ``dtype``, as a float64 array.

    The same values, about three times faster (the floors take it of every element of every
    step): for ``x = 2^e (1 + f)`` the spacing is ``2^(e - p)`` with ``p`` mantissa bits, which
    is ``x`` with its mantissa bits cleared, times ``2^-p``, exactly (a power of two); below the
    normal range it is the smallest subnormal. Where ``x`` holds inf, NaN or a value of the top
    binade, ``np.spacing`` itself.
    """
    dtype = np.dtype(dtype)
    x = np.asarray(magnitude).astype(dtype, copy=False)  # rounded as np.spacing's argument would be
    if dtype not in _BITS or x.ndim == 0:
        return np.spacing(x).astype(np.float64, copy=False)
    uint, exponent, mantissa, smallest = _BITS[dtype]
    power = np.bitwise_and(x.view(uint), exponent).view(dtype)  # 2^e (0 below the normal range)
    out = np.multiply(power, 2.0**-mantissa, dtype=np.float64)
    np.maximum(out, smallest, out=out)
    if out.size and not out.max() < np.ldexp(
        1.0, np.finfo(dtype).maxexp - 1 - mantissa
    ):  # inf, NaN, top binade
        return np.spacing(x).astype(np.float64, copy=False)  # (whose largest value's spacing is inf)
    return out


def a_priori_bound(dtype: str, reduction: int, *, matmul: str = "highest") -> float:
    """The classical rounding bound ``sqrt(K) u`` for chained reductions of total length ``K``.

    A length-K dot product computed in any order is off by at most ``K u`` relative to
    ``sum|x_i y_i|`` and typically ``sqrt(K) u`` (random-walk rounding). jaxnet reports it
    beside the measured noise floor as a sanity check: a floor far above it means the
    reference itself is suspect; the verdict comes from the measured floor.
    """
    return math.sqrt(reduction) * unit_roundoff(dtype, matmul)
