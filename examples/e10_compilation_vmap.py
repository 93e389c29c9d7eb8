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
from torch import nn
from torch.func import functional_call, grad, vmap


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
    model = NeuralNetwork().double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    compiled = torch.compile(model, backend="aot_eager")
    logits = compiled(x)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(params, xi, yi):  # one example: add the batch axis back
        return nn.functional.cross_entropy(functional_call(model, params, (xi[None],)), yi[None])

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return logits.detach().numpy(), per_example["linear_relu_stack.4.bias"].numpy()


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
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def loss_one(params, xi, yi):  # one example: add the batch axis back
        logits = nnx.merge(graphdef, params)(xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None]).mean()

    per_example = jax.jit(jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0)))(params, x, y)
    return forward(params, x), per_example["linear_relu_stack"]["layers"][4]["bias"][...]


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import ModelConfig

    x, y = real_batch(8, "float64")  # float64: both sides agree to ~1e-15 on every CPU
    state = init_state_dict(ModelConfig(), seed=0, dtype="float64")
    t_logits, t_per_example = torch_side(x, y, state)
    with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
        j_logits, j_per_example = (np.asarray(v) for v in jax_side(x, y, state))
    show("compiled logits[0, :3]", t_logits[0, :3], j_logits[0, :3])
    print(f"per-example gradients of the last bias: torch {t_per_example.shape}, jax {j_per_example.shape}")
    show("example 0, d loss / d bias4[:3]", t_per_example[0, :3], j_per_example[0, :3])
    assert np.allclose(t_logits, j_logits, rtol=1e-12, atol=1e-15)  # float64
    assert np.allclose(t_per_example, j_per_example, rtol=1e-12, atol=1e-15)
    assert np.allclose(t_per_example.mean(0), j_per_example.mean(0), rtol=1e-12, atol=1e-15)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
