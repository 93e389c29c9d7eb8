"""Opt-in fast 2-D convolutions for XLA's CPU backend: im2col and one GEMM, with its own gradient.

XLA's CPU convolutions (and their autodiff transposes) ran 3-5x slower than torch's here
(flax#3551, equinox#970) on YNNPACK, jaxlib 0.10's default, while its GEMM runs at the
machine's float32 GEMM rate. On Eigen's convolutions, which :func:`jaxnet.process.prepare`
selects, XLA's stride-1 3x3 layers beat these GEMMs; the stem, 1x1 and strided layers still
gain up to 3.5x (:func:`gemm_wins`, docs/xla-cpu-conv.md). A valid
convolution with strides ``(sh, sw)`` and kernel dilation ``(dh, dw)`` (padding is applied
to the input first) is a GEMM on patches::

    out[b, y, x, o] = sum_{i, j, c} x[b, y*sh + i*dh, x*sw + j*dw, c] * w[i, j, c, o]
                    = (P @ W)[(b, y, x), o],   P[(b, y, x), (i, j, c)] = x[b, y*sh + i*dh, x*sw + j*dw, c]

with ``OH = (H - dh*(kh-1) - 1) // sh + 1`` output rows (``OW`` likewise), and its gradients
are GEMMs too, given ``g = d loss / d out``::

    dW = P^T @ g                       (one GEMM over every output pixel)
    dP = g @ W^T,  dx = col2im(dP)     (dx[b, y*sh + i*dh, x*sw + j*dw, c] += dP[(b, y, x), (i, j, c)])

``P`` is built from strided slices merged into the channel axis: ``kw`` column taps of the
input, then ``kh`` row taps of those (tap ``(i, j)`` reads rows ``i*dh, i*dh + sh, ...``); the
forward keeps it for ``dW``. ``col2im`` puts each tap's slice of ``dP`` back with one
``lax.pad`` (``sh - 1`` zeros between rows: interior padding) and sums the k*k of them,
which XLA fuses into one loop (against ``.at[].add`` on strided slices, a scatter: less CPU
time on 6 of the ResNet's 8 layer shapes, up to 1.7x; the scatter won on two with 7x7
outputs, by 1.1-1.3x; one shared 2-core machine). Input rows no window reaches (a stride-2 window on an even size) get zero gradient. A 1x1 convolution is one
strided slice and a plain GEMM. The user's port stays idiomatic: an ``nnx.Conv`` whose
``conv_general_dilated`` is :func:`conv_general_dilated` (:func:`enable` sets it on every
``nnx.Conv`` of a model); any case outside the fast one (input dilation, i.e. a transposed
convolution, feature or batch groups, layouts other than flax's NHWC/HWIO, a preferred element
type) goes to ``jax.lax.conv_general_dilated`` unchanged.

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

from jaxnet import fastpool

_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
Pair = tuple[int, int]


def out_size(size: int, k: int, stride: int = 1, dilation: int = 1) -> int:
    """Output length of a valid window of ``k`` taps ``dilation`` apart, moved ``stride`` at a time."""
    return (size - dilation * (k - 1) - 1) // stride + 1


def _taps(kh: int, kw: int, dilation: Pair) -> list[Pair]:
    """Each tap's offset into the input, tap-major (the order of an HWIO kernel's rows)."""
    return [(i * dilation[0], j * dilation[1]) for i in range(kh) for j in range(kw)]


def patches(x: jax.Array, kh: int, kw: int, strides: Pair = (1, 1), dilation: Pair = (1, 1)) -> jax.Array:
    """``[B, H, W, C] -> [B, OH, OW, kh*kw*C]``: the valid windows, tap-major then channel (the
    order of an HWIO kernel reshaped to ``[kh*kw*C, O]``).

    Built in two passes, the ``kw`` column taps (``[B, H, OW, kw*C]``) then the ``kh`` row taps
    of that, each a stack of strided slices on a new axis: the same copy as one concatenation of
    ``kh*kw`` slices, but the second pass moves runs of ``kw*C`` values; the CNN's conv2 patches
    (64 x 24 x 24 x 288) took 18 ms of CPU against 24 ms for the one concatenation with the
    freed memory kept (:func:`jaxnet.process.keep_freed_memory`), 62 against 113 ms under glibc's defaults (medians, one
    shared 2-core machine)."""
    _, h, w, _ = x.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = out_size(h, kh, sh, dh), out_size(w, kw, sw, dw)

    def taps(t: jax.Array, axis: int, k: int, s: int, d: int, n: int) -> jax.Array:
        """``k`` slices of ``t`` along ``axis`` (offsets ``0, d, .., (k-1)d``, ``n`` taken ``s`` apart),
        stacked next to the channel axis and merged into it."""
        limit = list(t.shape)
        cut = []
        for i in range(k):
            start, limit[axis] = [0] * 4, i * d + (n - 1) * s + 1
            start[axis] = i * d
            cut.append(jax.lax.slice(t, start, limit, [s if a == axis else 1 for a in range(4)]))
        if k == 1:
            return cut[0]
        return jnp.stack(cut, axis=3).reshape(*cut[0].shape[:3], k * t.shape[3])

    return taps(taps(x, 2, kw, sw, dw, ow), 1, kh, sh, dh, oh)


def col2im(
    dp: jax.Array, shape: tuple[int, ...], kh: int, kw: int, strides: Pair, dilation: Pair
) -> jax.Array:
    """The transpose of :func:`patches`: ``dp [B, OH, OW, kh*kw*C]`` added back into an input of
    ``shape``, tap ``(i, j)`` of output pixel ``(y, x)`` onto ``(y*sh + i*dh, x*sw + j*dw)``.

    Each tap is placed by one ``lax.pad``: ``i*dh`` rows before, ``sh - 1`` between (interior
    padding), the rest after; XLA fuses the k*k pads and their sum into one loop."""
    _, oh, ow, _ = dp.shape
    c = shape[-1]
    dx = None
    for t, (i, j) in enumerate(_taps(kh, kw, dilation)):
        tap = dp[..., t * c : (t + 1) * c]
        rows = (i, shape[1] - i - (oh - 1) * strides[0] - 1, strides[0] - 1)
        cols = (j, shape[2] - j - (ow - 1) * strides[1] - 1, strides[1] - 1)
        tap = jax.lax.pad(tap, jnp.zeros((), dp.dtype), ((0, 0, 0), rows, cols, (0, 0, 0)))
        dx = tap if dx is None else dx + tap
    return dx


def _gemm_conv(p: jax.Array, w: jax.Array, precision) -> jax.Array:
    rows = p.reshape(-1, p.shape[-1])
    return jnp.dot(rows, w.reshape(-1, w.shape[-1]), precision=precision).reshape(*p.shape[:3], w.shape[-1])


# Patches take k*k/(sh*sw) times the input's memory: a training batch's are tens of MB, a whole
# test set's several GB (10,000 images through the CNN's conv2: 6.6 GB). Past this size an
# undifferentiated call (evaluation) uses XLA's own convolution, which needs no patches.
MAX_PATCH_BYTES = 256 * 2**20


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_valid(
    x: jax.Array, w: jax.Array, strides: Pair = (1, 1), dilation: Pair = (1, 1), precision=None
) -> jax.Array:
    """Valid convolution (``strides``, kernel ``dilation``), NHWC input, HWIO kernel, as one GEMM
    on patches (or, for an input whose patches would exceed :data:`MAX_PATCH_BYTES` outside
    differentiation, XLA's)."""
    b, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    oh, ow = out_size(h, kh, strides[0], dilation[0]), out_size(wd, kw, strides[1], dilation[1])
    if b * oh * ow * kh * kw * c * x.dtype.itemsize > MAX_PATCH_BYTES:
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            x, w, strides, "VALID", rhs_dilation=dilation, dimension_numbers=dims, precision=precision
        )
    return _gemm_conv(patches(x, kh, kw, strides, dilation), w, precision)


