"""Calibrate K: how far above its floor a correct run lands, and how far a planted fault does.

    python -m jaxnet.parity.calibrate --seeds 8 --steps 20 --jobs 16 --out docs/calibration.md

For every model, seed and arithmetic order, a short parity run (every section but the epoch);
for every row, ``err / floor`` (K-free). Each (model, seed, order) runs in a fresh process,
``--jobs`` of them at once, because the libraries read their threading and kernel settings
once, when they load. The models:

- ``mlp``: the tutorial MLP's report (``jaxnet parity``, its four recipes);
- ``cnn``: examples/mnist's CNN's report (``jaxnet parity --model cnn``, its Adadelta recipe);
- ``resnet``: the BasicBlock ResNet (``torchref.models.resnet`` / ``jaxnet.models.resnet``,
  (4, 8, 8) x 1) through ``parity.compare``: 16 Fashion-MNIST images, SGD-Nesterov, train mode,
  the BatchNorms its ReLUs read named (``jaxnet parity --model resnet``'s path:
  :mod:`jaxnet.parity.family`);
- ``gpt``: nanoGPT (1 layer, 2 heads, width 16, block 16) through ``parity.compare``: 8
  windows of the fortunes corpus, AdamW with warm-up, cosine and clipping (likewise).

The arithmetic orders:

- ``default``: this project's settings (MKL strict reproducible mode, all cores);
- ``reversed-batches``: each batch's examples in reverse order, so every gradient sum (and
  the loss mean) runs in another order in both frameworks;
- ``mkl-compatible``: torch's GEMMs on MKL's generic kernels (another CPU's rounding);
- ``one-thread``: torch, MKL and XLA's Eigen on one thread;
- ``xla-one-thread``: XLA's Eigen alone on one thread (``--xla_cpu_multi_thread_eigen=false``),
  torch as by default.

With ``--jobs N`` > 1, an order that does not set its own thread counts runs torch and MKL on
``cores // N`` threads (another order of their reductions), so that N processes share the
machine. Then every planted fault (:mod:`jaxnet.parity.faults`) once, on the MLP, float32 and
float64 apart: the ratio of its first failing row to that row's bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaxnet.argtypes import positive_int

MODELS = ("mlp", "cnn", "resnet", "gpt")

ORDERS: dict[str, tuple[dict[str, str], bool]] = {
    "default": ({}, False),
    "reversed-batches": ({}, True),
    "mkl-compatible": ({"MKL_CBWR": "COMPATIBLE"}, False),
    "one-thread": (
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
        False,
    ),
    "xla-one-thread": ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, False),
}


def _kind(section: str) -> str:
    return section.split(" ")[0]


def worker(order: str, model: str, seed: int, steps: int) -> dict:
    """err/floor of every row with a finite bound, worst per (section, dtype), for one seed."""
    report = _report(model, seed, steps, ORDERS[order][1])
    worst: dict[str, float] = {}
    for row in report.rows:
        if row.floor > 0 and row.bound != float("inf"):
            key = f"{_kind(row.section)} {row.dtype}"
            worst[key] = max(worst.get(key, 0.0), row.err / row.floor)
    failed = [f"{model} seed {seed}: {r.section} / {r.quantity} ({r.dtype})" for r in report.failures]
    return {"order": order, "model": model, "seed": seed, "worst": worst, "failed": failed}


def _report(model: str, seed: int, steps: int, reverse: bool):
    """One correct run of ``model`` (``reverse``: each batch's examples in reverse order)."""
    from jaxnet import data, parity

    if model in ("mlp", "cnn"):
        return parity.run(
            data.load(), model=model, steps=steps, epoch_recipe=None, seed=seed, reverse_batches=reverse
        )
    from jaxnet.families import GPTConfig, ResNetConfig
    from jaxnet.parity import family

    if model == "resnet":
        config, examples = ResNetConfig((4, 8, 8), 1), 16
    else:
        from jaxnet import text

        sizes = dict(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
        config, examples = GPTConfig(vocab_size=text.load().vocab_size, **sizes), 8
    return family.report(model, config, examples=examples, steps=steps, seed=seed, reverse=reverse)


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


def markdown(
    orders: list[dict], faults_: dict, seeds: int, steps: int, models=MODELS, label: str = ""
) -> str:
    """The calibration report: per model, the largest ``err / floor`` of each kind of row
    under each arithmetic order (over the seeds); then the planted faults' margins."""
    from jaxnet.parity import K
    from jaxnet.parity.faults import FAULTS

    names = list(dict.fromkeys(o["order"] for o in orders))
    chosen = "" if set(names) == set(ORDERS) else f" --orders {','.join(names)}"
    lines = [
        f"# Calibration of K (= {K:g})",
        "",
        *([label, ""] if label else []),
        f"`python -m jaxnet.parity.calibrate --seeds {seeds} --steps {steps} --models {','.join(models)}{chosen}`: every",
        f"section but the epoch, {seeds} seeds, {steps} steps of each recipe, under each arithmetic order in a",
        "fresh process. Largest `err / floor` of a correct run over the seeds (a row fails above K):",
    ]
    for model in models:
        runs = [o for o in orders if o.get("model", "mlp") == model]
        worst = {n: {} for n in names}
        for o in runs:
            for key, v in o["worst"].items():
                worst[o["order"]][key] = max(worst[o["order"]].get(key, 0.0), v)
        keys = sorted({k for w in worst.values() for k in w})
        lines += [
            "",
            f"## {model}",
            "",
            "| rows | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for key in keys:
            lines.append(f"| {key} | " + " | ".join(f"{worst[n].get(key, 0):.2f}" for n in names) + " |")
        top = max((v for w in worst.values() for v in w.values()), default=0.0)
        lines += ["", f"Largest over every row and order: {top:.2f} (K = {K:g})."]
    failed = [f for o in orders for f in o["failed"]]
    lines += [
        "",
        f"Rows failing in correct runs: {len(failed)}" + ("" if not failed else ": " + "; ".join(failed)),
    ]
    if faults_:
        lines += [
            "",
            "Planted faults (on the MLP), float32 and float64 runs apart: the first failing row and its err / bound:",
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
    p.add_argument("--models", type=_models, default=MODELS,
                   help=f"comma-separated models to calibrate, of {','.join(MODELS)} (default: all)")  # fmt: skip
    p.add_argument("--orders", type=_orders, default=tuple(ORDERS),
                   help=f"comma-separated arithmetic orders, of {','.join(ORDERS)} (default: all)")  # fmt: skip
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="processes run at once, each one (model, seed, order); the full run on a "
                   "16-core machine: --jobs 16 (default: %(default)s)")  # fmt: skip
    p.add_argument("--no-faults", action="store_true",
                   help="skip the planted faults' margins (default: measure them, on the MLP)")  # fmt: skip
    p.add_argument("--label", default="",
                   help="a line under the title, e.g. 'a small run, 2 seeds: not the calibration' "
                   "(default: none)")  # fmt: skip
    p.add_argument("--worker", choices=ORDERS, help=argparse.SUPPRESS)  # the fresh process of one run
    p.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    return p


def _models(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"models must be among {','.join(MODELS)}, got {text!r}")
    return names


def _orders(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in ORDERS for n in names):
        raise argparse.ArgumentTypeError(f"orders must be among {','.join(ORDERS)}, got {text!r}")
    return names


def run_one(order: str, model: str, seed: int, steps: int, jobs: int) -> dict:
    """One (order, model, seed) in a fresh process with the order's environment."""
    env = {**os.environ, **ORDERS[order][0]}
    if jobs > 1 and "OMP_NUM_THREADS" not in ORDERS[order][0]:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "jaxnet.parity.calibrate", "--worker", order, "--model", model,
           "--seed", str(seed), "--steps", str(steps)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"order": order, "model": model, "seed": seed, "worst": {},
                "failed": [f"{model} seed {seed} ({order}): the run failed: {tail}"]}  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    from jaxnet import process

    process.prepare(shared=True)  # before torch loads in the workers
    args = parser().parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.seed, args.steps)))
        return 0
    work = [(o, m, s) for m in args.models for s in range(args.seeds) for o in args.orders]
    with ThreadPoolExecutor(args.jobs) as pool:  # each thread waits on its own process
        futures = [pool.submit(run_one, o, m, s, args.steps, args.jobs) for o, m, s in work]
        orders = []
        for future in futures:
            orders.append(future.result())
            done = orders[-1]
            print(done["order"], done["model"], done["seed"], done["worst"], done["failed"], file=sys.stderr)
    margins = {} if args.no_faults else fault_margins(args.steps)
    text = markdown(orders, margins, args.seeds, args.steps, args.models, args.label)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(
        json.dumps({"runs": orders, "faults": margins}, indent=1) + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
