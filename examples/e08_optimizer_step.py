"""One optimizer step: `torch.optim` against optax, for SGD with momentum and for Adam.

torch updates parameters in place (`optimizer.step()` reads `.grad`); optax is a pair of
pure functions: `tx.init(params)` makes the state, `tx.update(grads, state, params)`
returns updates (already multiplied by `-lr`) and the new state, and
`optax.apply_updates` adds them. torch's SGD momentum buffer starts as the first
gradient; `optax.trace` starts from zeros, so `0.9 * 0 + g` is the same first step.
"""

# %% torch
import torch


def torch_side(w0, grads, name):
    w = torch.tensor(w0, requires_grad=True)
    if name == "sgd":
        optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    trajectory = []
    for g in grads:
        w.grad = torch.tensor(g)
        optimizer.step()
        trajectory.append(w.detach().clone().numpy())
    return trajectory


# %% jax
import jax.numpy as jnp
import optax


def jax_side(w0, grads, name):
    if name == "sgd":
        tx = optax.sgd(learning_rate=0.1, momentum=0.9)
    else:
        tx = optax.adam(learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8)
    w = jnp.asarray(w0)
    state = tx.init(w)
    trajectory = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
        trajectory.append(w)
    return trajectory


# %% check
def main():
    import numpy as np

    from examples._common import show

    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=4), [rng.normal(size=4) for _ in range(3)]
    for name in ("sgd", "adam"):
        t, j = torch_side(w0, grads, name), jax_side(w0, grads, name)
        for step in range(3):
            show(f"{name}: w after step {step + 1}", t[step], j[step], digits=10)
        assert np.allclose(np.array(t), np.array(j), rtol=1e-14, atol=1e-15)  # float64, 3 steps


if __name__ == "__main__":
    main()
