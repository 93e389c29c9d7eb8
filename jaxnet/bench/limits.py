"""This machine's limits, the same for every path: the cores' float32 FMA peak and the best
kernel of any framework for each matrix product and convolution a training step performs.

- ``fma_peak()``: derived from what the CPU reports, ``cores x GHz x FMA pipes x float32 lanes
  x 2`` flops, with the derivation as text (the clock is the one /proc/cpuinfo shows now; a
  core in turbo runs faster, so a kernel can exceed it);
- ``step_kernels(config)``: every GEMM and convolution of one training step (batch 64), each
  with its candidate kernels (the framework's convolution, or the same products as plain
  GEMMs: the im2col lowering without its copy);
- ``time_kernels(framework)``: each candidate timed in one framework, best of ``TRIALS``;
- ``floors(times)``: per kernel, the fastest candidate of any framework; a step's floor is
  their sum. Elementwise work (ReLU, pooling, dropout, the optimizer) is not in it, so the
  floor is a lower bound of a step, and a path's "% of floor" its share of that bound.

Example:
    >>> derivation, gflops = fma_peak()                # doctest: +SKIP
    >>> derivation                                     # doctest: +SKIP
    '2 cores x 2.445 GHz x 2 FMA pipes x 8 float32 lanes (avx2) x 2 flops = 156.5 GFLOP/s'
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from jaxnet.config import CNNConfig, ModelConfig

TRIALS = 7
BATCH = 64


@dataclass(frozen=True)
class Kernel:
    """One product of a step: ``("gemm", m, k, n)`` or ``("conv", batch, c_in, h, w, c_out, k,
    input_grad)`` (a valid, stride-1 convolution's forward and backward)."""

    name: str
    spec: tuple

    @property
    def flop(self) -> float:
        if self.spec[0] == "gemm":
            _, m, k, n = self.spec
            return 2.0 * m * k * n
        return sum(2.0 * m * k * n for m, k, n in conv_gemms(self.spec))


def conv_gemms(spec: tuple) -> list[tuple[int, int, int]]:
    """The GEMMs of a convolution's forward, weight gradient and (if asked) input gradient,
    lowered by im2col: ``[B*OH*OW, K*K*C_in] @ [K*K*C_in, C_out]`` and its transposes."""
    _, b, c_in, h, w, c_out, k, input_grad = spec
    rows, depth = b * (h - k + 1) * (w - k + 1), k * k * c_in
    gemms = [(rows, depth, c_out), (depth, rows, c_out)]
    return gemms + ([(rows, c_out, depth)] if input_grad else [])


def step_kernels(config: ModelConfig | CNNConfig, batch: int = BATCH) -> list[Kernel]:
    """Every GEMM and convolution of one training step, in order (repeats included)."""
    linears = config.linear_shapes if isinstance(config, ModelConfig) else _cnn_linears(config)
    kernels = []
    if isinstance(config, CNNConfig):  # 3x3 valid convs on 28x28: 28 -> 26 -> 24
        (c1, c2), k = config.channels, 3
        kernels.append(Kernel(f"conv {1}->{c1} 28x28", ("conv", batch, 1, 28, 28, c1, k, False)))
        kernels.append(Kernel(f"conv {c1}->{c2} 26x26", ("conv", batch, c1, 26, 26, c2, k, True)))
    for layer, (fan_in, fan_out) in enumerate(linears):
        shapes = [(batch, fan_in, fan_out), (fan_in, batch, fan_out)]  # forward, weight gradient
        if layer or isinstance(config, CNNConfig):  # input gradient (not of the first MLP layer)
            shapes.append((batch, fan_out, fan_in))
        kernels += [Kernel(f"gemm {m}x{k}x{n}", ("gemm", m, k, n)) for m, k, n in shapes]
    return kernels


def _cnn_linears(config: CNNConfig) -> list[tuple[int, int]]:
    return [(12 * 12 * config.channels[1], config.hidden), (config.hidden, config.num_classes)]


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


def best_time(fn, trials: int = TRIALS) -> float:
    """Seconds of the fastest of ``trials`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_kernels(framework: str, configs: tuple, trials: int = TRIALS) -> dict[str, dict[str, float]]:
    """``{kernel name: {candidate: seconds}}`` for every kernel of the models' steps, in
    ``framework`` (``"torch"`` or ``"jax"``) on its default device; candidates: ``"gemm"`` for
    a GEMM, ``"conv"`` and ``"as gemms"`` for a convolution."""
    timer = _torch_timers() if framework == "torch" else _jax_timers()
    out: dict[str, dict[str, float]] = {}
    for config in configs:
        for kernel in step_kernels(config):
            if kernel.name in out:
                continue
            if kernel.spec[0] == "gemm":
                out[kernel.name] = {"gemm": best_time(timer["gemm"](*kernel.spec[1:]), trials)}
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

    def conv(b, c_in, h, w, c_out, k, input_grad):
        x = torch.rand(b, c_in, h, w, requires_grad=input_grad)
        weight = torch.rand(c_out, c_in, k, k, requires_grad=True)
        bias = torch.rand(c_out, requires_grad=True)
        g = torch.rand(b, c_out, h - k + 1, w - k + 1)

        def run():  # forward, then the gradients autograd computes for a training step
            torch.nn.functional.conv2d(x, weight, bias).backward(g)

        return run

    return {"gemm": gemm, "conv": conv}


def _jax_timers():
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    dot = jax.jit(jnp.dot)

    def gemm(m, k, n):
        a, b = jnp.asarray(rng.random((m, k), np.float32)), jnp.asarray(rng.random((k, n), np.float32))
        return lambda: dot(a, b).block_until_ready()

    def conv(b, c_in, h, w, c_out, k, input_grad):
        x = jnp.asarray(rng.random((b, h, w, c_in), np.float32))  # NHWC, HWIO: as flax's nnx.Conv
        weight = jnp.asarray(rng.random((k, k, c_in, c_out), np.float32))
        g = jnp.asarray(rng.random((b, h - k + 1, w - k + 1, c_out), np.float32))

        def f(x, weight):
            dims = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(x, weight, (1, 1), "VALID", dimension_numbers=dims)

        @jax.jit
        def step(x, weight, g):  # the forward's output is returned, so it is computed
            if input_grad:
                out, back = jax.vjp(f, x, weight)
            else:
                out, back = jax.vjp(lambda w: f(x, w), weight)
            return out, back(g)

        return lambda: jax.block_until_ready(step(x, weight, g))

    return {"gemm": gemm, "conv": conv}


def floors(times: dict[str, dict[str, dict[str, float]]], config) -> dict:
    """The step's floor from every framework's kernel times (``{framework: time_kernels()}``):
    per kernel the fastest candidate of any framework, and the sum over one step."""
    per_kernel = {}
    for kernel in step_kernels(config):
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
    step_s = sum(per_kernel[k.name]["seconds"] for k in step_kernels(config))
    step_flop = sum(k.flop for k in step_kernels(config))
    return {"step_s": step_s, "step_gflop": step_flop / 1e9, "kernels": per_kernel}
