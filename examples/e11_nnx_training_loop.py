"""Flax's own training loop: `nnx.Optimizer`, `nnx.jit`, `nnx.value_and_grad`.

This is the loop the Flax documentation teaches, and it reads like torch's: the model and
the optimizer are stateful objects, `nnx.value_and_grad(loss_fn)(model)` differentiates with
respect to the model's `nnx.Param`s, and `optimizer.update(model, grads)` changes the model
in place, like `optimizer.step()`; `@nnx.jit` compiles the step and carries those in-place
changes out of it. Pick it for readable training code that stays close to PyTorch. Pick the
functional loop of example 9 (`nnx.split` once, a pure step from arrays to
arrays) when the step must be a pure function: `jax.lax.scan` over many steps in one
compiled call, sharding or donating the parameters and optimizer state, or state kept as
plain arrays; jaxnet's JAX backend trains that way. The two are one computation, written two ways.

Both loops here take 20 steps in float64, where the two frameworks agree to within 1e-12
at every step on every CPU (float32 is example 9's business).
"""

# %% torch
import torch
from torch import nn


class NeuralNetwork(nn.Module):  # the tutorial's model
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def torch_side(images, labels, state, steps):  # images: float64 [N, 1, 28, 28]
    model = NeuralNetwork().double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-1)

    def train_step(X, y):
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()  # the model changes in place
        optimizer.zero_grad()
        return loss.item()

    X_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    losses = [train_step(X_all[i : i + 64], y_all[i : i + 64]) for i in range(0, 64 * steps, 64)]
    return model, losses


# %% jax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


class FlaxNeuralNetwork(nnx.Module):  # the same model in Flax NNX
    def __init__(self, rngs, dtype=jnp.float32):
        self.linear_relu_stack = nnx.Sequential(
            nnx.Linear(28 * 28, 512, param_dtype=dtype, rngs=rngs),
            jax.nn.relu,  # derivative 0 at 0, like nn.ReLU
            nnx.Linear(512, 512, param_dtype=dtype, rngs=rngs),
            jax.nn.relu,
            nnx.Linear(512, 10, param_dtype=dtype, rngs=rngs),
        )

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)  # nn.Flatten()
        return self.linear_relu_stack(x)


def load_torch_state(model, state):  # a torch state_dict (as numpy) into the Flax model
    for i in (0, 2, 4):  # the Linear layers; same indices as torch's Sequential
        layer = model.linear_relu_stack.layers[i]
        layer.kernel[...] = state[f"linear_relu_stack.{i}.weight"].T  # [out, in] -> [in, out]
        layer.bias[...] = state[f"linear_relu_stack.{i}.bias"]


def jax_side(images, labels, state, steps):  # images: float64 [N, 1, 28, 28]
    model = FlaxNeuralNetwork(nnx.Rngs(0), dtype=images.dtype)
    load_torch_state(model, state)
    optimizer = nnx.Optimizer(model, optax.sgd(learning_rate=1e-1), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, X, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(X), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)  # gradients for the nnx.Params
        optimizer.update(model, grads)  # the model changes in place, like optimizer.step()
        return loss

    losses = [
        float(train_step(model, optimizer, images[i : i + 64], labels[i : i + 64]))
        for i in range(0, 64 * steps, 64)
    ]
    return model, losses


# %% check
def main():
    import numpy as np

    from jaxnet import data
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import ModelConfig

    steps = 20
    train = data.load().train
    images, labels = train[: 64 * steps].float_images("float64"), train.labels[: 64 * steps]
    state = init_state_dict(ModelConfig(), seed=0, dtype="float64")
    torch_model, torch_losses = torch_side(images, labels, state, steps)
    with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
        jax_model, jax_losses = jax_side(images, labels, state, steps)
        jax_state = {
            f"linear_relu_stack.{i}.{name}": np.asarray(value)
            for i in (0, 2, 4)
            for name, value in (
                ("weight", jax_model.linear_relu_stack.layers[i].kernel[...].T),
                ("bias", jax_model.linear_relu_stack.layers[i].bias[...]),
            )
        }
    for step in (0, 9, 19):
        print(f"loss at step {step + 1:2d}: torch {torch_losses[step]:.8f}  jax {jax_losses[step]:.8f}")
    # float64, 20 free-running steps: rounding of ~1e-16 per operation, grown through 20 steps
    # of a well-conditioned descent, stays below 1e-12 relative (measured here: 5e-16); a
    # float64 ReLU tie (a pre-activation within ~1e-16 of 0) is vanishingly unlikely.
    assert np.allclose(torch_losses, jax_losses, rtol=1e-12, atol=0)
    worst = max(
        np.abs(jax_state[k] - v.detach().numpy()).max() / np.abs(v.detach().numpy()).max()
        for k, v in torch_model.state_dict().items()
    )
    assert worst < 1e-12, worst
    print("parameters after 20 steps: the same in both frameworks to 1e-12 of each tensor's largest element")
    assert torch_losses[-1] < 0.9 * torch_losses[0]  # it trains


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
