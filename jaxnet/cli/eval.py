"""Evaluate a checkpoint on the 10,000 test images: the tutorial's Test Error block.

Reads jaxnet checkpoints, plain safetensors state dicts and the tutorial's own
torch.save(model.state_dict(), "model.pth") files (those need torch).
"""

from __future__ import annotations

import argparse
import json

from jaxnet.argtypes import positive_int
from jaxnet.cli._common import add_backend, add_checkpoint, add_data_dir, load_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    add_backend(p)
    add_data_dir(p)
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="batch size of the per-batch mean loss the tutorial averages (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the tutorial's block"
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import data, run

    backend = load_backend(args)
    test = data.load(args.data_dir).test
    correct, avg_loss = backend.evaluate(test.float_images(backend.dtype), test.labels, args.batch_size)
    if args.json:
        result = {
            "correct": correct,
            "total": len(test),
            "accuracy": correct / len(test),
            "avg_loss": avg_loss,
            "backend": backend.name,
            "checkpoint": str(args.checkpoint),
        }
        print(json.dumps(result))
    else:
        print(run.test_error_block(correct, len(test), avg_loss))
    return 0
