"""Convert model weights between the tutorial's .pth and safetensors, either way.

The target's suffix picks the format: .pth or .pt writes torch.save(state_dict) (needs
torch); anything else writes a safetensors file with torch's keys and layout. The source may
be any checkpoint jaxnet reads; only the weights are converted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxnet.errors import JaxnetError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="a checkpoint directory, a .safetensors file or a tutorial .pth")
    p.add_argument("target", type=Path, help="the file to write: .pth/.pt or .safetensors")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import checkpoint, files

    ckpt = checkpoint.load(args.source)
    if args.target.suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise JaxnetError("writing .pth needs torch: pip install 'jaxnet-parity[torch]'") from None
        import io

        buffer = io.BytesIO()
        torch.save({k: torch.from_numpy(v.copy()) for k, v in ckpt.model.items()}, buffer)
        files.atomic_write(args.target, buffer.getvalue())
    else:
        checkpoint.save_weights(args.target, ckpt.model)
    print(f"wrote {args.target} ({len(ckpt.model)} tensors, {ckpt.dtype})")
    return 0
