"""``jaxnet.fastpool``: the 2x2 max-pool and its hand-written gradient equal torch's
``F.max_pool2d`` forward and backward exactly (no rounding anywhere: the forward selects, the
backward routes ``g`` unchanged), ties and NaNs included, in float64 and float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jaxnet import cnn, fastconv, fastpool
from jaxnet.config import CNNConfig
from parity_tests.floors import assert_within_float32_floor


def _torch(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch's pool of NHWC ``x`` and its input gradient for ``g``, back in NHWC."""
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    out = F.max_pool2d(tx, 2)
    out.backward(torch.tensor(g).permute(0, 3, 1, 2))
    return out.detach().permute(0, 2, 3, 1).numpy(), tx.grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_pool_and_its_gradient_are_torchs_ties_and_nans_included(dtype):
    shape = (2, 7, 9, 3)  # whole windows, and an odd trailing row and column (dropped, no gradient)
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == "float64"):
        x = rng.integers(-1, 2, shape).astype(dtype)  # three values: most windows tie
        x[0, :2, :2, 0] = 0.0  # an all-equal window (a ReLU's zeros)
        x[0, 2:4, 2:4, 1] = [[np.nan, 1], [np.nan, 2]]  # two NaNs in one window: torch takes the last
        x[1, 0:2, 0:2, 2] = [[-0.0, 0.0], [0.0, -0.0]]  # signed zeros compare equal: the first wins
        g = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(dtype)
        out, back = jax.vjp(fastpool.max_pool_2x2, jnp.asarray(x))
        (dx,) = back(jnp.asarray(g))
        want_out, want_dx = _torch(x, g)
        assert out.dtype == dtype and dx.dtype == dtype
        np.testing.assert_array_equal(np.asarray(out), want_out)  # NaN == NaN here
        np.testing.assert_array_equal(np.asarray(dx), want_dx)
        # the property the custom gradient exists for: a plain reshape-and-max splits ties
        split = jax.grad(lambda t: jnp.stack(fastpool._windows(t)).max(0).sum())
        assert not np.array_equal(np.asarray(split(jnp.asarray(x))), _torch(x, np.ones_like(g))[1])


def test_other_pools_pass_through_to_nnx():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 3)), jnp.float32)
    for window, strides, padding in (
        ((3, 3), (2, 2), "VALID"),
        ((2, 2), (1, 1), "VALID"),
        ((2, 2), (2, 2), "SAME"),
    ):
        got = fastpool.max_pool(x, window, strides, padding)
        np.testing.assert_array_equal(got, nnx.max_pool(x, window, strides, padding))
        assert "reduce_window_max" in str(
            jax.make_jaxpr(fastpool.max_pool, static_argnums=(1, 2, 3))(x, window, strides, padding)
        )
    fast = jax.make_jaxpr(jax.grad(lambda t: fastpool.max_pool(t, (2, 2), (2, 2)).sum()))(x)
    assert "select_and_scatter" not in str(fast) and "reduce_window" not in str(fast)


def test_fastconv_enable_puts_the_cnn_on_the_fast_pool():
    model = cnn.build(CNNConfig(channels=(2, 3), hidden=4))
    assert model.max_pool is nnx.max_pool  # the idiomatic model keeps nnx's pool
    fastconv.enable(model, where="measured")
    assert model.max_pool is fastpool.max_pool
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = jnp.zeros((2, 1, 28, 28)), jnp.zeros((2,), jnp.int32)
    jaxpr = str(jax.make_jaxpr(jax.grad(cnn.loss_fn), static_argnums=1)(params, graphdef, x, y))
    assert "select_and_scatter" not in jaxpr


def test_the_cnn_on_the_fast_path_is_within_the_float32_floor_of_the_idiomatic_one(fmnist):
    """``fastconv.enable`` on the CNN (both convolutions as GEMMs, the fast pool) in float32
    against the idiomatic model in float64, for the loss and every gradient of a train-mode
    step (dropout masks given): ``err <= K * floor`` (``jaxnet.parity.verdict``), the floor the
    idiomatic float32 model's own error, never below one float32 u. The idiomatic pair passes
    against torch (test_cnn_models, ``jaxnet parity --model cnn``)."""
    from jaxnet.data import to_float

    config = CNNConfig(channels=(4, 8), hidden=16)
    x = to_float(fmnist.train.images[:8])[:, None]
    y = jnp.asarray(fmnist.train.labels[:8])
    rng = np.random.default_rng(0)
    masks = tuple((rng.random(s) > p).astype(np.float32) for s, p in (((8, 8, 12, 12), 0.25), ((8, 16), 0.5)))

    def step(model, dtype):
        graphdef, params = nnx.split(model, nnx.Param)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        args = (jnp.asarray(x, dtype), y, tuple(jnp.asarray(m, dtype) for m in masks))
        loss, grads = jax.jit(jax.value_and_grad(cnn.loss_fn), static_argnums=1)(params, graphdef, *args)
        leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads))
        return {"loss": np.float64(loss)} | {
            jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in leaves
        }

    plain32 = step(cnn.build(config), jnp.float32)
    fast32 = step(fastconv.enable(cnn.build(config)), jnp.float32)
    with jax.enable_x64(True):
        plain64 = step(cnn.build(config), jnp.float64)
    assert len(plain64) == 9
    assert_within_float32_floor(fast32, plain32, plain64)
