"""Evaluate a checkpoint on the 10,000 test images: the tutorial's Test Error block (a GPT's:
its validation loss in nats per character on the fortunes corpus).

Reads jaxnet checkpoints, plain safetensors state dicts and the tutorial's own
torch.save(model.state_dict(), "model.pth") files (those need torch). Models with BatchNorm
are evaluated in eval mode, on the running statistics the checkpoint holds.
"""

from __future__ import annotations

import argparse
import json

from jaxnet.argtypes import nonneg_int, positive_int
from jaxnet.cli._common import add_backend, add_checkpoint, add_corpus_dir, add_data_dir, load_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    add_backend(p)
    add_data_dir(p)
    add_corpus_dir(p)
    p.add_argument("--test-limit", type=nonneg_int, default=0,
                   help="the first N test images (gpt: validation windows) only (default: 0, all)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="batch size of the per-batch mean loss the tutorial averages (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the tutorial's block"
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet.cli.train import load_task
    from jaxnet.config import TrainConfig

    backend = load_backend(args)
    task = load_task(args, backend.config, TrainConfig(dtype=backend.dtype, epoch_steps=1))
    x, y = task.eval_arrays()
    correct, avg_loss = backend.evaluate(x, y, args.batch_size)
    if args.json:
        total = int(y.size)
        result = {
            "correct": correct,
            "total": total,
            "accuracy": correct / total,
            "avg_loss": avg_loss,
            "backend": backend.name,
            "checkpoint": str(args.checkpoint),
        }
        print(json.dumps(result))
    else:
        print(task.report(correct, avg_loss))
    return 0
