"""Opt-in fast 2-D convolutions for XLA's CPU backend: im2col and one GEMM, with its own gradient.

XLA's CPU convolutions (and their autodiff transposes) run 3-5x slower than torch's here
(flax#3551, equinox#970), while its GEMM runs at the machine's float32 GEMM rate. A valid,
stride-1 convolution is a GEMM on patches::

    out[b, y, x, o] = sum_{i, j, c} x[b, y + i, x + j, c] * w[i, j, c, o]
                    = (P @ W)[(b, y, x), o],   P[(b, y, x), (i, j, c)] = x[b, y + i, x + j, c]

and its gradients are GEMMs too, given ``g = d loss / d out``::

    dW = P^T @ g                       (one GEMM over every output pixel)
    dP = g @ W^T,  dx = col2im(dP)     (dx[b, y + i, x + j, c] += dP[(b, y, x), (i, j, c)])

``P`` is built from k*k shifted slices concatenated on the channel axis; the forward keeps it
for ``dW``; ``col2im`` adds the k*k slices of ``dP`` back into place. The user's port stays
idiomatic: an ``nnx.Conv`` whose ``conv_general_dilated`` is :func:`conv_general_dilated`
(:func:`enable` sets it on every ``nnx.Conv`` of a model); any case outside the fast one
(strides, dilation, groups, layouts other than flax's NHWC/HWIO, a preferred element type)
goes to ``jax.lax.conv_general_dilated`` unchanged.

Rounding: the same products as XLA's convolution, summed in a GEMM's order (each output a
dot of length k*k*C_in), so float32 results differ from XLA's own convolution by a few ulps
of that dot length; the parity rows against torch judge it as they judge any port.

Example:
    >>> from jaxnet import cnn, fastconv                     # doctest: +SKIP
    >>> model = fastconv.enable(cnn.build(CNNConfig()))      # doctest: +SKIP
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """``[B, H, W, C] -> [B, H-kh+1, W-kw+1, kh*kw*C]``: the valid windows, tap-major then
    channel (the order of an HWIO kernel reshaped to ``[kh*kw*C, O]``)."""
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    taps = [x[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)


def _gemm_conv(p: jax.Array, w: jax.Array, precision) -> jax.Array:
    rows = p.reshape(-1, p.shape[-1])
    return jnp.dot(rows, w.reshape(-1, w.shape[-1]), precision=precision).reshape(*p.shape[:3], w.shape[-1])


# Patches take k*k times the input's memory: a training batch's are tens of MB, a whole test
# set's several GB (10,000 images through the CNN's conv2: 6.6 GB). Past this size an
# undifferentiated call (evaluation) uses XLA's own convolution, which needs no patches.
MAX_PATCH_BYTES = 256 * 2**20


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_valid(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
    """Valid, stride-1 convolution, NHWC input, HWIO kernel, as one GEMM on patches (or, for an
    input whose patches would exceed :data:`MAX_PATCH_BYTES` outside differentiation, XLA's)."""
    b, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    if b * (h - kh + 1) * (wd - kw + 1) * kh * kw * c * x.dtype.itemsize > MAX_PATCH_BYTES:
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=dims, precision=precision
        )
    return _gemm_conv(patches(x, kh, kw), w, precision)


def _forward(x, w, precision):
    p = patches(x, w.shape[0], w.shape[1])
    return _gemm_conv(p, w, precision), (p, w)


def _backward(precision, residuals, g):
    p, w = residuals
    kh, kw, c_in, c_out = w.shape
    g2 = g.reshape(-1, c_out)
    dw = jnp.dot(p.reshape(-1, p.shape[-1]).T, g2, precision=precision).reshape(w.shape)
    dp = jnp.dot(g2, w.reshape(-1, c_out).T, precision=precision).reshape(*g.shape[:3], kh * kw, c_in)
    _, oh, ow, _ = g.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dx = None
    for t, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):  # col2im
        tap = jnp.pad(dp[:, :, :, t, :], ((0, 0), (i, h - oh - i), (j, wd - ow - j), (0, 0)))
        dx = tap if dx is None else dx + tap
    return dx, dw


conv_valid.defvjp(_forward, _backward)


def _fast_case(
    lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers, groups, kwargs
) -> bool:
    if lhs.ndim != 4 or any(s != 1 for s in window_strides) or groups != (1, 1):
        return False
    if any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        return False
    if kwargs.get("preferred_element_type") is not None or kwargs.get("out_sharding") is not None:
        return False
    dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return dims == _NHWC_HWIO


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    **kwargs,
):
    """Drop-in for ``jax.lax.conv_general_dilated``: stride-1, undilated, ungrouped NHWC/HWIO
    convolutions (any padding) as :func:`conv_valid`; everything else passed through."""
    groups = (feature_group_count, batch_group_count)
    fast = _fast_case(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers, groups, kwargs)
    if not fast:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, **kwargs,
        )  # fmt: skip
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = [tuple(p) for p in padding]
    if any(p != (0, 0) for p in pads):
        lhs = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    return conv_valid(lhs, rhs, _hashable(precision))


def _hashable(precision):
    return tuple(precision) if isinstance(precision, list) else precision


def enable(model: nnx.Module) -> nnx.Module:
    """Every ``nnx.Conv`` of ``model`` computes with :func:`conv_general_dilated`; returns ``model``."""
    walk = nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()
    for _, module in walk:
        if isinstance(module, nnx.Conv):
            module.conv_general_dilated = conv_general_dilated
    return model
