"""Several processes training one run: who this process is, and a launcher that watches them.

Each framework's own engine does the work (torch's ``DistributedDataParallel`` over
``torch.distributed``; JAX's ``jax.distributed`` and a device mesh); this module only starts
the processes, tells each its rank, and ends the whole run when one of them ends badly:

- a worker that dies (a crash, SIGKILL) ends the run within :data:`GRACE` seconds, with a
  message naming its rank; the other workers are stopped, the last checkpoint stays as it is;
- Ctrl-C is passed on to every worker, which agree on a step, save once, and exit 130.

``jaxnet train --backend torch --devices N`` launches N workers this way; so does
``--backend jax --processes P``. Under ``torchrun`` the environment already names the rank
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and jaxnet joins as that worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from jaxnet.errors import JaxnetError

GRACE = 10.0  # seconds the other workers get to stop after one has died
WORKER = "JAXNET_WORKER"  # set in a launched worker's environment: it must not launch again


@dataclass(frozen=True)
class Rank:
    """This process's place in a run: ``rank`` of ``world`` (0 of 1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        """The one process that prints and writes checkpoints."""
        return self.rank == 0


def torch_rank() -> Rank:
    """The rank ``torchrun`` (or jaxnet's launcher) put in the environment, if any."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    return Rank()


_JOINED = {"torch": False}  # whether jaxnet itself joined a torch process group here


def joined_torch_group() -> None:
    """Note that jaxnet started this process's torch process group (so :func:`leave` ends it)."""
    _JOINED["torch"] = True


def leave(code: int) -> int:
    """End a process in which jaxnet joined a torch process group now, with status ``code``,
    skipping the interpreter's shutdown; any other process (one whose group its own program
    started, a test) gets ``code`` back.

    gloo's worker threads drop a collective's tensors just after the collective returns, and
    dropping a tensor made in Python takes the GIL. A thread that asks for the GIL once the
    interpreter is finalizing is ended by ``pthread_exit``, whose unwinding through that
    ``noexcept`` destructor is ``std::terminate``: "terminate called without an active
    exception", SIGABRT (pytorch/pytorch#38228). A worker that exits straight after a
    collective (the all-reduce agreeing on a Ctrl-C) lost that race on a busy machine.
    ``destroy_process_group`` does not help: gloo's ``shutdown`` stops no thread.
    """
    dist = sys.modules.get("torch.distributed")
    if not _JOINED["torch"] or dist is None or not dist.is_initialized():
        return code
    with contextlib.suppress(Exception):  # a lost peer: the exit status is what matters now
        dist.destroy_process_group()  # what NCCL wants before exit; nothing for gloo's threads
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(argv: list[str], envs: list[dict[str, str]]) -> int:
    """Run ``python -m jaxnet ARGV`` once per environment in ``envs``; return the run's status.

    0 when every worker exits 0; 130 after Ctrl-C (passed on to the workers); otherwise the
    first failing worker's status, after stopping the others.
    """
    # Each worker in its own session, so that a terminal's Ctrl-C reaches the launcher alone
    # (which passes it on, once); and told to end if the launcher dies.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxnet", *argv],
            env={**os.environ, **env, WORKER: "1"},
            start_new_session=True,
            preexec_fn=_end_with_parent,
        )
        for env in envs
    ]
    interrupted = []

    def forward(signum, frame) -> None:
        interrupted.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0, 130)]
            if bad:  # a worker killed by a signal first: its peers' errors follow from its death
                rank, code = min(bad, key=lambda rc: (rc[1] >= 0, rc[0]))
                _stop(procs)
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                raise JaxnetError(
                    f"worker rank {rank} {how}; stopped the other workers (the last checkpoint is kept)"
                )
            if all(c is not None for c in codes):
                return 130 if interrupted or 130 in codes else 0
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker outlives a killed launcher until its own work ends


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the workers still running, SIGKILL those still there after GRACE seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cores() -> int:
    """The cores this process may run on (its affinity; a container's cgroup may allow fewer)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_share(world: int, available: int | None = None) -> dict[str, str]:
    """The cores (``available``, default :func:`cores`) shared out among ``world`` workers, as
    torchrun does, unless the user chose (``OMP_NUM_THREADS``)."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (available or cores()) // world))}


def torch_envs(world: int) -> list[dict[str, str]]:
    """What ``torchrun --nproc-per-node WORLD`` would give each worker, on 127.0.0.1."""
    port = str(free_port())
    common = {
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }
    return [{**common, **thread_share(world), "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(world)]


def jax_envs(processes: int, devices: int) -> list[dict[str, str]]:
    """Each JAX worker: its process id, the coordinator on 127.0.0.1, and its share of CPU devices."""
    if devices % processes:
        raise JaxnetError(f"--devices {devices} does not divide among --processes {processes}")
    coordinator = f"127.0.0.1:{free_port()}"
    local = f"--xla_force_host_platform_device_count={devices // processes}"
    flags = f"{os.environ.get('XLA_FLAGS', '')} {local}".strip()
    return [
        {"JAXNET_COORDINATOR": coordinator, "JAXNET_NUM_PROCESSES": str(processes), "JAXNET_PROCESS_ID": str(i),
         "XLA_FLAGS": flags, **thread_share(processes)}
        for i in range(processes)
    ]  # fmt: skip


def join_jax() -> Rank:
    """Join the JAX run the environment describes (``jax.distributed.initialize``, CPU
    collectives over gloo); alone, do nothing."""
    if "JAXNET_COORDINATOR" not in os.environ:
        return Rank()
    import jax

    rank, world = int(os.environ["JAXNET_PROCESS_ID"]), int(os.environ["JAXNET_NUM_PROCESSES"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(os.environ["JAXNET_COORDINATOR"], num_processes=world, process_id=rank)
    return Rank(rank, world)
