"""Data-parallel training on each framework's own engine: the same run as on one device.

Real processes throughout, since processes are the subject: JAX on a device mesh (virtual
CPU devices; two processes joined by ``jax.distributed`` over gloo), torch's
DistributedDataParallel in processes jaxnet's launcher starts (gloo on 127.0.0.1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxnet import checkpoint, distributed
from jaxnet.cli import main
from jaxnet.numerics import rel_error

JAXNET = [sys.executable, "-m", "jaxnet"]
# 10 steps an epoch of a 32-wide MLP, evaluated on 64 test images: the subject is the split of
# each batch over devices and processes, which neither the width nor the test images change.
RUN = ["--dtype", "float64", "--train-limit", "640", "--hidden", "32", "--test-limit", "64", "--optimizer", "adam",
       "--seed", "4"]  # fmt: skip


def train(*args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*JAXNET, "train", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def weights(path: Path) -> dict:
    return checkpoint.load(path).model


def worst(a: dict, b: dict) -> float:
    return max(rel_error(a[k], b[k]) for k in b)


def test_data_parallel_runs_are_the_one_device_run_and_resume_across_counts_and_backends(tmp_path, capsys):
    """4 JAX devices in 2 processes, then 1 JAX device, then 2 torch processes: three epochs
    of one run, each resumed from the other's checkpoint, land where one torch process does.

    float64, 30 Adam steps: each device count only reorders the batch reductions (one
    rounding, ~1e-16, per step), and Adam can amplify a near-zero gradient's rounding by up
    to lr / eps = 1e5: 1e-10 bounds it, at any width (measured ~1e-14 with the 512-wide MLP).
    """
    four, one, two = tmp_path / "four", tmp_path / "one", tmp_path / "two"
    train(*RUN, "--epochs", "1", "--devices", "4", "--processes", "2", "--save", four)
    assert sorted(p.name for p in four.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert checkpoint.load(four).step == 10  # written once, by process 0, after the whole epoch
    alone = tmp_path / "alone"  # the first epoch on one device: the same run
    assert main(["train", *RUN, "--epochs", "1", "--save", str(alone)]) == 0
    assert worst(weights(four), weights(alone)) < 1e-12  # 10 steps of reordered reductions
    assert main(["train", *RUN, "--epochs", "2", "--resume", str(four), "--save", str(one)]) == 0
    train("--backend", "torch", "--devices", "2", "--epochs", "3", "--resume", one, "--save", two)
    straight = tmp_path / "straight"
    assert main(["train", "--backend", "torch", *RUN, "--epochs", "3", "--save", str(straight)]) == 0
    capsys.readouterr()
    assert checkpoint.load(two).step == 30 and checkpoint.load(two).backend == "torch"
    assert worst(weights(two), weights(straight)) < 1e-10


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _rank_of(pid: int) -> int | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(env[b"RANK"]) if b"RANK" in env else None


def _launch_and_wait_for_epoch_1(save: Path) -> subprocess.Popen:
    # 50 steps an epoch of a 64-wide MLP (the processes' start-up is most of the cost); 20
    # epochs, so that the run is still going when the test acts on epoch 1's checkpoint
    args = ["train", "--backend", "torch", "--devices", "2", "--train-limit", "3200", "--hidden", "64",
            "--test-limit", "64", "--epochs", "20", "--save", str(save)]  # fmt: skip
    proc = subprocess.Popen([*JAXNET, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not save.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    return proc


def test_a_worker_that_dies_ends_the_run_in_bounded_time_naming_its_rank(tmp_path):
    save = tmp_path / "ckpt"
    proc = _launch_and_wait_for_epoch_1(save)
    [victim] = [c for c in _children(proc.pid) if _rank_of(c) == 1]
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    _, err = proc.communicate(timeout=distributed.GRACE + 30)
    assert time.monotonic() - start < distributed.GRACE + 5
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "jaxnet: error: worker rank 1 was killed by signal 9; stopped the other workers (the last checkpoint is kept)"
    )
    assert checkpoint.load(save).step % 50 == 0  # the last complete epoch's checkpoint, intact


def test_ctrl_c_stops_every_worker_and_saves_once(tmp_path):
    save = tmp_path / "ckpt"
    proc = _launch_and_wait_for_epoch_1(save)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("interrupted at step") == 1 and "Traceback" not in err  # rank 0 alone reports
    step = checkpoint.load(save).step
    assert step >= 50 and step % 10 == 0, step  # saved after a chunk, by one process


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backend", "torch", "--devices", "3"],
            "--batch-size has 64 examples, which do not divide among 3 devices",
        ),
        (["--devices", "2", "--train-limit", "97"], "the last batch of an epoch of 97 has 33 examples"),
        (["--devices", "2"], "--devices 2: JAX sees 1 cpu device(s)"),  # this process started JAX with one
        (["--backend", "torch", "--processes", "2"], "--processes is for --backend jax"),
    ],
)
def test_impossible_splits_are_one_line_errors(args, message, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored after: --devices sets it
    import jax

    jax.devices()  # JAX started here with one device, whichever tests ran before in this process
    try:
        code = main(["train", "--epochs", "1", *args])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
