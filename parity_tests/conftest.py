"""Shared fixtures: the real Fashion-MNIST files, loaded once per session.

Nothing here switches JAX's x64 mode for the process: a float64 backend runs its own calls
under ``jax.enable_x64``, so the float32 set-up users run (x64 off) is what the suite tests.
"""

from __future__ import annotations

import os
from importlib.metadata import version

# The environment the suite was started in, before the settings below: the README job runs the
# README's shell blocks in it, as a reader would (test_readme_blocks).
STARTED_WITH = dict(os.environ)

# XLA compiles each program without its LLVM optimisations (jax_disable_most_optimizations):
# the suite compiles a few hundred small programs and runs each a few times, and compiling was
# 549 of its 937 CPU-seconds; unoptimised, a parity compare costs about a third less. Every
# verdict holds for any correct arithmetic order, so this is one more order the suite runs
# under. Users run XLA's defaults: the subprocess tests that check the command line's
# arithmetic (test_parity's MKL-generic two-thread run, test_imports' JAX-only training) set
# it back to 0, and `JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test` runs the whole suite so.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # before jax is imported
# Lowered programs without the Python traceback of every operation as its MLIR location (for
# XLA's dumps and profiles, which the suite does not read): tracing and lowering a 12-layer
# value-and-grad 40 times took 4.6 CPU-s instead of 4.8-5.1. The arithmetic is untouched.
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "0")
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")
# XLA:CPU's older loop emitters, not its MLIR fusion emitters: the same HLO, compiled in about
# half the CPU time (a float32 port compare of the BatchNorm net and the transformer block:
# 10 CPU-s -> 5). Another code generator for the same operations, so one more arithmetic order
# again. Subprocesses inherit it; the tests that run XLA as users do clear XLA_FLAGS or set their own.
# And each program's machine code built as one LLVM module, not split into parts compiled in
# parallel: the suite's programs are small, and splitting them cost more CPU than it saved
# (test_port_engine + test_port_pitfalls, one process, alternated: 26.5-29.9 -> 23.8-27.0 user s).
SUITE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
# XLA aborts on a flag it does not know: only for the jaxlib line the suite was measured with
# (constraints.txt), a later one runs the suite with XLA's own emitters.
if (
    version("jaxlib").startswith("0.10.")
    and "JAXNET_SUITE_XLA_CACHE" not in os.environ
    and os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] != "0"
):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()

# One thread per worker: `make test` runs one xdist worker per core (-n 2 on 2 cores), and two
# workers that each drive two-thread torch and XLA pools on two cores spend CPU handing work
# between threads (the suite here, alternated runs of four files: 53-62 s -> 52 s). One thread is one
# more arithmetic order; the threaded ones users run are held by the tests that start the library
# threaded (:func:`threaded`: test_parity's MKL-generic report, test_recorded's torch-free check,
# test_training's thread counts) and by the README job, which runs its commands as a reader
# would. `OMP_NUM_THREADS=2 XLA_FLAGS=--xla_cpu_multi_thread_eigen=true make test`: all threaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
if "JAXNET_SUITE_XLA_CACHE" not in os.environ and "multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    one = "--xla_cpu_multi_thread_eigen=false" if os.environ["OMP_NUM_THREADS"] == "1" else ""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {one}".strip()


def threaded(env: dict[str, str]) -> dict[str, str]:
    """``env`` with torch and MKL on two threads and XLA's Eigen on its thread pool, its other
    XLA flags kept: a subprocess on a threaded arithmetic order, as users run. (torch's two
    threads hold on one core too; XLA sizes its pool by the cores it sees.)"""
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "multi_thread_eigen" not in f]
    flags.append("--xla_cpu_multi_thread_eigen=true")
    return {**env, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "XLA_FLAGS": " ".join(flags)}


from jaxnet import process  # noqa: E402 (after the XLA environment above)

process.prepare(shared=True)  # before torch loads: MKL's reproducible mode, OpenMP waits passive
# The command line keeps JAX's compiled programs in ~/.cache; the suite's commands (in-process
# and in subprocesses) neither read nor write it (test_imports checks the cache on its own).
os.environ["JAXNET_COMPILE_CACHE"] = "0"


def _suite_compile_cache() -> None:
    """One JAX compilation cache for this pytest run, fresh and empty at its start: the process
    that starts the run makes it, the xdist workers and every subprocess a test starts inherit
    it, so a program compiled once (the tutorial MLP's steps, in-process and in a ``jaxnet
    train`` subprocess) is loaded by the others instead of compiled again. A hit is the very
    executable the miss compiled (the key holds the program, the XLA flags and the device), so
    results are bit-identical to compiling afresh. Removed when the starting process exits."""
    if "JAXNET_SUITE_XLA_CACHE" in os.environ:  # an xdist worker: the controller made it
        return
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="jaxnet-suite-xla-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["JAXNET_SUITE_XLA_CACHE"] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # these programs compile in 0.1-5 s


_suite_compile_cache()

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


@pytest.fixture(scope="session")
def crops16(fmnist) -> tuple[np.ndarray, np.ndarray]:
    """``port_models.crops``: 12x12 crops of the first 16 real training images, and their labels."""
    from parity_tests.port_models import crops  # (imports torch: not at the suite's start)

    return crops(fmnist)


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
    return split[start : start + size].float_images(dtype), split.labels[start : start + size]


# The files that take longest, longest first (their tests' summed durations, one run, rounded):
# `-n 2 --dist loadfile` hands whole files to the two workers in collection order, and a long
# file handed out last leaves the other worker idle meanwhile. Files not listed follow, in
# pytest's order. A scheduling hint only: every test runs either way.
LONGEST_FIRST = (
    "examples/test_examples.py",
    "parity_tests/test_parity.py",
    "parity_tests/test_parity_families.py",
    "parity_tests/test_distributed.py",
    "parity_tests/test_cli.py",
    "parity_tests/test_faults.py",
    "parity_tests/test_port_engine.py",
    "parity_tests/test_bench_families.py",
    "parity_tests/test_port_pitfalls.py",
    "parity_tests/test_families.py",
    "parity_tests/test_recorded.py",
    "parity_tests/test_imports.py",
    "parity_tests/test_fastconv.py",
    "parity_tests/test_forward_grad.py",
    "parity_tests/test_fast_paths.py",
    "parity_tests/test_port.py",
)


def pytest_configure(config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order below, not by test count
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


def pytest_collection_finish(session) -> None:
    """Collection imported torch, jax and flax: a few hundred thousand long-lived objects that
    every full garbage collection would walk again (about 4% of a worker's CPU time). Frozen,
    the collector skips them; what the tests create is still collected."""
    import gc

    gc.collect()
    gc.freeze()
