"""Autograd against `jax.grad`.

torch records operations on tensors with `requires_grad=True`; `loss.backward()` *adds*
gradients into each parameter's `.grad` (so `zero_grad()` before the next step), and
`torch.no_grad()` / `.detach()` stop recording. JAX differentiates a pure function of
its inputs: `jax.grad(loss)(params)` returns the gradients as a new pytree;
`jax.value_and_grad` also returns the loss; `jax.lax.stop_gradient` is `.detach()`;
"not differentiating" is simply not passing something as an argument.
`torch.func.grad` is torch's functional counterpart of `jax.grad`.
"""

# %% torch
import torch
from torch import nn
from torch.func import functional_call, grad


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


def torch_side(x, y, state):
    model = NeuralNetwork().double()  # float64 before loading, or the weights are cast down
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss = loss_fn(model(x), y)
    loss.backward()  # fills .grad
    first = model.linear_relu_stack[0].bias.grad.clone()
    loss_fn(model(x), y).backward()  # no zero_grad(): accumulates
    doubled = model.linear_relu_stack[0].bias.grad.clone()
    model.zero_grad()  # set_to_none=True: .grad is None again
    with torch.no_grad():
        frozen = model(x)  # no graph recorded
    params = {k: v.detach() for k, v in model.named_parameters()}
    functional = grad(lambda p: loss_fn(functional_call(model, p, (x,)), y))(params)
    return loss.item(), first, doubled, frozen.requires_grad, functional["linear_relu_stack.0.bias"]


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


def jax_side(x, y, state):
    model = FlaxNeuralNetwork(nnx.Rngs(0), dtype=jnp.float64)
    load_torch_state(model, state)
    graphdef, params = nnx.split(model, nnx.Param)  # the parameters as a pytree

    def loss_fn(params):  # a pure function of what is differentiated
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)  # nothing accumulates anywhere
    bias_grad = grads["linear_relu_stack"]["layers"][0]["bias"][...]
    # stop_gradient is .detach(): no gradient flows through what it wraps
    detached = jax.jit(jax.grad(lambda p: jax.lax.stop_gradient(loss_fn(p))))(params)
    return float(loss), bias_grad, detached["linear_relu_stack"]["layers"][0]["bias"][...]


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import ModelConfig

    x, y = real_batch(16, "float64")  # float64: the gradients agree to ~1e-13 on every CPU
    state = init_state_dict(ModelConfig(), seed=0, dtype="float64")
    t_loss, t_first, t_doubled, t_requires_grad, t_functional = torch_side(x, y, state)
    with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
        j_loss, j_grad, j_detached = (np.asarray(v) for v in jax_side(x, y, state))
    show("loss", t_loss, j_loss)
    show("d loss / d bias0 [:3]", t_first[:3], j_grad[:3])
    show(
        "after a second backward() without zero_grad (torch) / 2 x grad (jax)", t_doubled[:3], 2 * j_grad[:3]
    )
    print(
        f"output under torch.no_grad() requires_grad = {t_requires_grad}; grad through stop_gradient = {float(np.abs(j_detached).max())}"
    )
    assert np.allclose(t_first.numpy(), j_grad, rtol=1e-11, atol=1e-17)  # float64, reductions ~1800
    assert np.allclose(t_doubled.numpy(), 2 * t_first.numpy(), rtol=1e-15)
    assert np.allclose(t_functional.numpy(), t_first.numpy(), rtol=1e-13, atol=1e-18)
    assert not t_requires_grad and float(np.abs(j_detached).max()) == 0.0


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
