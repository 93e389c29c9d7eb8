"""``jaxnet.numerics.spacing``, the floors' fast ulp, is ``np.spacing`` to the bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxnet.numerics import spacing, ulp

EDGES = [0.0, 5e-324, 1e-45, 1.4e-45, 2.0**-149, 2.0**-127, 2.0**-126, 1.1754942e-38, 1.0, 2.0, 3.0,
         1 - 2.0**-25, 1 - 2.0**-26, 1e38, 3.4028235e38, 1e300, 1.7976931348623157e308, np.inf, np.nan]  # fmt: skip


def numpy_spacing(x, dtype) -> np.ndarray:
    with warnings.catch_warnings():  # float64 values beyond float32's range become inf, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.spacing(np.asarray(x).astype(dtype)).astype(np.float64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spacing_is_numpys_at_the_edges(dtype):
    """Zero, subnormals, binade edges, each side of float32 rounding up to a power of two, the
    largest values (whose spacing np.spacing makes inf), inf and NaN; 0-d, empty, strided."""
    edges = np.array(EDGES)
    for x in (
        edges,
        edges[:13],
        edges[::-2],
        np.float64(3.0),
        np.zeros(0),
        np.outer(edges[:13], edges[:13]).T,
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = spacing(x, dtype)
        np.testing.assert_array_equal(got, numpy_spacing(x, dtype))
        assert got.dtype == np.float64


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=9), elements=st.floats(allow_nan=False)),
    st.sampled_from(["float32", "float64"]),
)
def test_spacing_is_numpys_on_any_finite_magnitudes(x, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_array_equal(spacing(np.abs(x), dtype), numpy_spacing(np.abs(x), dtype))
        np.testing.assert_array_equal(ulp(x, dtype), numpy_spacing(np.abs(x), dtype))


# below each dtype's top binade, where spacing takes its bit-clearing path rather than np.spacing
BELOW_TOP = {"float32": 1.7e38, "float64": 8.9e307}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_spacing_is_numpys_on_magnitudes_in_range(dtype, data):
    top = BELOW_TOP[dtype]
    x = data.draw(
        hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=9), elements=st.floats(0, top))
    )
    np.testing.assert_array_equal(spacing(x, dtype), numpy_spacing(x, dtype))
