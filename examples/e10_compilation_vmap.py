"""Compilation and vectorisation: `torch.compile` against `jax.jit`; per-example gradients.

`jax.jit` traces a pure function once per input shape and compiles it with XLA;
`torch.compile` captures the module's graph (TorchDynamo) and hands it to a backend
(the default, inductor, generates C++/Triton code: about 20 s to compile this model on
the 2-core CPU, and no faster than eager here, see `jaxnet bench`; `aot_eager` below
only traces, to keep the example quick). Per-example gradients: `vmap` a gradient
function over the batch axis, `jax.vmap(jax.grad(f))` or `torch.func.vmap(torch.func.grad(f))`.
"""

# %% torch
import torch
from torch.func import functional_call, grad, vmap

import torchref


def torch_side(x, y, state):
    model = torchref.NeuralNetwork(dtype=torch.float64)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    compiled = torch.compile(model, backend="aot_eager")
    logits = compiled(x)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(params, xi, yi):  # one example: add the batch axis back
        return torchref.loss_fn(functional_call(model, params, (xi[None],)), yi[None])

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return logits.detach().numpy(), per_example["linear_relu_stack.4.bias"].numpy()


# %% jax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxnet.model import NeuralNetwork, from_torch_layout
from jaxnet.train import cross_entropy


def jax_side(x, y, state):
    graphdef, params = nnx.split(NeuralNetwork(dtype=jnp.float64, rngs=nnx.Rngs(0)), nnx.Param)
    params = from_torch_layout(params, state)

    @jax.jit
    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def loss_one(params, xi, yi):
        return cross_entropy(nnx.merge(graphdef, params)(xi[None]), yi[None])

    per_example = jax.jit(jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0)))(params, x, y)
    return forward(params, x), per_example["linear_relu_stack"]["layers"][4]["bias"][...]


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import ModelConfig

    x, y = real_batch(8, "float64")
    state = init_state_dict(ModelConfig(), seed=0, dtype="float64")
    t_logits, t_per_example = torch_side(x, y, state)
    j_logits, j_per_example = jax_side(x, y, state)
    show("compiled logits[0, :3]", t_logits[0, :3], j_logits[0, :3])
    print(f"per-example gradients of the last bias: torch {t_per_example.shape}, jax {j_per_example.shape}")
    show("example 0, d loss / d bias4[:3]", t_per_example[0, :3], j_per_example[0, :3])
    assert np.allclose(t_logits, j_logits, rtol=1e-12, atol=1e-15)  # float64
    assert np.allclose(t_per_example, j_per_example, rtol=1e-12, atol=1e-15)
    assert np.allclose(t_per_example.mean(0), np.asarray(j_per_example).mean(0), rtol=1e-12, atol=1e-15)


if __name__ == "__main__":
    main()
