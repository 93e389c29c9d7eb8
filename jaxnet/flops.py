"""The matrix products of a training step, as plain tuples (no framework): what each family's
config lists in ``products(batch)`` and :mod:`jaxnet.bench.limits` times and counts.

A product is one of

- ``("gemm", m, k, n)``: ``[m, k] @ [k, n]``, ``2 m k n`` flops;
- ``("bmm", count, m, k, n)``: ``count`` independent ``[m, k] @ [k, n]`` (attention's per-head
  products), ``2 count m k n`` flops;
- ``("conv", batch, c_in, h, w, c_out, k, stride, pad, input_grad)``: a ``k x k`` convolution
  of ``[batch, c_in, h, w]`` with ``pad`` zeros on every side, forward and weight gradient,
  and the input gradient when ``input_grad``; its flops are those of its im2col GEMMs
  (:func:`conv_gemms`).

A step's products are the forward's and the backward's (two per forward product: the
gradient of each operand that needs one). Elementwise work (activations, normalisation,
softmax, pooling, the optimizer) is no product: a step's products are a lower bound of its work.

Example:
    >>> linear(64, 784, 512, input_grad=False)
    [('gemm', 64, 784, 512), ('gemm', 784, 64, 512)]
    >>> flop(("conv", 64, 1, 28, 28, 32, 3, 1, 0, False))
    49840128.0
"""

from __future__ import annotations


def linear(rows: int, fan_in: int, fan_out: int, input_grad: bool = True) -> list[tuple]:
    """A Linear layer on ``rows`` inputs: forward, weight gradient, input gradient."""
    out = [("gemm", rows, fan_in, fan_out), ("gemm", fan_in, rows, fan_out)]
    return out + ([("gemm", rows, fan_out, fan_in)] if input_grad else [])


def conv(batch: int, c_in: int, size: int, c_out: int, k: int, stride: int = 1, pad: int = 0,
         input_grad: bool = True) -> list[tuple]:  # fmt: skip
    """A ``k x k`` convolution on square ``size x size`` maps (forward and gradients: one product)."""
    return [("conv", batch, c_in, size, size, c_out, k, stride, pad, input_grad)]


def attention(batch: int, heads: int, t: int, d: int) -> list[tuple]:
    """Self-attention's two per-head products over a full ``t x t`` score matrix (the causal
    mask zeroes half of it, both frameworks' CPU kernels still compute it), and their gradients:
    scores ``q k^T``, then ``dq = dS k``, ``dk = dS^T q``; values ``P v``, then ``dP = dO v^T``,
    ``dv = P^T dO``."""
    n = batch * heads
    scores = [("bmm", n, t, d, t), ("bmm", n, t, t, d), ("bmm", n, t, t, d)]
    values = [("bmm", n, t, t, d), ("bmm", n, t, d, t), ("bmm", n, t, t, d)]
    return scores + values


def out_size(spec: tuple) -> tuple[int, int]:
    """A convolution's output height and width."""
    _, _, _, h, w, _, k, stride, pad, _ = spec
    return (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1


def conv_gemms(spec: tuple) -> list[tuple[int, int, int]]:
    """The GEMMs of a convolution's forward, weight gradient and (if asked) input gradient,
    lowered by im2col: ``[B*OH*OW, K*K*C_in] @ [K*K*C_in, C_out]`` and its transposes."""
    _, b, c_in, _, _, c_out, k, _, _, input_grad = spec
    oh, ow = out_size(spec)
    rows, depth = b * oh * ow, k * k * c_in
    gemms = [(rows, depth, c_out), (depth, rows, c_out)]
    return gemms + ([(rows, c_out, depth)] if input_grad else [])


def flop(spec: tuple) -> float:
    """Floating-point operations of one product, 2 per multiply-add."""
    if spec[0] == "gemm":
        _, m, k, n = spec
        return 2.0 * m * k * n
    if spec[0] == "bmm":
        _, count, m, k, n = spec
        return 2.0 * count * m * k * n
    return sum(2.0 * m * k * n for m, k, n in conv_gemms(spec))


def step_flop(products: list[tuple]) -> int:
    """A step's flops, as an exact integer (the sum of :func:`flop` over its products)."""
    return sum(int(flop(p)) for p in products)
