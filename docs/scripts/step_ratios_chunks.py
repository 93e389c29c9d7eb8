"""How many elements :func:`jaxnet.parity.verdict.step_ratios` takes per pass (docs/step-ratios-chunks-cpu.md).

    python docs/scripts/step_ratios_chunks.py   # one table; the doc keeps three runs

One teacher-forced step's floors and worst ratios for a tensor the size of the tutorial MLP's
first kernel (784x512) in both dtypes, as the parity engine computes them, at several chunk
sizes (the last holds the whole array: one chunk, the passes of the whole-array way). Medians of 50 calls, in one process with
jaxnet's settings (``process.prepare``: freed memory is kept, as in ``jaxnet parity``).
"""

from __future__ import annotations

import statistics

import numpy as np

from jaxnet import process
from jaxnet.bench.limits import call_times
from jaxnet.parity import verdict

SIZES = [1 << 11, 1 << 13, 1 << 15, 1 << 16, 1 << 17, 1 << 19]


def main() -> None:
    process.prepare()
    rng = np.random.default_rng(0)
    before = rng.standard_normal(784 * 512).astype(np.float32).reshape(512, 784)
    after64 = before + 1e-3 * rng.standard_normal(before.shape)
    after32 = after64.astype(np.float32)
    moved = [after64 * (1 + 1e-9), after64 * (1 - 1e-9)]
    actual32 = after32 + np.float32(1e-7)
    actual64 = after64 + 1e-16
    sides = [(actual32, after32, "float32", 1.0, 0.0), (actual64, after64, "float64", 2.0**-29, 0.0)]
    print(f"| elements per pass (of {before.size}) | median ms, both dtypes |")
    print("|---|---|")
    for size in SIZES:
        verdict.CHUNK = size

        def step() -> None:
            verdict.step_ratios(before, after32, after64, moved, sides)

        ms = 1e3 * statistics.median(call_times(step, 50, warmups=3))
        print(f"| {size}{' (one chunk: the whole array)' if size >= before.size else ''} | {ms:.1f} |")


if __name__ == "__main__":
    main()
