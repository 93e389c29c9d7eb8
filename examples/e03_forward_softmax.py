"""The forward pass: logits, softmax probabilities, argmax predictions.

The model returns raw scores (logits). `softmax` turns them into probabilities that sum
to 1, and `argmax` picks the class; softmax is monotonic, so the argmax of the logits is
already the prediction. Same weights in, same predictions out.
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


def torch_side(images, state):
    model = NeuralNetwork()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    probabilities = nn.Softmax(dim=1)(logits)
    return logits.numpy(), probabilities.numpy(), probabilities.argmax(1).numpy()


# %% jax
import jax
import jax.numpy as jnp
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


def jax_side(images, state):
    model = FlaxNeuralNetwork(nnx.Rngs(0))
    load_torch_state(model, state)  # torch weights in
    logits = model(images)
    probabilities = jax.nn.softmax(logits, axis=1)
    return logits, probabilities, probabilities.argmax(1)


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import ModelConfig
    from jaxnet.data import CLASS_NAMES

    images, labels = real_batch(8)
    state = init_state_dict(ModelConfig(), seed=0)  # untrained: predictions are near chance
    t_logits, t_prob, t_pred = torch_side(images, state)
    j_logits, j_prob, j_pred = jax_side(images, state)
    show("logits[0, :4]", t_logits[0, :4], j_logits[0, :4])
    show("probabilities[0].sum()", t_prob[0].sum(), j_prob[0].sum())
    print("predicted:", [CLASS_NAMES[i] for i in t_pred[:3]], "actual:", [CLASS_NAMES[i] for i in labels[:3]])
    # float32, 784-term dot products: far below 16 * sqrt(784) * 2^-24 = 2.7e-5 of the largest logit.
    assert np.abs(t_logits - np.asarray(j_logits)).max() <= 2.7e-5 * np.abs(t_logits).max()
    # The argmax is the same wherever the top two logits are further apart than that rounding
    # (every image here, so the predictions printed above hold on every CPU).
    top2 = np.sort(t_logits, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(t_logits).max()).all()
    assert (t_pred == np.asarray(j_pred)).all()
    assert np.allclose(t_prob.sum(1), 1, atol=1e-6)  # float32 sum of 10 terms


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
