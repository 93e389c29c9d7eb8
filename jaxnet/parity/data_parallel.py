"""``jaxnet parity --devices N``: the same run data-parallel, against one device, in each framework.

Data parallelism must not change the training run: the global batch, its order and the
learning rate stay, and each device's share of a batch adds up to the same mean gradient.
What may change is the order of the reduction (each device sums its share, then the shares
are summed across devices), so the rows allow K times the float32 noise floor measured the
usual way (torch's one-process float32 run against its float64 run), scaled to the dtype.

Each run is a real ``jaxnet train`` (the JAX device mesh; torch's DistributedDataParallel
over N processes started by jaxnet's launcher, gloo on CPUs), compared through the
checkpoints it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from jaxnet import checkpoint
from jaxnet.config import RECIPES
from jaxnet.errors import JaxnetError
from jaxnet.numerics import rel_error
from jaxnet.parity import verdict
from jaxnet.parity.report import Row

RECIPE = "sgd-nesterov-wd-step"  # momentum, weight decay and a schedule: every piece of state


def recipe_flags(name: str = RECIPE) -> list[str]:
    opt = RECIPES[name]
    flags = ["--optimizer", opt.name, "--lr", str(opt.lr), "--weight-decay", str(opt.weight_decay)]
    flags += ["--schedule", opt.schedule] + (["--momentum", str(opt.momentum)] if opt.momentum else [])
    return flags + (["--nesterov"] if opt.nesterov else [])


def trained(
    workdir: Path, backend: str, dtype: str, devices: int, steps: int, seed: int
) -> dict[str, np.ndarray]:
    """The weights after ``steps`` steps of ``jaxnet train`` (one epoch of ``steps`` batches)."""
    save = workdir / f"{backend}-{dtype}-{devices}"
    cmd = [sys.executable, "-m", "jaxnet", "train", "--backend", backend, "--dtype", dtype, "--devices", str(devices),
           "--epochs", "1", "--train-limit", str(64 * steps), "--seed", str(seed), "--save", str(save),
           *recipe_flags()]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        last = (
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"status {result.returncode}"
        )
        raise JaxnetError(f"jaxnet train --backend {backend} --devices {devices} failed: {last}")
    return checkpoint.load(save).model


def section(devices: int, dtypes: tuple[str, ...], steps: int = 20, seed: int = 0) -> list[Row]:
    """Rows: jax on N devices against one, torch on N processes against one, and jax against
    torch both on N; in every requested dtype."""
    title = f"data-parallel ({devices} devices, {steps} steps)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {(b, d, n): trained(work, b, d, n, steps, seed) for b in ("jax", "torch") for d in dtypes
                for n in (1, devices)}  # fmt: skip
        for d in ("float32", "float64"):  # the floor's two runs
            runs.setdefault(("torch", d, 1), trained(work, "torch", d, 1, steps, seed))
        floor32 = max(
            rel_error(runs["torch", "float32", 1][k], runs["torch", "float64", 1][k])
            for k in runs["torch", "float64", 1]
        )
        for dtype in dtypes:
            floor = max(floor32 * verdict.ladder_factor(dtype), np.finfo(dtype).eps / 2)
            pairs = (
                ("jax", devices, "jax", 1),
                ("torch", devices, "torch", 1),
                ("jax", devices, "torch", devices),
            )
            for b1, n1, b2, n2 in pairs:
                a, b = runs[b1, dtype, n1], runs[b2, dtype, n2]
                worst = max(a, key=lambda k: rel_error(a[k], b[k]))
                quantity = f"{b1} on {n1} against {b2} on {n2}: {worst}"
                rows.append(verdict.normwise(title, quantity, dtype, a[worst], b[worst], floor,
                                             "floor: torch's float32 run against its float64 run"))  # fmt: skip
    return sorted(rows, key=lambda r: r.dtype != "float32")
