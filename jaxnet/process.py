"""Process settings the numerical libraries read once, when they load: set them before that.

Called by the entry points (``jaxnet``'s ``main``, the test suite's conftest) before torch
or JAX is imported; each variable is set only where the user has not set it already.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import re
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


# XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK (its "individual_convolution" library
# fusion), whose training convolutions (forward and both gradients) ran 1.35-3.2x slower here
# than the Eigen convolutions it replaced, the ResNet's train step 1408 ms against 484
# (docs/xla-cpu-conv.md, its reproduction docs/scripts/xla_ynn_conv.py). This flag gives them
# back to Eigen. Only for the jaxlib line it was measured on: XLA aborts on a flag it does not
# know, and a later one may have fixed the cause. XLA reads it when JAX starts its first backend.
YNN_FUSION = "--xla_cpu_experimental_ynn_fusion_type"  # a user's choice of it is theirs
XLA_CONV_FLAG = f"{YNN_FUSION}=-individual_convolution"
XLA_CONV_JAXLIB = "0.10."


# glibc's malloc hands large freed blocks back to the kernel (each above its mmap threshold,
# and the heap's top past its trim threshold), and XLA frees and allocates a training step's
# large buffers every step: the next step faults their pages in again, 165,000-890,000 minor
# page faults an epoch here (docs/xla-cpu-conv.md). Kept in the process instead (mallopt, as
# MALLOC_MMAP_MAX_=0 MALLOC_TOP_PAD_ MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_ would at start,
# the last capped at mallopt's int), the CNN's JAX epoch went from 2.0 times torch's to 1.16
# (two bench runs: README, Speed); the cost is memory, a process keeps its peak. mallopt's
# parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
MALLOC = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 10**9, M_ARENA_MAX: 1}


_KEPT: list[bool] = []  # whether keep_freed_memory took in this process (once it ran)


def malloc_env() -> dict[str, str]:
    """The ``MALLOC_*`` variables of this environment: glibc's own settings, read at start."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}


def no_preallocation() -> dict[str, str]:
    """What a worker process adds to its environment so that it claims no accelerator memory up
    front (each would take most of it), unless the user chose (``XLA_PYTHON_CLIENT_PREALLOCATE``)."""
    return {} if "XLA_PYTHON_CLIENT_PREALLOCATE" in os.environ else {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def keep_freed_memory() -> bool:
    """Set :data:`MALLOC` with glibc's ``mallopt``; whether it took. Not where the user chose
    (``JAXNET_MALLOC=0``, any ``MALLOC_*`` variable or a ``glibc.malloc`` tunable: glibc read
    those at start; another allocator preloaded), nor where the C library is not glibc. Before
    the first large allocation: what is already mapped is not moved."""
    chosen = bool(malloc_env()) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if os.environ.get("JAXNET_MALLOC", "1") == "0" or chosen or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl), or no C library to load
        return False
    took = all([mallopt(param, value) == 1 for param, value in MALLOC.items()])  # every one tried
    _KEPT[:] = [took]
    return took


def allocator() -> str:
    """The C allocator's setting in this process, in words (the bench's rows record it)."""
    chosen = " ".join(f"{k}={v}" for k, v in malloc_env().items())
    if chosen:
        return f"`{chosen}` (the environment's)"
    return "freed memory kept in the process (jaxnet.process.MALLOC)" if any(_KEPT) else "glibc's defaults"


def xla_flags(flags: str) -> str:
    """``XLA_FLAGS`` with :data:`XLA_CONV_FLAG` added where jaxlib is the 0.10 line and the user
    has chosen no YNN fusion types (any ``--xla_cpu_experimental_ynn_fusion_type`` is theirs)."""
    if YNN_FUSION in flags or not jaxlib_version().startswith(XLA_CONV_JAXLIB):
        return flags
    return f"{flags} {XLA_CONV_FLAG}".strip()


@functools.cache
def jaxlib_version() -> str:
    """The installed jaxlib's version, read from its version.py without importing it (an import
    would start nothing, but importlib.metadata costs ~90 ms of start-up); "" where absent."""
    spec = importlib.util.find_spec("jaxlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            with open(os.path.join(folder, "version.py"), encoding="utf-8") as source:
                found = re.search(
                    r"^_version\s*(?::\s*str\s*)?=\s*[\"']([^\"']+)[\"']", source.read(), re.MULTILINE
                )
        except OSError:
            continue
        if found:
            return found.group(1)
    return ""


def compile_cache() -> dict[str, str]:
    """JAX's persistent compilation cache in the user cache directory, for every program.

    A command's compiled steps are reused by the next run of the same command (eval, predict
    and train start in about the time of ``import jax`` then). ``JAXNET_COMPILE_CACHE=0``
    turns it off; ``JAX_COMPILATION_CACHE_DIR`` moves it.
    """
    if os.environ.get("JAXNET_COMPILE_CACHE", "1") == "0":
        return {}
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return {
        "JAX_COMPILATION_CACHE_DIR": os.path.join(base, "jaxnet", "xla"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # this model's programs compile in 0.1-0.5 s
    }


def prepare(*, shared: bool = False, cache: bool = False) -> list[str]:
    """Set :data:`REPRODUCIBLE`, :data:`SHARED` if both frameworks will run here,
    :func:`compile_cache` if ``cache``, and :func:`xla_flags`; and keep freed memory in the
    process (:func:`keep_freed_memory`). JAX reads its variables when it is imported, XLA its
    flags when JAX first starts a backend.

    Returns the variables that came too late: torch was already imported, so its MKL and
    OpenMP runtimes have read their settings, or JAX had started a backend before XLA_FLAGS
    gained :data:`XLA_CONV_FLAG` (the caller may warn).
    """
    wanted = REPRODUCIBLE | (SHARED if shared else {}) | (compile_cache() if cache else {})
    late = [k for k in REPRODUCIBLE | (SHARED if shared else {}) if os.environ.get(k) != wanted[k]]
    late = late if "torch" in sys.modules else []
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    flags = xla_flags(os.environ.get("XLA_FLAGS", ""))
    if flags != os.environ.get("XLA_FLAGS", ""):  # the flag is new here (XLA_FLAGS unset or not)
        late += ["XLA_FLAGS"] if _jax_started() else []
    if flags:
        os.environ["XLA_FLAGS"] = flags
    keep_freed_memory()
    return late


def _jax_started() -> bool:
    """Whether JAX has started a backend in this process (XLA has read its flags then)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()
