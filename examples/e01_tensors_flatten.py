"""Tensors, shapes and Flatten.

`nn.Flatten()` keeps dim 0 (the batch) and flattens the rest: its defaults are
`start_dim=1, end_dim=-1`. In JAX there is no layer for it: a `reshape` says the same
thing. The tutorial's images arrive as `[N, 1, 28, 28]` and leave Flatten as `[N, 784]`.
"""

# %% torch
import torch
from torch import nn


def torch_side(images):
    x = torch.from_numpy(images)  # [N, 1, 28, 28], shares memory with numpy
    flat = nn.Flatten()(x)  # start_dim=1: [N, 784]
    everything = nn.Flatten(start_dim=0)(x)  # [N * 784]
    return x.shape, flat.shape, everything.shape, flat


# %% jax
import jax.numpy as jnp


def jax_side(images):
    x = jnp.asarray(images)  # a copy on the device; immutable
    flat = x.reshape(x.shape[0], -1)  # what nn.Flatten() does
    everything = x.reshape(-1)
    return x.shape, flat.shape, everything.shape, flat


# %% check
def main():
    from examples._common import real_batch, show

    images, _ = real_batch(4)
    t, j = torch_side(images), jax_side(images)
    for name, a, b in zip(("input", "Flatten()", "Flatten(start_dim=0)"), t[:3], j[:3], strict=True):
        print(f"{name:22s} torch {tuple(a)}  jax {tuple(b)}")
        assert tuple(a) == tuple(b)
    row = slice(14 * 28 + 12, 14 * 28 + 15)  # pixels 12-14 of row 14: the middle of the image
    show("flat[0, 14 * 28 + 12 : 14 * 28 + 15]", t[3][0, row], j[3][0, row])
    assert (t[3].numpy() == jnp.asarray(j[3])).all()


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
