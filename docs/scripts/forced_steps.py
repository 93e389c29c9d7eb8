"""The teacher-forced engine's own cost: 50 steps of the tutorial MLP, SGD and Adam (docs/parity-engine-ab-cpu.md).

    python docs/scripts/forced_steps.py                       # this checkout
    PYTHONPATH=OTHER_CHECKOUT python docs/scripts/forced_steps.py   # another commit's engine

``parity.training`` on the first 3200 training images (50 batches of 64, e09's call), at the
tutorial's widths, in one process with one thread for torch, MKL and XLA (the suite's and a
parity worker's setting), after a two-step call that compiles the programs: seconds of the
timed call, per recipe, with the jaxnet that ``import jaxnet`` finds (``PYTHONPATH`` first).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

from jaxnet import process  # after the threads' settings

process.prepare(shared=True)

import numpy as np  # noqa: E402

import jaxnet  # noqa: E402
from jaxnet import data, parity  # noqa: E402
from jaxnet.checkpoint import init_state_dict  # noqa: E402
from jaxnet.config import ModelConfig, OptimConfig  # noqa: E402


def main() -> None:
    fmnist, n = data.load(), 3200
    images, labels = fmnist.train[:n].float_images(), fmnist.train.labels[:n]
    state = init_state_dict(ModelConfig(), seed=0)
    batches = [np.arange(s, min(s + 64, n)) for s in range(0, n, 64)]
    times = []
    for opt in (OptimConfig(lr=0.1), OptimConfig(name="adam", lr=1e-3)):
        parity.training(images[:640], labels[:640], batches[:2], opt, state=state)  # compiles
        start = time.perf_counter()
        report = parity.training(images, labels, batches, opt, state=state)
        times.append(time.perf_counter() - start)
        assert report.passed
    where = os.path.dirname(os.path.dirname(jaxnet.__file__))
    print(f"| {where} | {times[0]:.2f} | {times[1]:.2f} |")


if __name__ == "__main__":
    main()
