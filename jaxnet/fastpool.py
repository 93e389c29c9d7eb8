"""Opt-in fast 2x2, stride-2 max-pool for XLA's CPU backend, with torch's gradient rule.

``nnx.max_pool`` is ``lax.reduce_window``; its gradient is XLA's ``select_and_scatter``, which
on this CPU took ~90 ms of the CNN's ~280 ms step (batch 64, 64 x 24 x 24 x 64 input; one
shared 2-core machine). The window of a 2x2, stride-2 pool is a reshape: with
``x[b, 2y + i, 2x + j, c] = t_ij[b, y, x, c]`` (four strided views, ``(i, j)`` row-major)::

    out = t_00, k = 0;  for each later tap (0,1), (1,0), (1,1) in turn:
        if t > out or isnan(t): out, k = t, that tap's index      (torch's CPU max_pool2d)
    dx[b, 2y + i, 2x + j, c] = g[b, y, x, c] if k[b, y, x, c] == index(i, j) else 0

so the gradient goes to the first maximum of each window (the last NaN if any), as torch's
``F.max_pool2d`` sends it (``nnx.max_pool`` agrees on ties, not on NaNs: it sends a window's
gradient to a number beside a NaN); a plain ``reshape(...).max()`` would split it between
tied elements (after a ReLU, all-zero windows tie). Forward values are exactly the max (no
rounding anywhere; undifferentiated, ``reduce_window`` may give ``+0.0`` where torch gives
``-0.0``); the backward is one fused select, no scatter. A trailing odd
row or column is dropped (``VALID``) and gets zero gradient.

:func:`max_pool` is a drop-in for ``nnx.max_pool``: any other window, stride, padding or
rank goes to ``nnx.max_pool`` unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # torch's scan order within a window


def _windows(x: jax.Array) -> list[jax.Array]:
    """``[B, H, W, C] -> 4 x [B, H//2, W//2, C]``: each tap of the 2x2 windows (odd tails dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    r = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return [r[:, :, i, :, j] for i, j in _TAPS]


def _pool(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The max of each window and the index of the tap it came from (torch's rule)."""
    taps = _windows(x)
    out, k = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for t, v in enumerate(taps[1:], start=1):
        take = (v > out) | jnp.isnan(v)
        out, k = jnp.where(take, v, out), jnp.where(take, jnp.int8(t), k)
    return out, k


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """``F.max_pool2d(x, 2)`` on NHWC ``x``, its gradient to the first maximum of each window.

    Undifferentiated (evaluation) it is ``nnx.max_pool``'s ``reduce_window``, the same values:
    XLA's CPU backend fuses that, not the four strided views, with the convolutions before it
    (a 10,000-image evaluation of the CNN: 5 s and 1.8 GB against 16 s and 8.9 GB)."""
    return nnx.max_pool(x, (2, 2), (2, 2), "VALID")


def _forward(x):
    out, k = _pool(x)
    return out, (k, jnp.zeros((0, *x.shape), x.dtype))  # a zero-size stand-in carries x's shape


def _backward(residuals, g):
    k, like_x = residuals
    b, h, w, c = like_x.shape[1:]
    d = [jnp.where(k == t, g, jnp.zeros((), g.dtype)) for t in range(4)]
    rows = [jnp.stack(d[2 * i : 2 * i + 2], axis=3) for i in range(2)]  # [B, H/2, W/2, 2, C]
    dx = jnp.stack(rows, axis=2).reshape(b, h - h % 2, w - w % 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_forward, _backward)


def _pair(v) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(s) for s in v)


def max_pool(inputs: jax.Array, window_shape, strides=None, padding="VALID") -> jax.Array:
    """Drop-in for ``nnx.max_pool``: a 2x2, stride-2, ``VALID`` pool of a 4-D (NHWC) floating
    array as :func:`max_pool_2x2`; everything else passed to ``nnx.max_pool``."""
    fast = (
        inputs.ndim == 4
        and jnp.issubdtype(inputs.dtype, jnp.floating)
        and _pair(window_shape) == (2, 2)
        and _pair(strides) == (2, 2)
        and padding == "VALID"
    )
    return max_pool_2x2(inputs) if fast else nnx.max_pool(inputs, window_shape, strides, padding)
