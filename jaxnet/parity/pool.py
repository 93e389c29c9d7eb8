"""Sections of one parity report in worker processes, one per core.

A report's sections are independent once each has its inputs: every recipe's steps start from
the same initial weights, and each dtype's epoch needs only the allowance its recipe's
teacher-forced steps measured. On CPU a section's result is the same bits in any process
with the same thread settings, so a report run by N processes holds the rows one process
computes, in the same order (test_parity checks it). The workers' default settings (a share
of the cores each: one thread on 2 cores) are another arithmetic order than one process's on
every core: errors and floors move at rounding level (a float64 row's roundoff-sized error
by up to 10x, a float32 floor in its last bits), and the verdicts hold as under any correct
order. Each worker imports both frameworks and compiles its own programs: a few
seconds, which :func:`auto` weighs against the report's length.

The same :class:`Pool` interface runs in this process too (``workers=1``): sections run as
they are submitted, with this process's backends.

    with Pool(2, start) as pool:          # start: Start(...), what each worker builds once
        future = pool.submit(fn, *args)   # fn(context, *args) in a worker; context: Context
        rows = future.result()
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxnet import process
from jaxnet.config import PARITY_WORKER_MIN_STEPS as MIN_STEPS
from jaxnet.distributed import cores, thread_share
from jaxnet.errors import JaxnetError


@dataclass(frozen=True)
class Start:
    """What every worker builds its session from: the session's options (``builtin.session``),
    the float32 initial weights and the data (its train and test :class:`~jaxnet.data.Split`)."""

    options: dict[str, Any]
    state: dict[str, np.ndarray]
    train: Any
    test: Any


@dataclass
class Context:
    """A process's session: its backends (``setup``), the data and its float32 training images
    (converted once per process)."""

    setup: Any  # sections.Run
    data: Any
    images: np.ndarray


def auto(steps: list[int], on_cpu: bool, available: int | None = None) -> int:
    """The processes a report of sections of ``steps`` steps each is run by: one per core
    (``available``, default :func:`cores`), at most one per section; one on an accelerator (each
    process would hold its own copy of the model and data there), or where the report is too
    short to pay for starting workers (:data:`MIN_STEPS` in all)."""
    if not on_cpu or sum(steps) < MIN_STEPS:
        return 1
    return max(1, min(available or cores(), len(steps)))


def worker_env(workers: int, available: int | None = None) -> dict[str, str]:
    """What each worker sets before either framework loads: its share of the cores for torch
    (OpenMP, MKL) and, at one thread, XLA's Eigen pool off, unless the user chose the threads
    (``OMP_NUM_THREADS``); and no up-front claim of an accelerator's memory, which an explicit
    ``--workers`` on a GPU would otherwise take once per process."""
    env = process.no_preallocation()
    share = thread_share(workers, available)
    if not share:
        return env
    env |= share | {"MKL_NUM_THREADS": share["OMP_NUM_THREADS"]}
    flags = os.environ.get("XLA_FLAGS", "")
    if share["OMP_NUM_THREADS"] == "1" and "multi_thread_eigen" not in flags:
        env["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return env


def describe(workers: int) -> str:
    """The environment line of a report run by workers (the torch device line is this
    process's, which runs the forward rows)."""
    own = worker_env(workers).get("OMP_NUM_THREADS")
    threads = (
        f"{own} torch thread(s) each" if own else f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} each"
    )
    return f"step and epoch sections in {workers} worker processes, {threads}"


_CONTEXT: Context | None = None  # a worker's, for its lifetime
_FAILED: BaseException | None = None  # why a worker's start failed: its sections raise it
_SESSION = contextlib.ExitStack()


def _start(env: dict[str, str], start: Start) -> None:
    """A worker's initializer. Ctrl-C reaches the whole process group: the parent stops the
    workers (a worker interrupted before this runs may still print its traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _open(env, start)


def _open(env: dict[str, str], start: Start) -> None:
    """The worker's threads before either framework loads, then its session. A failure is
    kept and raised by each section (:func:`_call`): an initializer's own exception would
    only print, and the pool would report a broken worker instead of the cause."""
    global _CONTEXT, _FAILED
    try:
        os.environ.update(env)
        from jaxnet import process

        process.prepare(shared=True)
        from jaxnet.parity.builtin import session

        data = _Data(start.train, start.test)
        setup, _ = _SESSION.enter_context(session(start.state, **start.options))
        atexit.register(_SESSION.close)  # restored while torch is whole, not by the garbage collector
        _CONTEXT = Context(setup, data, data.train.float_images())
    except Exception as err:  # raised by every section
        _FAILED = _portable(err)


def _portable(err: Exception) -> Exception:
    """``err`` as it can reach the parent: a jaxnet error as it is (its one line is the
    message); any other with the worker's traceback as a note, or, where it does not survive
    pickling, a JaxnetError naming it."""
    if isinstance(err, JaxnetError):
        return err
    err.add_note("in a parity worker's start:\n" + "".join(traceback.format_exception(err)).rstrip())
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return JaxnetError(f"a parity worker could not start: {type(err).__name__}: {err}")
    return err


def _call(fn: Callable, *args):
    if _FAILED is not None:
        raise _FAILED
    assert _CONTEXT is not None, "a worker runs sections after its initializer"
    return fn(_CONTEXT, *args)


@dataclass(frozen=True)
class _Data:
    train: Any
    test: Any


class Pool:
    """``workers`` processes (``workers=1``: this one, given its ``context``) running sections."""

    def __init__(self, workers: int, start: Start, context: Context | None = None) -> None:
        self.context = context
        self._pool = None
        if workers > 1:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                workers,
                multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(worker_env(workers), start),
            )

    def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
        """``fn(context, *args)``: in a worker, or here and now."""
        if self._pool is not None:
            return self._pool.submit(_call, fn, *args)
        done: concurrent.futures.Future = concurrent.futures.Future()
        done.set_result(fn(self.context, *args))  # an exception propagates here, as it would
        return done

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind, *_) -> None:
        if self._pool is None:
            return
        if kind is not None:  # an error or Ctrl-C: the other sections' results are not wanted
            # (Python 3.14 names this terminate_workers(); before it, the executor's own table)
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if kind is not None and issubclass(kind, concurrent.futures.BrokenExecutor):
            raise JaxnetError(
                "a parity worker process died before its section ended (out of memory?); "
                "--workers 1 runs the report in this process"
            ) from None
