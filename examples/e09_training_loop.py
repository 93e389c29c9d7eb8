"""The full training loop of the tutorial, in both frameworks.

The torch loop is the tutorial's: a DataLoader, `model(X)`, `loss.backward()`,
`optimizer.step()`, `optimizer.zero_grad()`, a print every 100 batches. The JAX loop has
the same shape, but the step is one pure, jit-compiled function from (params, opt_state,
batch) to new (params, opt_state) and the loss. Run here on the first 6,400 real training
images for two epochs, from the same weights: both print the same losses.
"""

# %% torch
import torch

import torchref


def torch_side(images, labels, state, epochs):
    model = torchref.NeuralNetwork()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-1)
    dataloader = torchref.tutorial_loader(images, labels, batch_size=64)
    for t in range(epochs):
        print(f"[torch] Epoch {t + 1}")
        model.train()
        for batch, (X, y) in enumerate(dataloader):
            pred = model(X)
            loss = loss_fn(pred, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if batch % 100 == 0:
                print(f"[torch] loss: {loss.item():>7f}  [{(batch + 1) * len(X):>5d}/{len(images):>5d}]")
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


# %% jax
import jax
import optax
from flax import nnx

from jaxnet.model import NeuralNetwork, from_torch_layout, to_torch_layout
from jaxnet.train import cross_entropy


def jax_side(images, labels, state, epochs):
    graphdef, params = nnx.split(NeuralNetwork(rngs=nnx.Rngs(0)), nnx.Param)
    params = from_torch_layout(params, state)
    tx = optax.sgd(learning_rate=1e-1)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, X, y):
        def loss_fn(params):
            return cross_entropy(nnx.merge(graphdef, params)(X), y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    x = images.astype("float32")[:, None] / 255  # ToTensor
    for t in range(epochs):
        print(f"[jax]   Epoch {t + 1}")
        for batch, start in enumerate(range(0, len(x), 64)):
            X, y = x[start : start + 64], labels[start : start + 64]
            params, opt_state, loss = train_step(params, opt_state, X, y)
            if batch % 100 == 0:
                print(f"[jax]   loss: {float(loss):>7f}  [{(batch + 1) * len(X):>5d}/{len(images):>5d}]")
    return to_torch_layout(params)


# %% check
def main():
    import numpy as np

    from jaxnet import data
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.compare import compare
    from jaxnet.config import ModelConfig

    train = data.load().train
    images, labels = train.images[:6400], train.labels[:6400]
    state = init_state_dict(ModelConfig(), seed=0)
    t = torch_side(images, labels, state, epochs=2)
    j = jax_side(images, labels, state, epochs=2)
    worst = max(compare(j[k], t[k]).rel for k in t)
    print(f"max relative parameter difference after 200 steps: {worst:.1e}")
    # float32, 200 SGD steps: the rounding model allows 16 * sqrt(1872) * 2^-24 * 200 = 8e-3.
    assert worst < 8e-3
    test = data.load().test
    x = test.float_images()[:1000]
    from jaxnet.backend import get_backend

    agree = np.mean(
        get_backend("jax", ModelConfig(), state=j).predict(x).argmax(1)
        == get_backend("torch", ModelConfig(), state=t).predict(x).argmax(1)
    )
    print(f"same test prediction on {agree:.1%} of 1,000 test images")
    assert agree >= 0.999


if __name__ == "__main__":
    main()