def _forward(x, w, strides, dilation, precision):
    p = patches(x, w.shape[0], w.shape[1], strides, dilation)
    # x itself is not kept, only its shape (a zero-size stand-in: residuals must be arrays)
    return _gemm_conv(p, w, precision), (p, w, jnp.zeros((0, *x.shape), x.dtype))


def _backward(strides, dilation, precision, residuals, g):
    p, w, like_x = residuals
    kh, kw, _, c_out = w.shape
    g2 = g.reshape(-1, c_out)
    dw = jnp.dot(p.reshape(-1, p.shape[-1]).T, g2, precision=precision).reshape(w.shape)
    dp = jnp.dot(g2, w.reshape(-1, c_out).T, precision=precision).reshape(*g.shape[:3], -1)
    return col2im(dp, like_x.shape[1:], kh, kw, strides, dilation), dw


conv_valid.defvjp(_forward, _backward)


def _fast_case(lhs, rhs, lhs_dilation, dimension_numbers, groups, kwargs) -> bool:
    """NHWC/HWIO, ungrouped, no input dilation (a transposed convolution), no output type."""
    if lhs.ndim != 4 or groups != (1, 1) or any(d != 1 for d in (lhs_dilation or ())):
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
    """Drop-in for ``jax.lax.conv_general_dilated``: undilated-input, ungrouped NHWC/HWIO
    convolutions (any strides, padding and kernel dilation) as :func:`conv_valid` on the padded
    input; everything else passed through."""
    groups = (feature_group_count, batch_group_count)
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    fast = _fast_case(lhs, rhs, lhs_dilation, dimension_numbers, groups, kwargs)
    if fast and isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(
            lhs.shape[1:3],
            [d * (k - 1) + 1 for d, k in zip(dilation, rhs.shape[:2], strict=True)],
            strides,
            padding,
        )
    if fast:  # the padded input must hold at least one window
        sizes = (lhs.shape[1] + sum(padding[0]), lhs.shape[2] + sum(padding[1]))
        fast = all(
            out_size(n, k, s, d) > 0
            for n, k, s, d in zip(sizes, rhs.shape[:2], strides, dilation, strict=True)
        )
    if not fast:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, **kwargs,
        )  # fmt: skip
    pads = [tuple(p) for p in padding]
    if any(p != (0, 0) for p in pads):
        lhs = jax.lax.pad(
            lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
        )
    return conv_valid(lhs, rhs, strides, dilation, _hashable(precision))


