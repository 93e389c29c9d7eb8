"""Calibrate K: how far above its floor a correct run lands, and how far a planted fault does.

    python -m jaxnet.parity.calibrate --seeds 8 --steps 20 --out docs/calibration.md

For every seed and arithmetic order, a short parity run (every section but the epoch); for
every row, ``err / floor`` (K-free). Each order runs in a fresh process, because the
libraries read their threading and kernel settings once, when they load:

- ``default``: this project's settings (MKL strict reproducible mode, all cores);
- ``reversed-batches``: each batch's examples in reverse order, so every gradient sum (and
  the loss mean) runs in another order in both frameworks;
- ``mkl-compatible``: torch's GEMMs on MKL's generic kernels (another CPU's rounding);
- ``one-thread``: torch, MKL and XLA's Eigen on one thread.

Then every planted fault (:mod:`jaxnet.parity.faults`) once, float32 and float64 apart:
the ratio of its first failing row to that row's bound.

It calibrates the tutorial MLP's report (its four recipes); the CNN's report and ports
compared with ``parity.compare`` use the same K without a calibration of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from jaxnet.argtypes import positive_int

ORDERS: dict[str, tuple[dict[str, str], bool]] = {
    "default": ({}, False),
    "reversed-batches": ({}, True),
    "mkl-compatible": ({"MKL_CBWR": "COMPATIBLE"}, False),
    "one-thread": (
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
        False,
    ),
}


def _kind(section: str) -> str:
    return section.split(" ")[0]


def worker(order: str, seeds: int, steps: int) -> dict:
    """err/floor of every row with a finite bound, worst per (section, dtype), per seed."""
    from jaxnet import data, parity

    ds = data.load()
    worst: dict[str, float] = {}
    failed = []
    for seed in range(seeds):
        report = parity.run(ds, steps=steps, epoch_recipe=None, seed=seed, reverse_batches=ORDERS[order][1])
        failed += [f"seed {seed}: {r.section} / {r.quantity} ({r.dtype})" for r in report.failures]
        for row in report.rows:
            if row.floor > 0 and row.bound != float("inf"):
                key = f"{_kind(row.section)} {row.dtype}"
                worst[key] = max(worst.get(key, 0.0), row.err / row.floor)
    return {"order": order, "worst": worst, "failed": failed}


def fault_margins(steps: int) -> dict[str, dict[str, list]]:
    from jaxnet import data, parity
    from jaxnet.parity import faults

    ds = data.load()
    out: dict[str, dict[str, list]] = {}
    for name, fault in faults.FAULTS.items():
        out[name] = {}
        for dtype in ("float32", "float64"):
            with faults.planted(name):
                report = parity.run(
                    ds, dtypes=(dtype,), steps=steps, recipes=fault.recipes, epoch_recipe=None
                )
            first = report.first_failure()
            out[name][dtype] = (
                [f"{first.section} / {first.quantity}", first.ratio] if first else ["not caught", 0.0]
            )
    return out


def markdown(orders: list[dict], faults_: dict, seeds: int, steps: int) -> str:
    from jaxnet.parity import K
    from jaxnet.parity.faults import FAULTS

    keys = sorted({k for o in orders for k in o["worst"]})
    lines = [
        f"# Calibration of K (= {K:g})",
        "",
        f"`python -m jaxnet.parity.calibrate --seeds {seeds} --steps {steps}`: every section but the epoch,",
        f"{seeds} seeds, {steps} steps of each recipe, under each arithmetic order in a fresh process.",
        "Largest `err / floor` of a correct run (a row fails above K):",
        "",
        "| rows | " + " | ".join(o["order"] for o in orders) + " |",
        "|---|" + "---|" * len(orders),
    ]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{o['worst'].get(key, 0):.2f}" for o in orders) + " |")
    failed = [f for o in orders for f in o["failed"]]
    lines += [
        "",
        f"Rows failing in correct runs: {len(failed)}" + ("" if not failed else ": " + "; ".join(failed)),
    ]
    lines += [
        "",
        "Planted faults, float32 and float64 runs apart: the first failing row and its err / bound:",
        "",
    ]
    lines += ["| fault | first failing row | float32 | float64 |", "|---|---|---|---|"]
    for name, result in faults_.items():
        row = result["float32"][0]
        lines.append(
            f"| {name}: {FAULTS[name].description} | {row} | {result['float32'][1]:.3g} | {result['float64'][1]:.3g} |"
        )
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """The calibrator's flags (its ``-h``)."""
    p = argparse.ArgumentParser(
        prog="python -m jaxnet.parity.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=positive_int, default=8,
                   help="initial weights and batch orders per arithmetic order: seeds 0 .. N-1; "
                   "docs/calibration.md was made with 8 (default: %(default)s)")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=20,
                   help="optimizer steps of each recipe per seed, teacher-forced and free-running; "
                   "also each planted fault's run (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/calibration.md"),
                   help="the markdown report to write; pass docs/calibration.md to replace the "
                   "project's own (default: %(default)s, not a tracked file)")  # fmt: skip
    p.add_argument("--worker", choices=ORDERS, help=argparse.SUPPRESS)  # the fresh process of one order
    return p


def main() -> int:
    from jaxnet import process

    process.prepare(shared=True)  # before torch loads in the workers
    args = parser().parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seeds, args.steps)))
        return 0
    orders = []
    for order, (env, _) in ORDERS.items():
        cmd = [sys.executable, "-m", "jaxnet.parity.calibrate", "--worker", order, "--seeds", str(args.seeds),
               "--steps", str(args.steps)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=True)
        orders.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(order, orders[-1]["worst"], file=sys.stderr)
    text = markdown(orders, fault_margins(args.steps), args.seeds, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
