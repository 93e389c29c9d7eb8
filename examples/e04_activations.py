"""Activations: ReLU and its derivative at 0, and GELU, sigmoid, tanh.

At exactly 0 ReLU has no derivative; torch and `jax.nn.relu` both use 0. A hand-written
`jnp.maximum(x, 0)` gets 0.5 from JAX's rule for max (ties split the gradient), which
changes gradients whenever a pre-activation is exactly 0 (zero image, zero bias).
torch's `nn.GELU()` is the exact erf form; `jax.nn.gelu` defaults to the tanh
approximation, so pass `approximate=False` to match.
"""

# %% torch
import torch
from torch import nn


def torch_side(x):
    x = torch.tensor(x, requires_grad=True)
    out = {}
    for name, act in {
        "relu": nn.ReLU(),
        "gelu": nn.GELU(),
        "sigmoid": nn.Sigmoid(),
        "tanh": nn.Tanh(),
    }.items():
        (grad,) = torch.autograd.grad(act(x).sum(), x)
        out[name] = (act(x).detach().numpy(), grad.numpy())
    return out


# %% jax
import jax
import jax.numpy as jnp


def jax_side(x):
    acts = {
        "relu": jax.nn.relu,
        "gelu": lambda v: jax.nn.gelu(v, approximate=False),
        "sigmoid": jax.nn.sigmoid,
        "tanh": jnp.tanh,
        "maximum(x, 0)": lambda v: jnp.maximum(v, 0.0),
    }
    return {name: (f(x), jax.vmap(jax.grad(f))(x)) for name, f in acts.items()}


# %% check
def main():
    import numpy as np

    from examples._common import show

    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])  # float64: both sides' elementwise results agree to ~1e-16
    t = torch_side(x)
    with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
        j = {name: (np.asarray(v), np.asarray(g)) for name, (v, g) in jax_side(x).items()}
    for name in t:
        show(f"{name}'(x) at x = {x.tolist()}", t[name][1], j[name][1])
        assert np.allclose(t[name][0], j[name][0], rtol=1e-12, atol=1e-15)  # float64 elementwise
        assert np.allclose(t[name][1], j[name][1], rtol=1e-12, atol=1e-15)
    print(f"jnp.maximum(x, 0)'(0) = {float(j['maximum(x, 0)'][1][2])}  <- not torch's 0")
    assert float(j["maximum(x, 0)"][1][2]) == 0.5


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
