"""Flags and steps several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxnet.config import BACKENDS, DEVICES


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        help="directory holding the four Fashion-MNIST .gz files (default: $JAXNET_DATA, "
        "then /usr/share/datasets/fashion-mnist, then the user cache, downloading if needed)",
    )


def add_corpus_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus-dir",
        type=Path,
        help="directory holding the fortunes files the GPT trains on (default: /usr/share/games/fortunes, "
        "from Debian's fortunes package; checksummed)",
    )


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=BACKENDS, default="jax", help="framework to run in (default: %(default)s)"
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto: the framework's default device (default: %(default)s)",
    )


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a checkpoint directory, a .safetensors state dict or a tutorial .pth",
    )


def load_backend(args: argparse.Namespace):
    """The checkpoint ``args.checkpoint`` in the backend ``args.backend``."""
    from jaxnet import checkpoint
    from jaxnet.backends import get_backend

    ckpt = checkpoint.load(args.checkpoint)
    return get_backend(args.backend, ckpt.config, dtype=str(ckpt.dtype), device=args.device, state=ckpt.model)
