"""Loss functions: CrossEntropyLoss = log_softmax + NLL; MSE; reductions; why not log(softmax).

`nn.CrossEntropyLoss` takes logits and integer labels and averages over the batch;
`optax.softmax_cross_entropy_with_integer_labels` returns one loss per example, so take
`.mean()` (torch's `reduction="sum"` / `"none"` are `.sum()` / nothing). Computing
`log(softmax(z))` overflows to `log(0) = -inf` once a logit gap passes ~745 (float64) or
~104 (float32); `log_softmax` subtracts the max first and stays finite.
"""

# %% torch
import torch
import torch.nn.functional as F
from torch import nn


def torch_side(logits, labels, targets):
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)
    return {
        "cross entropy (mean)": nn.CrossEntropyLoss()(z, y),
        "log_softmax + NLL": F.nll_loss(F.log_softmax(z, dim=1), y),
        "cross entropy (sum)": nn.CrossEntropyLoss(reduction="sum")(z, y),
        "cross entropy (none)": nn.CrossEntropyLoss(reduction="none")(z, y),
        "MSE (mean)": nn.MSELoss()(z, torch.from_numpy(targets)),
        "naive log(softmax)": -torch.log(torch.softmax(z, dim=1)).gather(1, y[:, None]).mean(),
    }


# %% jax
import jax
import jax.numpy as jnp
import optax


def jax_side(logits, labels, targets):
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    log_p = jax.nn.log_softmax(logits, axis=1)
    return {
        "cross entropy (mean)": per_example.mean(),
        "log_softmax + NLL": -jnp.take_along_axis(log_p, labels[:, None], axis=1).mean(),
        "cross entropy (sum)": per_example.sum(),
        "cross entropy (none)": per_example,
        "MSE (mean)": optax.squared_error(logits, targets).mean(),
        "naive log(softmax)": -jnp.take_along_axis(
            jnp.log(jax.nn.softmax(logits, axis=1)), labels[:, None], axis=1
        ).mean(),
    }


# %% check
def main():
    import numpy as np

    from examples._common import show

    rng = np.random.default_rng(0)
    logits, labels, targets = rng.normal(size=(4, 10)), np.array([3, 0, 9, 1]), rng.normal(size=(4, 10))
    t = torch_side(logits, labels, targets)
    with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
        j = {k: np.asarray(v) for k, v in jax_side(logits, labels, targets).items()}
    for name in t:
        show(name, t[name].numpy(), j[name])
        assert np.allclose(t[name].numpy(), j[name], rtol=1e-13, atol=0)  # float64, 10-term sums
    extreme = logits.copy()
    extreme[0, 0] = 1000.0  # label 3's probability underflows to 0 in float64
    t = torch_side(extreme, labels, targets)
    with jax.enable_x64(True):
        j = {k: np.asarray(v) for k, v in jax_side(extreme, labels, targets).items()}
    show("extreme logit: log_softmax + NLL", t["log_softmax + NLL"].numpy(), j["log_softmax + NLL"])
    show("extreme logit: naive log(softmax)", t["naive log(softmax)"].numpy(), j["naive log(softmax)"])
    assert np.isfinite(j["log_softmax + NLL"]) and np.isinf(j["naive log(softmax)"])


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
