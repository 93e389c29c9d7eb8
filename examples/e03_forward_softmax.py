"""The forward pass: logits, softmax probabilities, argmax predictions.

The model returns raw scores (logits). `softmax` turns them into probabilities that sum
to 1, and `argmax` picks the class; softmax is monotonic, so the argmax of the logits is
already the prediction. Same weights in, same predictions out.
"""

# %% torch
import torch
from torch import nn

import torchref


def torch_side(images, state):
    model = torchref.NeuralNetwork()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    probabilities = nn.Softmax(dim=1)(logits)
    return logits.numpy(), probabilities.numpy(), probabilities.argmax(1).numpy()


# %% jax
import jax
from flax import nnx

from jaxnet.model import NeuralNetwork, from_torch_layout


def jax_side(images, state):
    model = NeuralNetwork(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    model = nnx.merge(graphdef, from_torch_layout(params, state))  # torch weights in
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
    assert (t_pred == np.asarray(j_pred)).all()
    assert np.allclose(t_prob.sum(1), 1, atol=1e-6)  # float32 sum of 10 terms


if __name__ == "__main__":
    main()
