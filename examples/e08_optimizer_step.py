"""One optimizer step: `torch.optim` against optax, for SGD with momentum and for Adam.

torch updates parameters in place (`optimizer.step()` reads `.grad`); optax is a pair of
pure functions: `tx.init(params)` makes the state, `tx.update(grads, state, params)`
returns updates (already multiplied by `-lr`) and the new state, and
`optax.apply_updates` adds them. torch's SGD momentum buffer starts as the first
gradient; `optax.trace` starts from zeros, so `0.9 * 0 + g` is the same first step.

In float32, `optax.adam` and `torch.optim.Adam` differ at early steps: optax computes the
bias correction `1 - b2^t` in float32 from `b2` rounded to float32 (`1 - 0.999f =
9.99987e-4`, 1.3e-5 off), which moves the early steps by ~6e-6 of `lr`; torch computes it in
double. jaxnet's own optimizer (`jaxnet.train.scale_by_adam`) evaluates it as
`-expm1(t * log(b))` to match torch. The comparison below runs in float64, where the two
agree; the last lines show the float32 difference.
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
    import jax
    import numpy as np

    from examples._common import show
    from jaxnet.train import scale_by_adam

    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=4), [rng.normal(size=4) for _ in range(3)]  # float64
    for name in ("sgd", "adam"):
        t = torch_side(w0, grads, name)
        with jax.enable_x64(True):  # float64 JAX here only; importing this file switches nothing on
            j = [np.asarray(w) for w in jax_side(w0, grads, name)]
        for step in range(3):
            show(f"{name}: w after step {step + 1}", t[step], j[step])
        assert np.allclose(np.array(t), np.array(j), rtol=1e-14, atol=1e-15)  # float64, 3 steps

    # float32, Adam's first step from w = 0: |w| / lr = 1 / sqrt(v_hat / g^2) is 1 exactly when
    # the bias correction matches the moment's weight 1 - b2 = 0.001 (within a few float32 ulps).
    b2 = np.float32(0.999)
    print(
        f"1 - b2 in float32 (optax's bias correction at step 1): {1 - b2:.6g}; in double (torch's): {1 - 0.999:.6g}"
    )
    zero, g32 = np.zeros(4, np.float32), [grads[0].astype(np.float32)]
    first = {
        "torch.optim.Adam": np.abs(torch_side(zero, g32, "adam")[0]) / 0.1,
        "optax.adam": np.abs(np.asarray(jax_side(zero, g32, "adam")[0])) / 0.1,
    }
    tx = optax.chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.scale(-0.1))
    first["jaxnet.train.scale_by_adam"] = (
        np.abs(np.asarray(tx.update(jnp.asarray(g32[0]), tx.init(zero))[0])) / 0.1
    )
    for name, step in first.items():
        off = np.abs(step - 1).max()  # torch and jaxnet: a few float32 ulps (< 1e-6)
        print(f"float32, first step: {name:27s} moves w by lr x {'1' if off < 1e-6 else '(1 - 6e-6)'}")
        assert off < 1e-6 if name != "optax.adam" else 5e-6 < off < 8e-6  # 1.3e-5 / 2 = 6.4e-6


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