def _hashable(precision):
    return tuple(precision) if isinstance(precision, list) else precision


def gemm_wins(lhs_shape, rhs_shape, strides: Pair) -> bool:
    """The measured policy: the convolutions (NHWC input, HWIO kernel) where im2col + GEMM beat
    XLA's (Eigen's, :func:`jaxnet.process.prepare`) on the CPU: a 1x1 kernel, a stride above 1,
    or at most :data:`FEW_CHANNELS` input channels (a stem). Stride-1 layers with more channels
    stay on XLA's convolution.

    Forward + both gradients, ms, best of 7, two threads, from the bench's floor tables of its
    run at 2b3d9d1 (``jaxnet bench``, a shared 2-core EPYC, glibc's allocator at its defaults).
    With freed memory kept (jaxnet's default since, :func:`jaxnet.process.keep_freed_memory`)
    the stride-1 layers come out even: at 7262e00 (docs/bench-cpu.md, docs/bench-resnet-cpu.md)
    the CNN's conv2 took 47.9 ms on XLA against 45.9 on the GEMMs, 32->32 15.8 against 15.8,
    while 16->16 stayed XLA's (24.9 against 30.9) and the stem and strided layers the GEMMs'::

        layer (batch 128: the ResNet's)    XLA (Eigen)   GEMMs
        1->16 3x3, 28x28 (stem)               7.1         2.0
        16->32 1x1 stride 2                   8.5         2.9
        32->64 1x1 stride 2                   5.8         2.2
        16->32 3x3 stride 2                  22.1         9.7
        32->64 3x3 stride 2                  15.2         8.7
        16->16 3x3, 28x28                    25.7        52.4
        32->32 3x3, 14x14                    17.2        17.7
        64->64 3x3, 7x7                      16.5        15.0
        batch 64 (the CNN's)
        1->32 3x3 valid, 28x28 (stem)         4.3         4.1
        32->64 3x3 valid, 26x26              45.5        67.3

    A 1x1 kernel is one strided slice and one GEMM, a stem's patches (``kh*kw*C_in`` columns)
    are small, a strided layer's patches are ``sh*sw`` times smaller than at stride 1: up to
    3.5x faster. At stride 1 XLA's convolution wins or ties: the GEMM path copies the input ``kh*kw``
    times into its patches, and the input gradient's GEMM has only ``C_out`` as its inner
    dimension. (On YNNPACK, jaxlib 0.10's default, the measurements differed: XLA's stride-1
    convolution lost 2.4x past ~37,000 output values per image; docs/xla-cpu-conv.md.)
    """
    kh, kw, c_in, _ = rhs_shape
    return (kh, kw) == (1, 1) or tuple(strides) != (1, 1) or c_in <= FEW_CHANNELS


FEW_CHANNELS = 4  # a stem: grey, RGB or RGBA images


def conv_measured(lhs, rhs, window_strides, padding, *args, **kwargs):
    """:func:`conv_general_dilated` where :func:`gemm_wins` on the padded input's shape, else
    ``jax.lax.conv_general_dilated``; decided when traced, from static shapes."""
    convolve = jax.lax.conv_general_dilated
    if lhs.ndim == 4 and rhs.ndim == 4:
        strides = tuple(int(s) for s in window_strides)
        pads = padding
        if isinstance(padding, str):
            pads = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        padded = (lhs.shape[0], *(n + lo + hi for n, (lo, hi) in zip(lhs.shape[1:3], pads, strict=True)))
        if gemm_wins(padded, rhs.shape, strides):
            convolve = conv_general_dilated
    return convolve(lhs, rhs, window_strides, padding, *args, **kwargs)


def enable(model: nnx.Module, where: str = "all") -> nnx.Module:
    """``nnx.Conv`` layers of ``model`` compute with :func:`conv_general_dilated`; returns ``model``.

    ``where``: ``"all"`` (every layer), or ``"measured"`` (each call where :func:`gemm_wins`
    for its shapes, the rest on XLA's convolution: :func:`conv_measured`). In either mode a
    module whose ``max_pool`` attribute is ``nnx.max_pool`` (the built-in CNN's) gets
    :func:`jaxnet.fastpool.max_pool`: the same values and torch's gradient rule (nnx's on
    ties; torch's, not nnx's, beside a NaN), no ``select_and_scatter``.
    """
    convs = {"all": conv_general_dilated, "measured": conv_measured}
    if where not in convs:
        raise ValueError(f"where must be one of {sorted(convs)}, not {where!r}")
    walk = nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()
    for _, module in walk:
        if isinstance(module, nnx.Conv):
            module.conv_general_dilated = convs[where]
        if getattr(module, "max_pool", None) is nnx.max_pool:
            module.max_pool = fastpool.max_pool
    return model
