"""``jaxnet.fastconv``: an ``nnx.Conv`` computing as im2col + GEMM, with its own gradient,
agrees with the same ``nnx.Conv`` on XLA's convolution within float32 rounding.

The bound is derived, not measured: each output (and each gradient entry) is a sum of K
products, which the two implementations add in different orders. Each order's result lies
within ``(K - 1) u sum |terms|`` of the exact sum (u = 2^-24), so the two differ by at most
``2 (K - 1) u sum |terms|``, element by element; ``sum |terms|`` is the same computation on
absolute values (its own rounding is a relative ``K u``, covered by a factor 1.01).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnet import fastconv
from jaxnet.data import to_float

U = 2.0**-24


def _conv(c_in: int, c_out: int, padding, strides=1, fast=False) -> nnx.Conv:
    conv = nnx.Conv(c_in, c_out, (3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))
    return fastconv.enable(conv) if fast else conv


def _value_and_grads(conv: nnx.Conv, x, g):
    graphdef, params = nnx.split(conv, nnx.Param)
    out, dx, dparams = _compiled(graphdef, params, x, g)  # one program (eager ops compile one by one)
    return out, dx, nnx.to_pure_dict(dparams)["kernel"]


@functools.partial(jax.jit, static_argnums=0)
def _compiled(graphdef, params, x, g):
    out, back = jax.vjp(lambda x, params: nnx.merge(graphdef, params)(x), x, params)
    return (out, *back(g))


def _abs_terms(conv: nnx.Conv, x, g):
    """``sum |terms|`` of every output and gradient entry: the same sums on absolute values."""
    absolute = nnx.Conv(conv.in_features, conv.out_features, (3, 3), padding=conv.padding, use_bias=False,
                        rngs=nnx.Rngs(0))  # fmt: skip
    absolute.kernel.set_value(jnp.abs(conv.kernel.get_value()))
    return _value_and_grads(absolute, jnp.abs(x), jnp.abs(g))


def test_fast_convolutions_and_their_gradients_agree_within_rounding(fmnist):
    # real images through the CNN's first layer; a 32-channel map through its second (padded)
    x1 = jnp.asarray(to_float(fmnist.train.images[:8])[..., None])
    x2 = jnp.asarray(np.random.default_rng(0).standard_normal((4, 26, 26, 32), np.float32))
    for x, c_out, padding in ((x1, 32, "VALID"), (x2, 64, "SAME")):
        c_in = x.shape[-1]
        plain, fast = _conv(c_in, c_out, padding), _conv(c_in, c_out, padding, fast=True)
        out_shape = jax.eval_shape(plain, x).shape
        g = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape, np.float32))
        ref, got = _value_and_grads(plain, x, g), _value_and_grads(fast, x, g)
        terms = _abs_terms(plain, x, g)
        n_pixels = out_shape[0] * out_shape[1] * out_shape[2]
        lengths = (9 * c_in, 9 * c_out, n_pixels)  # the sums' lengths: out, dx, dW
        for name, a, b, t, k in zip(("out", "dx", "dW"), ref, got, terms, lengths, strict=True):
            # (+ |a|: the bias added to the output rounds once more on each side)
            bound = 2 * (k - 1) * U * 1.01 * (np.asarray(t) + np.abs(np.asarray(a)))
            excess = np.abs(np.asarray(a) - np.asarray(b)) - bound
            assert excess.max() <= 0, (name, padding, float(excess.max()))


def test_other_convolutions_pass_through_and_the_fast_one_has_no_conv_primitive():
    x = jnp.ones((2, 12, 12, 3), jnp.float32)
    strided_plain, strided_fast = _conv(3, 4, "SAME", strides=2), _conv(3, 4, "SAME", strides=2, fast=True)
    assert np.array_equal(strided_plain(x), strided_fast(x))  # the same call: lax's convolution
    assert "conv_general_dilated" in str(jax.make_jaxpr(_conv(3, 4, "VALID"))(x))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(_conv(3, 4, "VALID", fast=True))(x))
