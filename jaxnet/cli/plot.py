"""Overlay the metrics of training runs (the JSON lines of jaxnet train --metrics)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", type=Path, nargs="+", help="metrics files, one per run; the file name labels the run"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import plot

    runs = {p.stem: plot.read_metrics(p) for p in args.runs}
    plot.plot_runs(runs, args.output)
    print(f"wrote {args.output}")
    return 0
