"""A kernel's transpose by numpy and by XLA, and a JAX backend's state reads (docs/parity-layout-ab-cpu.md).

    python docs/scripts/layout_reads.py            # in this checkout
    PYTHONPATH=OTHER_CHECKOUT python docs/scripts/layout_reads.py --reads  # another commit's reads

Medians of 300 calls each, in one process with jaxnet's settings (``process.prepare``): a
784x512 kernel transposed by numpy (``np.ascontiguousarray(a.T)``), by XLA eagerly
(``a.transpose()`` of a JAX array, read out with ``np.asarray``) and by one jitted program,
and a plain copy beside them; then the tutorial MLP's JAX backend (Adam's buffers in its
state) timing ``state_dict`` in both dtypes, with the jaxnet that ``import jaxnet`` finds
(``PYTHONPATH`` first: the installed one is this checkout, editable).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from jaxnet.bench.limits import call_times


def median_ms(f, n: int = 300) -> float:
    return 1e3 * statistics.median(call_times(f, n, warmups=2))


def transposes() -> None:
    import jax

    print(
        "| 784x512 kernel | numpy ascontiguousarray(a.T) | XLA, eager a.transpose() | XLA, one jitted program | a plain copy |"
    )
    print("|---|---|---|---|---|")
    turn = jax.jit(lambda x: x.T)
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            a = np.random.default_rng(0).random((784, 512)).astype(dtype)
            j = jax.device_put(a)
            ways = [
                lambda a=a: np.ascontiguousarray(a.T),
                lambda j=j: np.asarray(j.transpose((1, 0))),
                lambda j=j: np.asarray(turn(j)),
                lambda a=a: a.copy(),
            ]
            cells = [median_ms(way) for way in ways]
        print(f"| {dtype} | " + " | ".join(f"{c:.2f} ms" for c in cells) + " |")


def reads() -> None:
    from jaxnet import checkpoint
    from jaxnet.backends import get_backend
    from jaxnet.config import ALL_RECIPES, ModelConfig

    state = checkpoint.init_state_dict(ModelConfig(), 0)
    import jaxnet

    print(f"jaxnet from {jaxnet.__file__}")
    x, y = np.random.default_rng(0).random((64, 1, 28, 28)), np.arange(64) % 10
    for dtype in ("float32", "float64"):
        b = get_backend(
            "jax", ModelConfig(), dtype=dtype, state={k: v.astype(dtype) for k, v in state.items()}
        )
        b.set_optimizer(ALL_RECIPES["adam-l2"])
        b.set_train_data(x.astype(dtype), y)
        b.train_steps([np.arange(64)])
        print(f"state_dict, {dtype}: {median_ms(b.state_dict):.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", action="store_true", help="only the backend's reads")
    args = parser.parse_args()
    from jaxnet import process

    process.prepare(shared=True)
    if not args.reads:
        transposes()
    reads()
