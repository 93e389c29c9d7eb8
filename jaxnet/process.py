"""Process settings the numerical libraries read once, when they load: set them before that.

Called by the entry points (``jaxnet``'s ``main``, the test suite's conftest) before torch
or JAX is imported; each variable is set only where the user has not set it already.
"""

from __future__ import annotations

import os
import sys

# torch's CPU matrix products come from MKL, whose summation order (and so rounding) depends on
# how many threads a call gets: the last layer's weight gradient (512 x 10 x 64) rounds
# differently on 1 thread than on 2, and MKL's dynamic mode may hand a call fewer threads
# than requested when the machine is busy. Strict conditional-numerical-reproducibility mode
# makes the bits independent of the thread count; Intel's reproducibility conditions also
# want dynamic adjustment off. Measured here: no speed cost.
REPRODUCIBLE = {"MKL_CBWR": "AUTO,STRICT", "MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}

# Where one process drives both frameworks in turn (parity, the tests), OpenMP threads must
# sleep between parallel regions instead of spinning: torch's and XLA's spinning threads
# otherwise wait each other out (36 s against 9 s for 20 teacher-forced Adam steps here).
SHARED = {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare(*, shared: bool = False) -> list[str]:
    """Set :data:`REPRODUCIBLE` (and :data:`SHARED` if both frameworks will run here).

    Returns the variables that came too late: torch was already imported, so its MKL and
    OpenMP runtimes have read their settings (the caller may warn).
    """
    wanted = REPRODUCIBLE | (SHARED if shared else {})
    late = [k for k, v in wanted.items() if os.environ.get(k) != v] if "torch" in sys.modules else []
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return late
