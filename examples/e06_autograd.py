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
from torch.func import functional_call, grad

import torchref


def torch_side(x, y, state):
    model = torchref.NeuralNetwork(dtype=torch.float64)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss = torchref.loss_fn(model(x), y)
    loss.backward()  # fills .grad
    first = model.linear_relu_stack[0].bias.grad.clone()
    torchref.loss_fn(model(x), y).backward()  # no zero_grad(): accumulates
    doubled = model.linear_relu_stack[0].bias.grad.clone()
    model.zero_grad()  # set_to_none=True: .grad is None again
    with torch.no_grad():
        frozen = model(x)  # no graph recorded
    params = {k: v.detach() for k, v in model.named_parameters()}
    functional = grad(lambda p: torchref.loss_fn(functional_call(model, p, (x,)), y))(params)
    return loss.item(), first, doubled, frozen.requires_grad, functional["linear_relu_stack.0.bias"]


# %% jax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxnet.model import NeuralNetwork, from_torch_layout
from jaxnet.train import cross_entropy


def jax_side(x, y, state):
    graphdef, params = nnx.split(NeuralNetwork(dtype=jnp.float64, rngs=nnx.Rngs(0)), nnx.Param)
    params = from_torch_layout(params, state)

    def loss_fn(params):
        return cross_entropy(nnx.merge(graphdef, params)(x), y)

    loss, grads = jax.value_and_grad(loss_fn)(params)  # nothing accumulates anywhere
    bias_grad = grads["linear_relu_stack"]["layers"][0]["bias"][...]
    # stop_gradient is .detach(): no gradient flows through what it wraps
    detached = jax.grad(lambda p: jax.lax.stop_gradient(loss_fn(p)))(params)
    return float(loss), bias_grad, detached["linear_relu_stack"]["layers"][0]["bias"][...]


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import ModelConfig

    x, y = real_batch(16, "float64")
    state = init_state_dict(ModelConfig(), seed=0, dtype="float64")
    t_loss, t_first, t_doubled, t_requires_grad, t_functional = torch_side(x, y, state)
    j_loss, j_grad, j_detached = jax_side(x, y, state)
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
    main()
