"""This machine's limits, the same for every path: the cores' float32 FMA peak and the best
kernel of any framework for each matrix product and convolution a training step performs.

- ``fma_peak()``: derived from what the CPU reports, ``cores x GHz x FMA pipes x float32 lanes
  x 2`` flops, with the derivation as text (the clock is the one /proc/cpuinfo shows now; a
  core in turbo runs faster, so a kernel can exceed it);
- ``step_kernels(config, batch)``: every GEMM, batched GEMM (attention's per-head products)
  and convolution of one training step, as the family declares them (``config.products``,
  :mod:`jaxnet.flops`), each with its candidate kernels (the framework's convolution, or the
  same products as plain GEMMs: the im2col lowering without its copy);
- ``time_kernels(framework)``: each candidate timed in one framework, best of ``TRIALS``;
- ``floors(times)``: per kernel, the fastest candidate of any framework; a step's floor is
  their sum. Elementwise work (ReLU, BatchNorm, LayerNorm, softmax, pooling, dropout, the
  optimizer) is not in it, so the floor is a lower bound of a step, and a path's "% of
  floor" its share of that bound.

Example:
    >>> derivation, gflops = fma_peak()                # doctest: +SKIP
    >>> derivation                                     # doctest: +SKIP
    '2 cores x 2.445 GHz x 2 FMA pipes x 8 float32 lanes (avx2) x 2 flops = 156.5 GFLOP/s'
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from jaxnet import flops

TRIALS = 7
BATCH = 64


@dataclass(frozen=True)
class Kernel:
    """One product of a step (:mod:`jaxnet.flops`): ``("gemm", m, k, n)``, ``("bmm", count, m,
    k, n)`` or ``("conv", batch, c_in, h, w, c_out, k, stride, pad, input_grad)`` (a
    convolution's forward and backward)."""

    name: str
    spec: tuple

    @property
    def flop(self) -> float:
        return flops.flop(self.spec)


conv_gemms = flops.conv_gemms


def kernel_name(spec: tuple) -> str:
    """``gemm 64x784x512``, ``bmm 256x128x32x128``, ``conv 16->32 28x28 s2 p1`` (the kernel
    size, stride and padding where they are not 3, 1 and 0)."""
    if spec[0] != "conv":
        return f"{spec[0]} {'x'.join(map(str, spec[1:]))}"
    _, _, c_in, h, w, c_out, k, stride, pad, _ = spec
    extra = "".join(
        f" {tag}{v}" for tag, v, plain in (("k", k, 3), ("s", stride, 1), ("p", pad, 0)) if v != plain
    )
    return f"conv {c_in}->{c_out} {h}x{w}{extra}"


def step_kernels(config, batch: int = BATCH) -> list[Kernel]:
    """Every product of one training step on ``batch`` examples, in order (repeats included):
    the family's own list (``config.products``, declared beside the family)."""
    return [Kernel(kernel_name(spec), spec) for spec in config.products(batch)]


def fma_peak() -> tuple[str, float]:
    """float32 FMA peak of the cores this process may use, derived from /proc/cpuinfo.

    Assumes two FMA pipes per core (every x86-64 core with FMA3 since Haswell and Zen 2) and
    the vector width the flags name (avx512f: 16 float32 lanes, avx2/fma: 8, else 4).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    mhz, flags, model = [], set(), "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "cpu MHz":
                    mhz.append(float(value))
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "model name":
                    model = value.strip()
    except OSError:
        return "no /proc/cpuinfo: the FMA peak is not known here", float("nan")
    if not mhz:
        return f"{model}: /proc/cpuinfo names no clock", float("nan")
    lanes, isa = (16, "avx512f") if "avx512f" in flags else ((8, "avx2") if "fma" in flags else (4, "sse"))
    ghz = max(mhz) / 1000
    gflops = cores * ghz * 2 * lanes * 2
    text = (f"{model}: {cores} cores x {ghz:.3f} GHz x 2 FMA pipes x {lanes} float32 lanes ({isa}) x 2 flops"
            f" = {gflops:.1f} GFLOP/s")  # fmt: skip
    return text, gflops


def call_times(fn, calls: int, warmups: int = 1) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn``, after ``warmups`` untimed ones."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn, trials: int = TRIALS) -> float:
    """Seconds of the fastest of ``trials`` calls, after one warm-up call."""
    return min(call_times(fn, trials))


def time_kernels(framework: str, models: tuple, trials: int = TRIALS) -> dict[str, dict[str, float]]:
    """``{kernel name: {candidate: seconds}}`` for every kernel of the models' steps
    (``(config, batch)`` pairs), in ``framework`` (``"torch"`` or ``"jax"``) on its default
    device; candidates: ``"gemm"`` for a GEMM or a batch of them, ``"conv"`` and ``"as gemms"``
    for a convolution."""
    timer = _torch_timers() if framework == "torch" else _jax_timers()
    out: dict[str, dict[str, float]] = {}
    for config, batch in models:
        for kernel in step_kernels(config, batch):
            if kernel.name in out:
                continue
            if kernel.spec[0] != "conv":
                out[kernel.name] = {"gemm": best_time(timer[kernel.spec[0]](*kernel.spec[1:]), trials)}
            else:
                gemms = [timer["gemm"](*s) for s in conv_gemms(kernel.spec)]
                out[kernel.name] = {
                    "conv": best_time(timer["conv"](*kernel.spec[1:]), trials),
                    "as gemms": best_time(lambda gemms=gemms: [g() for g in gemms], trials),
                }
    return out


def _torch_timers():
    import torch

    def gemm(m, k, n):
        a, b = torch.rand(m, k), torch.rand(k, n)
        return lambda: torch.mm(a, b)

    def bmm(count, m, k, n):
        a, b = torch.rand(count, m, k), torch.rand(count, k, n)
        return lambda: torch.bmm(a, b)

    def conv(b, c_in, h, w, c_out, k, stride, pad, input_grad):
        x = torch.rand(b, c_in, h, w, requires_grad=input_grad)
        weight = torch.rand(c_out, c_in, k, k, requires_grad=True)
        oh, ow = flops.out_size(("conv", b, c_in, h, w, c_out, k, stride, pad, input_grad))
        g = torch.rand(b, c_out, oh, ow)

        def run():  # forward, then the gradients autograd computes for a training step
            torch.nn.functional.conv2d(x, weight, None, stride, pad).backward(g)

        return run

    return {"gemm": gemm, "bmm": bmm, "conv": conv}


def _jax_timers():
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    dot, matmul = jax.jit(jnp.dot), jax.jit(jnp.matmul)

    def gemm(m, k, n):
        a, b = jnp.asarray(rng.random((m, k), np.float32)), jnp.asarray(rng.random((k, n), np.float32))
        return lambda: dot(a, b).block_until_ready()

    def bmm(count, m, k, n):
        a = jnp.asarray(rng.random((count, m, k), np.float32))
        b = jnp.asarray(rng.random((count, k, n), np.float32))
        return lambda: matmul(a, b).block_until_ready()

    def conv(b, c_in, h, w, c_out, k, stride, pad, input_grad):
        x = jnp.asarray(rng.random((b, h, w, c_in), np.float32))  # NHWC, HWIO: as flax's nnx.Conv
        weight = jnp.asarray(rng.random((k, k, c_in, c_out), np.float32))
        oh, ow = flops.out_size(("conv", b, c_in, h, w, c_out, k, stride, pad, input_grad))
        g = jnp.asarray(rng.random((b, oh, ow, c_out), np.float32))

        def f(x, weight):
            dims = ("NHWC", "HWIO", "NHWC")
            padding = ((pad, pad), (pad, pad))
            return jax.lax.conv_general_dilated(x, weight, (stride, stride), padding, dimension_numbers=dims)

        @jax.jit
        def step(x, weight, g):  # the forward's output is returned, so it is computed
            if input_grad:
                out, back = jax.vjp(f, x, weight)
            else:
                out, back = jax.vjp(lambda w: f(x, w), weight)
            return out, back(g)

        return lambda: jax.block_until_ready(step(x, weight, g))

    return {"gemm": gemm, "bmm": bmm, "conv": conv}


def floors(times: dict[str, dict[str, dict[str, float]]], config, batch: int = BATCH) -> dict:
    """The step's floor from every framework's kernel times (``{framework: time_kernels()}``):
    per kernel the fastest candidate of any framework, and the sum over one step of ``batch``."""
    per_kernel = {}
    kernels = step_kernels(config, batch)
    for kernel in kernels:
        options = {
            f"{fw} {c}": s for fw, t in times.items() if kernel.name in t for c, s in t[kernel.name].items()
        }
        best = min(options, key=options.get)
        per_kernel[kernel.name] = {
            "best": best,
            "seconds": options[best],
            "flop": kernel.flop,
            "options": options,
        }
    step_s = sum(per_kernel[k.name]["seconds"] for k in kernels)
    step_flop = sum(k.flop for k in kernels)
    return {"step_s": step_s, "step_gflop": step_flop / 1e9, "kernels": per_kernel, "batch": batch}
