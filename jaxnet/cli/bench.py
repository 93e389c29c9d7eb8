"""Time both backends' training loops beside plain loops and this machine's measured limits.

Each path and each limit runs in its own process holding one framework, on the real
training set with each model's recipe: the tutorial's MLP (the default), ``--model cnn``
(examples/mnist's CNN and recipe), ``--model resnet`` and ``--model gpt`` (the port families
with their ``jaxnet train`` recipes and batch sizes, beside a plain torch loop and a plain
NNX loop). Epoch times are medians of --epochs timed epochs after a warm-up one; limits
(every GEMM and convolution of a step per framework, the fastest per kernel summed into the
model's floor) the best of several trials; start-up the wall time of whole commands against
a bare import.

On a CPU a ResNet step (128 images) is 15 GFLOP and a GPT step (64 windows of 128
characters) 46 GFLOP: their epochs default to 3 steps (--train-limit 384 images, 192 windows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxnet.argtypes import nonneg_int, positive_int
from jaxnet.bench import ALL_PATHS, DEFAULT_LIMIT, MODEL_PATHS, model_name
from jaxnet.errors import JaxnetError

_LIMITS = ", ".join(f"{m} {n}" for m, n in DEFAULT_LIMIT.items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=3,
        help="timed epochs per path, after one warm-up (default: %(default)s)",
    )
    p.add_argument("--model", choices=tuple(MODEL_PATHS), default="mlp",
                   help="whose training paths to time: the tutorial MLP's, examples/mnist's CNN's, or a port "
                        "family's (resnet, gpt), each with its recipe (default: %(default)s)")  # fmt: skip
    p.add_argument("--paths", nargs="+", choices=ALL_PATHS, metavar="PATH",
                   help=f"training paths to time, of any model (default: all of --model's); one of {', '.join(ALL_PATHS)}")  # fmt: skip
    p.add_argument("--train-limit", type=nonneg_int, default=None,
                   help=f"samples per epoch: the first N training images, the GPT's N windows (default: {_LIMITS}; "
                        "the MLP and the CNN: 0, all 60,000)")  # fmt: skip
    p.add_argument("--devices", type=positive_int, default=1,
                   help="also time whole data-parallel runs on N devices in each framework, beside one (default: %(default)s)")  # fmt: skip
    p.add_argument("--no-startup", action="store_true", help="skip timing the start-up of whole commands")
    p.add_argument("--json", type=Path, help="also write the results as JSON")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import registry

    paths = args.paths or MODEL_PATHS[args.model]
    ports = sorted({model_name(p) for p in paths if registry.family(model_name(p)).engine == "port"})
    if args.devices > 1 and ports:
        raise JaxnetError(
            f"--devices {args.devices}: the port engine ({', '.join(ports)}) runs on one device"
        )
    from jaxnet import bench

    report = bench.run_bench(tuple(paths), args.epochs, args.train_limit, not args.no_startup, args.devices)
    bench.print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0
