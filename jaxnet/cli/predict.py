"""Predicted and actual class of test images, as the quickstart prints them.

[0] Predicted: "Ankle boot", Actual: "Ankle boot"
"""

from __future__ import annotations

import argparse

from jaxnet.argtypes import nonneg_int
from jaxnet.cli._common import add_backend, add_checkpoint, add_data_dir, load_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument("--index", type=nonneg_int, nargs="+", default=[0],
                   help="test-set indices, 0..9999 (default: %(default)s)")  # fmt: skip
    add_backend(p)
    add_data_dir(p)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import data, registry
    from jaxnet.errors import JaxnetError

    backend = load_backend(args)
    if registry.family(backend.config).data != registry.IMAGES:
        raise JaxnetError(f"{args.checkpoint}: a {backend.config.kind} checkpoint; predict classifies "
                          "images (for text: jaxnet generate)")  # fmt: skip
    test = data.load(args.data_dir).test
    bad = [i for i in args.index if i >= len(test)]
    if bad:
        parser.error(f"--index {bad[0]} is out of range (the test set has {len(test)} images)")
    logits = backend.predict(test[args.index].float_images(backend.dtype))
    for i, row in zip(args.index, logits, strict=True):
        predicted, actual = data.CLASS_NAMES[int(row.argmax())], data.CLASS_NAMES[int(test.labels[i])]
        print(f'[{i}] Predicted: "{predicted}", Actual: "{actual}"')
    return 0
