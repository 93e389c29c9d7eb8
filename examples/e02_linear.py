"""`nn.Linear` is `y = x W^T + b`; a Flax `Linear` is `y = x K + b` with `K = W^T`.

torch stores `weight` as `[out, in]`, Flax stores `kernel` as `[in, out]`. Moving weights
across is one transpose, and it must happen exactly once: for a square layer (512 x 512) a
missing transpose still loads, and silently computes something else.
"""

# %% torch
import torch
from torch import nn


def torch_side(x):
    torch.manual_seed(0)
    layer = nn.Linear(784, 512)  # weight [512, 784], bias [512]
    y = layer(torch.from_numpy(x))  # x @ weight.T + bias
    return layer.weight.detach().numpy(), layer.bias.detach().numpy(), y.detach().numpy()


# %% jax
import jax.numpy as jnp
from flax import nnx


def jax_side(x, weight, bias):
    layer = nnx.Linear(784, 512, rngs=nnx.Rngs(0))  # kernel [784, 512]
    layer.kernel[...] = jnp.asarray(weight.T)  # torch [out, in] -> flax [in, out]
    layer.bias[...] = jnp.asarray(bias)
    return layer.kernel.shape, layer(jnp.asarray(x))


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show

    images, _ = real_batch(4)
    x = images.reshape(4, -1)
    weight, bias, y_torch = torch_side(x)
    kernel_shape, y_jax = jax_side(x, weight, bias)
    print(f"torch weight {weight.shape} (out, in); flax kernel {kernel_shape} (in, out)")
    show("y[0, :3]", y_torch[0, :3], y_jax[0, :3])
    # float32, 784-term dot products: both sides agree far below 16 * sqrt(784) * 2^-24 = 2.7e-5.
    assert np.abs(y_torch - np.asarray(y_jax)).max() / np.abs(y_torch).max() < 2.7e-5


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
