"""One check shared by the fast paths' tests: a float32 result within K times the float32 floor."""

from __future__ import annotations

import numpy as np

from jaxnet.numerics import rel_error, unit_roundoff
from jaxnet.parity.verdict import K


def assert_within_float32_floor(
    fast32: dict[str, np.ndarray], plain32: dict[str, np.ndarray], plain64: dict[str, np.ndarray]
) -> None:
    """Each of ``fast32``'s quantities is within ``K * floor`` of ``plain64``'s, the floor being
    the plain (idiomatic) float32 result's own error against it, never below one float32 u."""
    assert plain64.keys() == fast32.keys()
    for name, reference in plain64.items():
        floor = max(rel_error(plain32[name], reference), unit_roundoff("float32"))
        assert rel_error(fast32[name], reference) <= K * floor, (
            name,
            rel_error(fast32[name], reference),
            floor,
        )
