"""Time both backends' training loops beside plain loops and this machine's measured limits.

Each path and each limit runs in its own process holding one framework, on the real
training set with the tutorial's recipe (``--model cnn``: examples/mnist's CNN and recipe); epoch times are medians of --epochs timed epochs
after a warm-up one; limits (GEMM peaks per framework) the best of several trials; start-up
the wall time of whole commands against a bare import.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxnet.argtypes import nonneg_int, positive_int
from jaxnet.bench import CNN_PATHS, PATHS
from jaxnet.registry import BUILTIN as MODELS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=3,
        help="timed epochs per path, after one warm-up (default: %(default)s)",
    )
    p.add_argument("--model", choices=MODELS, default="mlp",
                   help="whose training paths to time: the tutorial MLP's, or examples/mnist's CNN's with its recipe (default: %(default)s)")  # fmt: skip
    p.add_argument("--paths", nargs="+", choices=PATHS + CNN_PATHS,
                   help="training paths to time, of either model (default: all of --model's)")  # fmt: skip
    p.add_argument(
        "--train-limit", type=nonneg_int, default=0, help="first N training images (default: 0, all)"
    )
    p.add_argument("--devices", type=positive_int, default=1,
                   help="also time whole data-parallel runs on N devices in each framework, beside one (default: %(default)s)")  # fmt: skip
    p.add_argument("--no-startup", action="store_true", help="skip timing the start-up of whole commands")
    p.add_argument("--json", type=Path, help="also write the results as JSON")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import bench

    paths = args.paths or (CNN_PATHS if args.model == "cnn" else PATHS)
    report = bench.run_bench(tuple(paths), args.epochs, args.train_limit, not args.no_startup, args.devices)
    bench.print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0
