"""Forward and gradient parity: same weights in both backends, real and generated inputs.

Tolerances come from ``jaxnet.compare.tolerance``: the dtype's unit roundoff times the square
root of the reduction length along the computation (see that module). Measured on this
machine, the float32 errors sit about 40x under them and float64 about 50x under.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnet import checkpoint
from jaxnet.backend import get_backend
from jaxnet.compare import compare, mask_flips, reductions, tolerance
from jaxnet.config import ModelConfig
from parity_tests.conftest import batch

DTYPES = ["float32", "float64"]


def check_parity(config: ModelConfig, state, x, y, dtype: str) -> dict[str, float]:
    """Compare activations, loss and every gradient; return {quantity: rel error} of failures."""
    red = reductions(config.hidden, config.in_features, batch=len(y))
    jax_side = get_backend("jax", config, dtype=dtype, state=state)
    torch_side = get_backend("torch", config, dtype=dtype, state=state)
    failures = {}
    acts_j, acts_t = jax_side.activations(x), torch_side.activations(x)
    assert acts_j.keys() == acts_t.keys()
    tol_forward = tolerance(dtype, red["forward"])
    for name in acts_j:
        err = compare(acts_j[name], acts_t[name])
        if not err.within(tol_forward):
            failures[name] = err.rel
    # A ReLU mask may flip only at a tie: a pre-activation within rounding distance of 0.
    # Such an example's gradient differs by O(1) between two correct implementations, so the
    # gradients are compared on the other examples (at most a couple ever flip).
    tied = set()
    for i in range(0, 2 * len(config.hidden), 2):
        pre_j, pre_t = acts_j[f"linear_relu_stack.{i}"], acts_t[f"linear_relu_stack.{i}"]
        for row, col in mask_flips(pre_j, pre_t):
            if abs(pre_t[row, col]) > tol_forward * np.abs(pre_t).max():
                failures[f"relu mask linear_relu_stack.{i}[{row}, {col}]"] = float(pre_t[row, col])
            tied.add(int(row))
    assert len(tied) <= max(2, len(y) // 16), f"too many ReLU ties: {sorted(tied)}"
    keep = np.array([r for r in range(len(y)) if r not in tied])
    if len(keep) == 0:
        return failures
    x, y = x[keep], y[keep]
    loss_j, grads_j = jax_side.loss_and_grads(x, y)
    loss_t, grads_t = torch_side.loss_and_grads(x, y)
    if not compare(np.float64(loss_j), np.float64(loss_t)).within(tolerance(dtype, red["loss"])):
        failures["loss"] = abs(loss_j - loss_t)
    assert grads_j.keys() == grads_t.keys() == set(config.param_shapes())
    for name in grads_j:
        err = compare(grads_j[name], grads_t[name])
        if not err.within(tolerance(dtype, red["grad"])):
            failures[f"grad {name}"] = err.rel
    return failures


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("start", [0, 30000, 59936])
def test_real_batches_agree(fmnist, tutorial_state, dtype, start):
    x, y = batch(fmnist, dtype, start)
    assert check_parity(ModelConfig(), tutorial_state[dtype], x, y, dtype) == {}


@pytest.mark.parametrize("dtype", DTYPES)
def test_float64_meets_the_1e_12_goal_on_real_data(fmnist, tutorial_state, dtype):
    """float64 agrees to 1e-12 relative or better (the issue's bar; the model's is tighter)."""
    if dtype == "float32":
        assert tolerance("float32", reductions((512, 512))["grad"]) > 1e-6  # float32 can't: u = 6e-8
        return
    x, y = batch(fmnist, dtype, 128)
    j = get_backend("jax", ModelConfig(), dtype=dtype, state=tutorial_state[dtype])
    t = get_backend("torch", ModelConfig(), dtype=dtype, state=tutorial_state[dtype])
    assert compare(j.predict(x), t.predict(x)).rel < 1e-12
    grads_j, grads_t = j.loss_and_grads(x, y)[1], t.loss_and_grads(x, y)[1]
    assert max(compare(grads_j[k], grads_t[k]).rel for k in grads_j) < 1e-12


# ---------------------------------------------------------------------------- generated inputs


@settings(max_examples=8, deadline=None)
@given(
    batch_size=st.sampled_from([1, 2, 37, 64, 100]),
    hidden=st.sampled_from([(512, 512), (1024, 1024), (2048,), (256, 128, 64)]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_property_generated_inputs_agree(batch_size, hidden, dtype, seed):
    config = ModelConfig(hidden=hidden)
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, batch_size)
    state = checkpoint.init_state_dict(config, seed, dtype)
    assert check_parity(config, state, x, y, dtype) == {}


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_at_exactly_zero(dtype):
    """Zero biases and an all-zero image put every first-layer pre-activation at exactly 0.

    Then ``d loss / d bias0 = relu'(0) * (W2^T delta)``: torch's ``relu'(0) = 0`` gives 0
    exactly; an implementation with ``relu'(0) = 0.5`` (``jnp.maximum(x, 0)``) would not.
    """
    config = ModelConfig()
    state = checkpoint.init_state_dict(config, 3, dtype)
    for key in state:
        if key.endswith("bias"):
            state[key][:] = 0
    x = np.zeros((4, 1, 28, 28), dtype)
    x[1:] = np.random.default_rng(0).random((3, 1, 28, 28))  # a mixed batch: zeros and real-valued
    y = np.array([0, 3, 5, 9])
    acts = get_backend("jax", config, dtype=dtype, state=state).activations(x)
    assert np.all(acts["linear_relu_stack.0"][0] == 0)  # the zero image: exact zeros at the ReLU
    assert check_parity(config, state, x, y, dtype) == {}
    for backend in ("jax", "torch"):
        grads = get_backend(backend, config, dtype=dtype, state=state).loss_and_grads(x[:1], y[:1])[1]
        assert np.all(grads["linear_relu_stack.0.bias"] == 0), backend


# ---------------------------------------------------------------------------- planted faults


def test_a_transposed_weight_is_caught(fmnist, tutorial_state):
    """The 512x512 layer is square, so a wrong transpose has the right shape and loads."""
    x, _y = batch(fmnist, "float32")
    state = dict(tutorial_state["float32"])
    jax_side = get_backend("jax", ModelConfig(), state=state)
    wrong = {**state, "linear_relu_stack.2.weight": state["linear_relu_stack.2.weight"].T.copy()}
    torch_side = get_backend("torch", ModelConfig(), state=wrong)
    red = reductions((512, 512))
    err = compare(
        jax_side.activations(x)["linear_relu_stack.2"], torch_side.activations(x)["linear_relu_stack.2"]
    )
    assert not err.within(tolerance("float32", red["forward"]))
    assert compare(
        jax_side.activations(x)["linear_relu_stack.0"], torch_side.activations(x)["linear_relu_stack.0"]
    ).within(tolerance("float32", red["forward"]))  # the fault is localised: the layer before still agrees


@pytest.mark.parametrize("which", ["largest", "median"])
def test_one_float64_gradient_entry_off_by_1e_9_is_caught(fmnist, tutorial_state, which):
    x, y = batch(fmnist, "float64")
    state = tutorial_state["float64"]
    grads_j = get_backend("jax", ModelConfig(), dtype="float64", state=state).loss_and_grads(x, y)[1]
    grads_t = get_backend("torch", ModelConfig(), dtype="float64", state=state).loss_and_grads(x, y)[1]
    tol = tolerance("float64", reductions((512, 512))["grad"])
    key = "linear_relu_stack.2.weight"
    assert compare(grads_j[key], grads_t[key]).within(tol)
    g = grads_j[key].copy()
    magnitude = np.abs(g)
    pick = magnitude.argmax() if which == "largest" else np.argsort(magnitude, axis=None)[magnitude.size // 2]
    g.flat[pick] *= 1 + 1e-9
    assert not compare(g, grads_t[key]).within(tol)


# ---------------------------------------------------------------------------- finite differences


def test_torch_gradcheck_float64():
    import torch
    from torch.func import functional_call

    import torchref

    torch.manual_seed(0)
    model = torchref.NeuralNetwork(20, (8, 6), 5, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    x = torch.rand(3, 20, dtype=torch.float64)
    y = torch.tensor([0, 4, 2])

    def loss(*params):
        return torchref.loss_fn(functional_call(model, dict(zip(names, params, strict=True)), (x,)), y)

    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-3)  # torch's defaults


def test_jax_check_grads_float64():
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    from jaxnet.backend import JaxBackend
    from jaxnet.train import loss_fn

    model = JaxBackend(ModelConfig(20, (8, 6), 5), dtype="float64", seed=0)
    x = jnp.asarray(np.random.default_rng(0).random((3, 20)))
    y = jnp.array([0, 4, 2])
    # Central differences along random directions, eps 1e-4 (jax's default for float64 is 1e-3
    # in check_grads' eps=None path); float64 keeps the O(eps^2) truncation error ~1e-8.
    f = jax.jit(lambda p: loss_fn(p, model.graphdef, x, y))
    check_grads(f, (model.params,), order=2, modes=["rev"], eps=1e-4)
