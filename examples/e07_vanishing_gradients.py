"""Vanishing gradients: a deep sigmoid stack against a deep ReLU stack.

sigmoid'(x) <= 1/4, so each sigmoid layer can shrink the backpropagated gradient by 4x or
more: after 12 layers the first layer's gradient is orders of magnitude smaller than the
last's. ReLU passes gradients through unchanged where it is active. The per-layer gradient
norms come out the same in both frameworks (float64, same weights).
"""

# %% torch
import torch
from torch import nn


def torch_side(x, y, weights, activation):
    layers = []
    for w, b in weights:
        linear = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        linear.weight.data, linear.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        layers += [linear, nn.Sigmoid() if activation == "sigmoid" else nn.ReLU()]
    model = nn.Sequential(nn.Flatten(), *layers[:-1])
    nn.CrossEntropyLoss()(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    return [m.weight.grad.norm().item() for m in model if isinstance(m, nn.Linear)]


# %% jax
import jax
import jax.numpy as jnp
import optax


def jax_side(x, y, weights, activation):
    act = jax.nn.sigmoid if activation == "sigmoid" else jax.nn.relu
    params = [(jnp.asarray(w.T), jnp.asarray(b)) for w, b in weights]  # kernels [in, out]

    def loss_fn(params):
        h = x.reshape(len(x), -1)
        for i, (k, b) in enumerate(params):
            h = h @ k + b
            h = act(h) if i < len(params) - 1 else h
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    grads = jax.jit(jax.grad(loss_fn))(params)
    return [float(jnp.linalg.norm(k)) for k, _ in grads]


# %% check
def main(plot_path=None):
    import itertools

    import numpy as np

    from examples._common import real_batch

    x, y = real_batch(64, "float64")
    rng = np.random.default_rng(0)
    sizes = [784] + [64] * 11 + [10]
    weights = [(rng.uniform(-1, 1, (o, i)) / np.sqrt(i), np.zeros(o)) for i, o in itertools.pairwise(sizes)]
    norms = {}
    for activation in ("sigmoid", "relu"):
        t = torch_side(x, y, weights, activation)
        with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
            j = jax_side(x, y, weights, activation)
        norms[activation] = t
        print(f"{activation:8s} |dL/dW| layer 1 .. 12 (torch): " + " ".join(f"{v:.1e}" for v in t))
        print(f"{activation:8s} |dL/dW| layer 1 .. 12 (jax):   " + " ".join(f"{v:.1e}" for v in j))
        assert np.allclose(t, j, rtol=1e-10, atol=0)  # float64 through 12 layers
    ratio = {a: norms[a][0] / norms[a][-1] for a in norms}
    print(f"first/last layer gradient norm: sigmoid {ratio['sigmoid']:.1e}, relu {ratio['relu']:.1e}")
    assert ratio["sigmoid"] < 1e-3 * ratio["relu"]
    if plot_path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
        for activation, values in norms.items():
            ax.semilogy(range(1, len(values) + 1), values, "o-", label=activation)
        ax.set(xlabel="layer", ylabel="gradient norm |dL/dW|", title="12-layer MLP on Fashion-MNIST")
        ax.legend()
        fig.savefig(plot_path, dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
